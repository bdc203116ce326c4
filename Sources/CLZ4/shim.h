// LZ4 block compression: the image builder writes LZ4 (legacy framing) initramfs archives, and the
// runner unpacks the LZ4 payload of a bzImage into the vmlinux that QEMU boots directly (PVH).
#include <lz4.h>
#include <lz4hc.h>
