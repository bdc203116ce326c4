/* Virtio over legacy PCI, as a guest driver sees it. Finds the host bridge, the virtio console and the
   virtio block device by PCI configuration mechanism #1; sizes a BAR; brings up the console's
   multiport control protocol until its port is named "org.slurm-vm.agent" and the host end is open;
   answers the host's HELLO with a READY in the agent's framing and echoes a 20000-byte STDIN frame as
   STDOUT, counting INTA# interrupts that arrive through the IOAPIC (level-triggered, acknowledged by
   reading ISR); reads, writes and identifies the disk, and sees a read past its end fail. Exits 0. */
#include "guest.h"

static u32 cfg_read(int slot, int reg)
{
    outl(0xcf8, 0x80000000u | (u32)slot << 11 | (u32)reg);
    return inl(0xcfc);
}
static void cfg_write(int slot, int reg, u32 v)
{
    outl(0xcf8, 0x80000000u | (u32)slot << 11 | (u32)reg);
    outl(0xcfc, v);
}
static void barrier(void) { __asm__ volatile("" ::: "memory"); }
static void *memset_(void *d, int c, u64 n)
{
    u8 *p = d;
    while (n--) *p++ = (u8)c;
    return d;
}
static void memcpy_(void *d, const void *s, u64 n)
{
    u8 *a = d;
    const u8 *b = s;
    while (n--) *a++ = *b++;
}

/* ---- legacy virtqueues (one 64 KiB region each, from 40 MiB) ---- */
struct desc {
    u64 addr;
    u32 len;
    u16 flags, next;
};
struct vq {
    u16 io;
    int index;
    u16 size;
    struct desc *d;
    volatile u16 *avail;
    volatile u16 *used;
    u16 avail_idx, last_used;
};
static u64 next_ring = 40ul << 20;

static void vq_init(struct vq *q, u16 io, int index)
{
    q->io = io;
    q->index = index;
    outw(io + 14, (u16)index);
    q->size = inw(io + 12);
    u64 base = next_ring;
    next_ring += 0x10000;
    memset_((void *)base, 0, 0x10000);
    q->d = (struct desc *)base;
    q->avail = (volatile u16 *)(base + 16ul * q->size);
    q->used = (volatile u16 *)((base + 16ul * q->size + 6 + 2ul * q->size + 4095) & ~4095ul);
    q->avail_idx = q->last_used = 0;
    outl(io + 8, (u32)(base >> 12));
}
/* Offers descriptor `head` (already filled in) to the device. */
static void vq_offer(struct vq *q, u16 head)
{
    q->avail[2 + q->avail_idx % q->size] = head;
    barrier();
    q->avail[1] = ++q->avail_idx;
    barrier();
    outw(q->io + 16, (u16)q->index);
}
/* The next used entry's head (and its length), or -1 when none. */
static int vq_used(struct vq *q, u32 *len)
{
    barrier();
    if (q->used[1] == q->last_used) return -1;
    volatile u32 *e = (volatile u32 *)(q->used + 2) + 2 * (q->last_used % q->size);
    q->last_used++;
    if (len) *len = e[1];
    return (int)e[0];
}
static int vq_wait(struct vq *q, u32 *len)
{
    for (long spin = 0; spin < 3000000; spin++) {
        int h = vq_used(q, len);
        if (h >= 0) return h;
        __asm__ volatile("pause");
    }
    return -1;
}
static void set_desc(struct vq *q, u16 i, void *buf, u32 len, u16 flags, u16 next)
{
    q->d[i].addr = (u64)buf;
    q->d[i].len = len;
    q->d[i].flags = flags;
    q->d[i].next = next;
}

/* ---- INTA# through the IOAPIC ---- */
volatile u32 irqs;
volatile u16 isr_port;
__asm__(".globl isr\n"
        "isr:\n"
        "  push %rax\n  push %rcx\n  push %rdx\n"
        "  lock incl irqs(%rip)\n"
        "  movzwl isr_port(%rip), %edx\n  in %dx, %al\n" /* reading ISR lowers INTA# */
        "  mov $0xfee000b0, %ecx\n  movl $0, (%rcx)\n"   /* local APIC EOI */
        "  pop %rdx\n  pop %rcx\n  pop %rax\n  iretq\n");
