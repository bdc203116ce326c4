/* The benchmark's guest: the same bytes run as the 64-bit entry our VMM uses (ELF e_entry) and as
   the 32-bit PVH entry QEMU -M microvm uses (the PHYS32_ENTRY note), since mov/xor/out/hlt encode
   alike in both modes. EXIT writes 0 to port 0x501 (our exit port; QEMU's isa-debug-exit there) and
   ends the VM; without it the guest idles with interrupts off, for memory measurements. */
    .section .text.start, "ax"
    .globl _start
    .code32
_start:
#ifdef EXIT
    mov $0x501, %dx
    xor %eax, %eax
    out %eax, %dx
#endif
1:  cli
    hlt
    jmp 1b

    .section .note.pvh, "a"
    .p2align 2
    .long 4            /* name size: "Xen\0" */
    .long 4            /* desc size */
    .long 18           /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long _start
