/* An exception with no usable IDT is a triple fault: the VM ends as a shutdown, and the host lives. */
#include "guest.h"

__attribute__((section(".text.start"), noreturn)) void _start(void)
{
    struct __attribute__((packed)) {
        u16 limit;
        u64 base;
    } idt = {0, 0};
    puts_("triplefault: ud2 with an empty IDT\n");
    __asm__ volatile("lidt %0; ud2" ::"m"(idt));
    exit_(1);
}
