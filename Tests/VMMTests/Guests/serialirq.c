/* The UART's THR-empty interrupt reaches the guest: IRQ 4 through the in-kernel IOAPIC (the 8259s
   masked) to vector 0x24 on the bootstrap processor's local APIC. Enabling THRE interrupts raises one
   at once; every byte written raises another. Exits 0 when at least three arrived. */
#include "guest.h"

volatile u32 irqs;

__asm__(".globl isr\n"
        "isr:\n"
        "  push %rax\n  push %rcx\n  push %rdx\n"
        "  lock incl irqs(%rip)\n"
        "  mov $0x3fa, %dx\n  in %dx, %al\n"           /* read IIR: acknowledges THR empty */
        "  mov $0xfee000b0, %ecx\n  movl $0, (%rcx)\n" /* local APIC EOI */
        "  pop %rdx\n  pop %rcx\n  pop %rax\n"
        "  iretq\n");
extern char isr[];

static u64 idt[2 * 256] __attribute__((aligned(16)));

static void gate(int vector, void *handler)
{
    u64 a = (u64)handler;
    idt[2 * vector] = (a & 0xffff) | (0x10ul << 16) | (0x8eul << 40) | ((a >> 16 & 0xffff) << 48);
    idt[2 * vector + 1] = a >> 32;
}

static void ioapic_write(u32 reg, u32 v)
{
    *(volatile u32 *)0xfec00000ul = reg;
    *(volatile u32 *)0xfec00010ul = v;
}

__attribute__((section(".text.start"), noreturn)) void _start(void)
{
    gate(0x24, isr);
    struct __attribute__((packed)) {
        u16 limit;
        u64 base;
    } d = {sizeof idt - 1, (u64)idt};
    __asm__ volatile("lidt %0" ::"m"(d));
    outb(0x21, 0xff);
    outb(0xa1, 0xff);                      /* mask both 8259s */
    *(volatile u32 *)0xfee000f0ul = 0x1ff; /* local APIC on, spurious vector 0xff */
    ioapic_write(0x10 + 2 * 4, 0x24);      /* pin 4: vector 0x24, edge, fixed, unmasked */
    ioapic_write(0x11 + 2 * 4, 0);         /* to APIC id 0 */
    outb(COM1 + 2, 0x07);                  /* FIFO on */
    check((inb(COM1 + 2) & 0xc0) == 0xc0, "IIR shows the FIFO enabled");
    __asm__ volatile("sti");
    outb(COM1 + 1, 0x02);                                   /* THRE interrupts on: one fires now */
    for (int i = 0; i < 2; i++) outb(COM1, i ? '\n' : '.'); /* each byte: one more */
    for (long spin = 0; irqs < 3 && spin < 200000; spin++) __asm__ volatile("pause");
    __asm__ volatile("cli");
    outb(COM1 + 1, 0);
    puts_("serialirq: ");
    putdec(irqs);
    puts_(" interrupts\n");
    check(irqs >= 3, "three THR-empty interrupts");
    exit_(failures ? 1 : 0);
}