extern char isr[];
static u64 idt[2 * 256] __attribute__((aligned(16)));
static void ioapic_write(u32 reg, u32 v)
{
    *(volatile u32 *)0xfec00000ul = reg;
    *(volatile u32 *)0xfec00010ul = v;
}

/* ---- the console ---- */
static struct vq crx, ctx, prx, ptx;
static u8 ctrl_in[4][64], ctrl_out[16], port_in[8][4096];
static u8 frame[24000];
static u32 frame_len;
static int host_open, port_named;

static void control_send(u32 id, u16 event, u16 value)
{
    memcpy_(ctrl_out, &id, 4);
    memcpy_(ctrl_out + 4, &event, 2);
    memcpy_(ctrl_out + 6, &value, 2);
    set_desc(&ctx, 0, ctrl_out, 8, 0, 0);
    vq_offer(&ctx, 0);
    check(vq_wait(&ctx, 0) == 0, "the device took a control message");
}
/* Handles control messages until `until` says stop; 0 on timeout. */
static int control_until(int *flag)
{
    for (long spin = 0; spin < 3000000 && !*flag; spin++) {
        u32 len;
        int h = vq_used(&crx, &len);
        if (h < 0) {
            __asm__ volatile("pause");
            continue;
        }
        u8 *m = ctrl_in[h];
        u32 id = *(u32 *)m;
        u16 ev = *(u16 *)(m + 4), val = *(u16 *)(m + 6);
        if (ev == 1 && id == 1) control_send(1, 3, 1); /* PORT_ADD → PORT_READY */
        if (ev == 7 && id == 1) {
            m[len < 63 ? len : 63] = 0;
            port_named = streq((char *)m + 8, "org.slurm-vm.agent");
            control_send(1, 6, 1);
        } /* PORT_NAME → we open it */
        if (ev == 6 && id == 1) host_open = val;
        set_desc(&crx, (u16)h, ctrl_in[h], 64, 2, 0);
        vq_offer(&crx, (u16)h);
    }
    return *flag;
}
/* Reads port bytes until a whole agent frame is in `frame`; returns its type or -1. */
static int read_frame(void)
{
    frame_len = 0;
    for (long spin = 0; spin < 6000000; spin++) {
        if (frame_len >= 12) {
            u32 need = 12 + *(u32 *)(frame + 8);
            if (need > sizeof frame) return -1;
            if (frame_len >= need) return frame[2];
        }
        u32 len;
        int h = vq_used(&prx, &len);
        if (h < 0) {
            __asm__ volatile("pause");
            continue;
        }
        if (frame_len + len <= sizeof frame) {
            memcpy_(frame + frame_len, port_in[h], len);
            frame_len += len;
        }
        set_desc(&prx, (u16)h, port_in[h], 4096, 2, 0);
        vq_offer(&prx, (u16)h);
    }
    return -1;
}
static u8 out[24000];
static void send_bytes(u8 *p, u32 n)
{
    /* In pieces of at most 4096 bytes, chained in descriptors 0..k-1. */
    u16 k = 0;
    for (u32 off = 0; off < n; off += 4096, k++)
        set_desc(&ptx, k, p + off, n - off < 4096 ? n - off : 4096, 0, (u16)(k + 1));
    ptx.d[k - 1].flags = 0;
    for (u16 i = 0; i + 1 < k; i++) ptx.d[i].flags = 1;
    vq_offer(&ptx, 0);
    check(vq_wait(&ptx, 0) == 0, "the device took the port's output");
}
static u32 put_hdr(u8 type, u32 session, u32 len)
{
    out[0] = 0x53;
    out[1] = 0x56;
    out[2] = type;
    out[3] = 0;
    memcpy_(out + 4, &session, 4);
    memcpy_(out + 8, &len, 4);
    return 12;
}
static u32 put_str(u32 at, const char *s)
{
    u32 n = 0;
    while (s[n]) n++;
    memcpy_(out + at, &n, 4);
    memcpy_(out + at + 4, s, n);
    return at + 4 + n;
}

