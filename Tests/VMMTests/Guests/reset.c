/* A guest without ACPI reboots through the i8042: command 0xfe on port 0x64 ends the VM as a reset. */
#include "guest.h"

__attribute__((section(".text.start"), noreturn)) void _start(void)
{
    puts_("reset: pulsing the reset line\n");
    outb(0x64, 0xfe);
    puts_("FAIL still running after the reset\n");
    exit_(1);
}
