/* The i8042 as Linux probes it, then a reboot through it. Linux's i8042 driver flushes the output
 * buffer, reads the command byte (0x20), writes it back (0x60) and may run the self test (0xaa); each
 * answer must arrive (status bit 0) or Linux waits out a long timeout. A guest without ACPI then
 * reboots with command 0xfe on port 0x64, which ends the VM as a reset. */
#include "guest.h"

#define DATA   0x60
#define STATUS 0x64
#define OBF    0x01

/* Reads the next output byte, or returns -1 when none arrives within a bounded number of polls. */
static int read_output(void)
{
    for (int i = 0; i < 1000; i++)
        if (inb(STATUS) & OBF) return inb(DATA);
    return -1;
}

__attribute__((section(".text.start"), noreturn)) void _start(void)
{
    check(!(inb(STATUS) & OBF), "the output buffer is empty at power-on");
    outb(STATUS, 0x20);
    int ctr = read_output();
    check(ctr >= 0, "the command byte is answered");
    check(ctr >= 0 && (ctr & 0x04), "the command byte has the system flag");
    check(!(inb(STATUS) & OBF), "reading the answer empties the output buffer");
    outb(STATUS, 0x60);
    outb(DATA, 0x65);
    outb(STATUS, 0x20);
    check(read_output() == 0x65, "a written command byte reads back");
    outb(STATUS, 0xaa);
    check(read_output() == 0x55, "the self test passes");
    outb(STATUS, 0xab);
    check(read_output() == 0x00, "the keyboard port test passes");
    for (int i = 0; i < 40; i++) outb(STATUS, 0x20);
    int held = 0;
    while (read_output() >= 0) held++;
    check(held == 16, "the output buffer holds 16 bytes at most");
    if (failures) exit_(1);
    puts_("reset: i8042 probe answered; pulsing the reset line\n");
    outb(STATUS, 0xfe);
    puts_("FAIL still running after the reset\n");
    exit_(1);
}
