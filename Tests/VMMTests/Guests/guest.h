/* What every conformance guest shares: port I/O, the UART (polled), the exit port, small formatting.
   Guests run in ring 0 on the boot protocol's long-mode state: RSI holds the zero page. Under PVM every
   ring-0 instruction is emulated (about 1.5 M/s), so guests stay small and print little. */
#ifndef GUEST_H
#define GUEST_H
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

static inline void outb(u16 p, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(p)); }
static inline void outl(u16 p, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(p)); }
static inline void outw(u16 p, u16 v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(p)); }
static inline u16 inw(u16 p)
{
    u16 v;
    __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(p));
    return v;
}
static inline u8 inb(u16 p)
{
    u8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(p));
    return v;
}
static inline u32 inl(u16 p)
{
    u32 v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(p));
    return v;
}

#define COM1      0x3f8
#define EXIT_PORT 0x501

static void putc_(char c)
{
    while (!(inb(COM1 + 5) & 0x20)) {}
    outb(COM1, (u8)c);
}
static void puts_(const char *s)
{
    while (*s) putc_(*s++);
}
static void puthex(u64 v)
{
    puts_("0x");
    for (int i = 60; i >= 0; i -= 4) putc_("0123456789abcdef"[(v >> i) & 15]);
}
static void putdec(u64 v)
{
    char b[21];
    int i = 20;
    b[i] = 0;
    do {
        b[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    puts_(b + i);
}
static __attribute__((noreturn)) void exit_(u32 status)
{
    outl(EXIT_PORT, status);
    for (;;) __asm__ volatile("hlt");
}

static int failures;
static void check(int ok, const char *what)
{
    if (!ok) {
        failures++;
        puts_("FAIL ");
        puts_(what);
        putc_('\n');
    }
}
static int streq(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

static inline u8 rd8(u64 a) { return *(volatile u8 *)a; }
static inline u16 rd16(u64 a) { return *(volatile u16 *)a; }
static inline u32 rd32(u64 a) { return *(volatile u32 *)a; }
static inline u64 rd64(u64 a) { return *(volatile u64 *)a; }
#endif