static void console(int slot)
{
    u16 io = (u16)(cfg_read(slot, 0x10) & ~3u);
    u8 line = (u8)cfg_read(slot, 0x3c);
    isr_port = io + 19;
    outb(io + 18, 0);
    outb(io + 18, 1);
    outb(io + 18, 3);
    check(inl(io) & 2, "the console offers multiport");
    outl(io + 4, 2);
    check(inl(io + 20 + 4) == 2, "max_nr_ports is 2");
    struct vq skip0, skip1;
    vq_init(&skip0, io, 0);
    vq_init(&skip1, io, 1);
    vq_init(&crx, io, 2);
    vq_init(&ctx, io, 3);
    vq_init(&prx, io, 4);
    vq_init(&ptx, io, 5);
    check(crx.size >= 4 && prx.size >= 8, "queue sizes");
    outb(io + 18, 7); /* DRIVER_OK */
    /* Interrupts: the line's IOAPIC pin, level-triggered, to vector 0x30. */
    ioapic_write(0x10 + 2 * line, 0x30 | (1u << 15));
    ioapic_write(0x11 + 2 * line, 0);
    __asm__ volatile("sti");
    for (u16 i = 0; i < 4; i++) {
        set_desc(&crx, i, ctrl_in[i], 64, 2, 0);
        vq_offer(&crx, i);
    }
    for (u16 i = 0; i < 8; i++) {
        set_desc(&prx, i, port_in[i], 4096, 2, 0);
        vq_offer(&prx, i);
    }
    control_send(0, 0, 1); /* DEVICE_READY */
    check(control_until(&port_named), "the port is named org.slurm-vm.agent");
    check(control_until(&host_open), "the host end opened");
    int t = read_frame();
    check(t == 0x01 && *(u32 *)(frame + 8) == 8, "a HELLO frame arrived");
    u64 nonce = *(u64 *)(frame + 12);
    u32 n = 12;
    memcpy_(out + n, &nonce, 8);
    n += 8;
    u64 up = 1;
    memcpy_(out + n, &up, 8);
    n += 8;
    u32 cpus = 1;
    memcpy_(out + n, &cpus, 4);
    n += 4;
    u64 mem = 65536;
    memcpy_(out + n, &mem, 8);
    n += 8;
    n = put_str(n, "conformance");
    n = put_str(n, "virtio");
    n = put_str(n, "guest");
    put_hdr(0x81, 0, n - 12);
    send_bytes(out, n);
    t = read_frame();
    u32 len = *(u32 *)(frame + 8);
    check(t == 0x03 && len == 20000, "a 20000-byte STDIN frame arrived");
    int pattern = 1;
    for (u32 i = 0; i < len; i++)
        if (frame[12 + i] != (u8)(i * 7 + 3)) {
            pattern = 0;
            break;
        }
    check(pattern, "its bytes arrived intact and in order");
    memcpy_(out, frame, 12 + len);
    out[2] = 0x83; /* echoed as STDOUT, same session */
    send_bytes(out, 12 + len);
    __asm__ volatile("cli");
    puts_("virtio: console irqs ");
    putdec(irqs);
    putc_('\n');
    check(irqs >= 3, "INTA# interrupts reached the guest");
}

/* ---- the disk ---- */
static struct vq bq;
static struct {
    u32 type, reserved;
    u64 sector;
} req;
static u8 data[512], status;

static int blk(u32 type, u64 sector, u32 len, int device_writes)
{
    req.type = type;
    req.reserved = 0;
    req.sector = sector;
    status = 0xff;
    set_desc(&bq, 0, &req, 16, 1, len ? 1 : 2); /* no data: header, then status */
    set_desc(&bq, 1, data, len, (u16)(1 | (device_writes ? 2 : 0)), 2);
    set_desc(&bq, 2, &status, 1, 2, 0);
    vq_offer(&bq, 0);
    u32 used;
    check(vq_wait(&bq, &used) == 0, "the disk answered");
    return status;
}

