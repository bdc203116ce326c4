/* The zero page as the guest sees it: boot flag and loader, the command line, and the e820 map
   (RAM below the EBDA, the reserved BIOS area, RAM from 1 MiB to the end). Exits 0 when all hold. */
#include "guest.h"

__attribute__((section(".text.start"), noreturn)) void _start(void)
{
    u64 zp;
    __asm__ volatile("mov %%rsi, %0" : "=r"(zp));
    puts_("bootparams: zero page at ");
    puthex(zp);
    putc_('\n');
    check(rd16(zp + 0x1fe) == 0xaa55, "boot_flag is 0xaa55");
    check(rd32(zp + 0x202) == 0x53726448, "header is HdrS");
    check(rd8(zp + 0x210) == 0xff, "type_of_loader is 0xff");
    u64 cmd = rd32(zp + 0x228) | ((u64)rd32(zp + 0xc8) << 32);
    puts_("cmdline: ");
    puts_((const char *)cmd);
    putc_('\n');
    check(streq((const char *)cmd, "console=ttyS0 conformance=bootparams"), "the command line arrives intact");
    check(rd32(zp + 0x238) == 36, "cmdline_size is its length");
    u8 n = rd8(zp + 0x1e8);
    check(n == 3, "three e820 entries");
    u64 ram = 0;
    for (int i = 0; i < n; i++) {
        u64 e = zp + 0x2d0 + (u64)i * 20;
        u64 a = rd64(e), s = rd64(e + 8);
        u32 t = rd32(e + 16);
        puts_("e820: ");
        puthex(a);
        putc_(' ');
        puthex(s);
        putc_(' ');
        putdec(t);
        putc_('\n');
        if (t == 1) ram += s;
    }
    check(rd64(zp + 0x2d0) == 0 && rd64(zp + 0x2d0 + 8) == 0x9fc00 && rd32(zp + 0x2d0 + 16) == 1,
          "low RAM ends at the EBDA");
    check(rd64(zp + 0x2d0 + 20) == 0x9fc00 && rd32(zp + 0x2d0 + 36) == 2, "the BIOS area is reserved");
    check(rd64(zp + 0x2d0 + 40) == 0x100000 && rd32(zp + 0x2d0 + 56) == 1, "high RAM starts at 1 MiB");
    u64 total = rd64(zp + 0x2d0 + 40) + rd64(zp + 0x2d0 + 48);
    puts_("memory: ");
    putdec(total >> 20);
    puts_(" MiB\n");
    check(total == (64ul << 20), "RAM ends at 64 MiB");
    /* Memory is there and writable up to its end. */
    volatile u64 *last = (volatile u64 *)(total - 8);
    *last = 0x5a5a5a5a5a5a5a5aul;
    check(*last == 0x5a5a5a5a5a5a5a5aul, "the last word of RAM is writable");
    puts_(failures ? "bootparams: FAILED\n" : "bootparams: ok\n");
    exit_(failures ? 1 : 0);
}
