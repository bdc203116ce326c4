/* The CMOS RTC: status B says 24-hour BCD, the update-in-progress bit clears, and the date and time
   read back as the host's (the test compares). */
#include "guest.h"

static u8 cmos(u8 i)
{
    outb(0x70, i);
    return inb(0x71);
}
static u32 bcd(u8 v) { return (u32)(v >> 4) * 10 + (v & 15); }
static void two(u32 v)
{
    putc_((char)('0' + v / 10));
    putc_((char)('0' + v % 10));
}

__attribute__((section(".text.start"), noreturn)) void _start(void)
{
    int spins = 0;
    while (cmos(0x0a) & 0x80) {
        if (++spins > 100000) {
            puts_("FAIL the RTC never leaves update-in-progress\n");
            exit_(1);
        }
    }
    check((cmos(0x0b) & 0x06) == 0x02, "status B: 24-hour, BCD");
    check(cmos(0x0d) & 0x80, "status D: valid");
    u32 s = bcd(cmos(0)), m = bcd(cmos(2)), h = bcd(cmos(4)), d = bcd(cmos(7)), mo = bcd(cmos(8)), y = bcd(cmos(9)),
        c = bcd(cmos(0x32));
    puts_("rtc: ");
    two(c);
    two(y);
    putc_('-');
    two(mo);
    putc_('-');
    two(d);
    putc_(' ');
    two(h);
    putc_(':');
    two(m);
    putc_(':');
    two(s);
    putc_('\n');
    check(s < 60 && m < 60 && h < 24 && d >= 1 && d <= 31 && mo >= 1 && mo <= 12, "the fields are in range");
    /* NVRAM beyond the clock keeps what is written. */
    outb(0x70, 0x40);
    outb(0x71, 0xa5);
    check(cmos(0x40) == 0xa5, "NVRAM keeps a byte");
    exit_(failures ? 1 : 0);
}