static void disk(int slot)
{
    u16 io = (u16)(cfg_read(slot, 0x10) & ~3u);
    outb(io + 18, 0);
    outb(io + 18, 1);
    outb(io + 18, 3);
    u32 f = inl(io);
    check(f & (1u << 9), "a writable disk offers FLUSH");
    check(!(f & (1u << 5)), "and is not read-only");
    outl(io + 4, f & ((1u << 9) | (1u << 6)));
    vq_init(&bq, io, 0);
    outb(io + 18, 7);
    u64 cap = inl(io + 20) | (u64)inl(io + 24) << 32;
    check(cap == 64, "the disk has 64 sectors");
    check(inl(io + 20 + 20) == 512, "blk_size is 512");
    check(blk(0, 5, 512, 1) == 0, "sector 5 reads");
    int ok = 1;
    for (int i = 0; i < 512; i++)
        if (data[i] != (u8)(5 + i)) ok = 0;
    check(ok, "sector 5 holds what the host wrote");
    for (int i = 0; i < 512; i++) data[i] = (u8)(0xa5 ^ i);
    check(blk(1, 9, 512, 0) == 0, "sector 9 writes");
    check(blk(4, 0, 0, 0) == 0, "a flush succeeds");
    check(blk(0, 64, 512, 1) == 1, "a read past the end fails with IOERR");
    check(blk(0x77, 0, 512, 1) == 2, "an unknown request is UNSUPP");
    memset_(data, 0, 32);
    check(blk(8, 0, 20, 1) == 0 && streq((char *)data, "slurm-vm-root"), "GET_ID gives the serial");
}

__attribute__((section(".text.start"), noreturn)) void _start(void)
{
    u64 a = (u64)isr;
    idt[2 * 0x30] = (a & 0xffff) | (0x10ul << 16) | (0x8eul << 40) | ((a >> 16 & 0xffff) << 48);
    idt[2 * 0x30 + 1] = a >> 32;
    struct __attribute__((packed)) {
        u16 limit;
        u64 base;
    } d = {sizeof idt - 1, (u64)idt};
    __asm__ volatile("lidt %0" ::"m"(d));
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    *(volatile u32 *)0xfee000f0ul = 0x1ff;

    int bridge = -1, con = -1, blkslot = -1;
    for (int s = 0; s < 32; s++) {
        u32 id = cfg_read(s, 0);
        if ((id & 0xffff) == 0xffff) continue;
        u32 cls = cfg_read(s, 8) >> 8, sub = cfg_read(s, 0x2c) >> 16;
        if (cls == 0x060000) bridge = s;
        if (id == 0x10031af4 && sub == 3) con = s;
        if (id == 0x10011af4 && sub == 2) blkslot = s;
    }
    check(bridge == 0, "a host bridge at 00:00.0");
    check(con > 0 && blkslot > 0, "a virtio console and a virtio block device");
    if (con > 0) {
        u32 bar = cfg_read(con, 0x10);
        cfg_write(con, 0x10, 0xffffffff);
        u32 mask = cfg_read(con, 0x10);
        cfg_write(con, 0x10, bar);
        check((bar & 1) && (mask & 1) && (mask & 0xfffc) != 0xfffc && cfg_read(con, 0x10) == bar,
              "BAR0 is I/O and sizes");
        check((cfg_read(con, 0x3c) >> 8 & 0xff) == 1, "INTA#");
        cfg_write(con, 4, 5); /* I/O + bus master */
        console(con);
    }
    if (blkslot > 0) {
        cfg_write(blkslot, 4, 5);
        disk(blkslot);
    }
    puts_(failures ? "virtio: FAILED\n" : "virtio: ok\n");
    exit_(failures ? 1 : 0);
}
