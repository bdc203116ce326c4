/* The 8254 PIT, which the VMM creates only when asked (--pit, for guests without ACPI): program
   channel 0 as a rate generator from 0xffff, latch its count twice with a pause between, and say
   whether it counted down. Without a PIT the ports are unassigned and read all ones. */
#include "guest.h"

static u16 latch(void)
{
    outb(0x43, 0x00); /* counter latch, channel 0 */
    u8 lo = inb(0x40), hi = inb(0x40);
    return (u16)(lo | hi << 8);
}

__attribute__((section(".text.start"), noreturn)) void _start(void)
{
    outb(0x43, 0x34); /* channel 0, lobyte/hibyte, mode 2 */
    outb(0x40, 0xff);
    outb(0x40, 0xff);
    u16 a = latch();
    for (volatile int i = 0; i < 20000; i++) {}
    u16 b = latch();
    if (a == 0xffff && b == 0xffff)
        puts_("pit: absent\n");
    else if (a != b)
        puts_("pit: counting\n");
    else
        puts_("pit: stuck\n");
    exit_(0);
}
