/* Unassigned ports and MMIO: reads see all ones, writes vanish, the VM goes on. The exit port answers
   its probe ("SLVM") and carries a status other than 0 (42) back to the host. */
#include "guest.h"

__attribute__((section(".text.start"), noreturn)) void _start(void)
{
    check(inb(0x1234) == 0xff, "an unassigned port reads 0xff");
    check(inl(0x2000) == 0xffffffffu, "an unassigned 32-bit port reads all ones");
    outb(0x1234, 0x55);
    outl(0x2000, 0xdeadbeef);
    volatile u32 *hole = (volatile u32 *)0xd0000000ul; /* below 4 GiB, above RAM, not an APIC */
    check(*hole == 0xffffffffu, "unassigned MMIO reads all ones");
    *hole = 1;
    check(inl(EXIT_PORT) == 0x534c564du, "the exit port answers SLVM");
    puts_(failures ? "ports: FAILED\n" : "ports: ok\n");
    exit_(failures ? 1 : 42);
}
