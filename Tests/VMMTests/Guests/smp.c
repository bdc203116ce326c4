/* Application processors start as on hardware: the bootstrap processor counts the processors in the
   MP table, copies a real-mode trampoline to 0x8000 and sends INIT and SIPI to all others through its
   local APIC. Each AP enters long mode on the VMM's page tables and checks in with the APIC id its
   CPUID gives. Exits 0 when every processor of the MP table checked in, each with its own id. */
#include "guest.h"

volatile u32 ap_next;
volatile u64 ap_seen;
volatile u32 ap_count;

__asm__(".code16\n"
        ".globl tramp_start, tramp_end\n"
        "tramp_start:\n"
        "  cli\n"
        "  mov %cs, %ax\n  mov %ax, %ds\n"
        "  lgdtl (tramp_gdtr - tramp_start)\n"
        "  mov $0x20, %eax\n  mov %eax, %cr4\n"                          /* PAE */
        "  mov $0x9000, %eax\n  mov %eax, %cr3\n"                        /* the VMM's identity map */
        "  mov $0xc0000080, %ecx\n  rdmsr\n  or $0x100, %eax\n  wrmsr\n" /* EFER.LME */
        "  mov $0x80000001, %eax\n  mov %eax, %cr0\n"                    /* PG | PE: straight to long mode */
        "  ljmpl $0x10, $(0x8000 + tramp64 - tramp_start)\n"
        ".code64\n"
        "tramp64:\n"
        "  mov $0x18, %ax\n  mov %ax, %ds\n  mov %ax, %es\n  mov %ax, %ss\n"
        "  movabs $ap_entry, %rax\n  jmp *%rax\n"
        "tramp_gdtr: .word 0x27\n .long 0x500\n"
        "tramp_end:\n"
        ".globl ap_entry\n"
        "ap_entry:\n"
        "  mov $1, %eax\n  lock xadd %eax, ap_next(%rip)\n"
        "  shl $12, %eax\n  add $0x31000, %eax\n  mov %rax, %rsp\n"
        "  call ap_main\n"
        "1: cli\n  hlt\n  jmp 1b\n");
extern char tramp_start[], tramp_end[];

void ap_main(void)
{
    u32 a = 1, b, c = 0, d;
    __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
    u32 id = b >> 24;
    __atomic_fetch_or(&ap_seen, 1ul << id, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&ap_count, 1, __ATOMIC_SEQ_CST);
}

static void icr(u32 low)
{
    *(volatile u32 *)0xfee00310ul = 0;
    *(volatile u32 *)0xfee00300ul = low;
    for (int i = 0; i < 1000 && (*(volatile u32 *)0xfee00300ul & 0x1000); i++) {} /* delivery pending */
}

__attribute__((section(".text.start"), noreturn)) void _start(void)
{
    /* The MP table: floating pointer in the last KiB of base memory, then the processor entries. */
    u64 fp = 0;
    for (u64 p = 0x9fc00; p < 0xa0000; p += 16)
        if (rd32(p) == 0x5f504d5f) {
            fp = p;
            break;
        } /* "_MP_" */
    check(fp != 0, "an MP floating pointer in the last KiB of base memory");
    if (!fp) exit_(1);
    u8 sum = 0;
    for (int i = 0; i < 16; i++) sum += rd8(fp + (u64)i);
    check(sum == 0, "the floating pointer's checksum");
    u64 t = rd32(fp + 4);
    check(rd32(t) == 0x504d4350, "the configuration table says PCMP"); /* "PCMP" */
    u16 len = rd16(t + 4), n = rd16(t + 34);
    sum = 0;
    for (u16 i = 0; i < len; i++) sum += rd8(t + i);
    check(sum == 0, "the configuration table's checksum");
    check(rd32(t + 36) == 0xfee00000u, "the local APIC at 0xfee00000");
    u32 cpus = 0, bsp = 255, ioapics = 0;
    u64 e = t + 44;
    for (u16 i = 0; i < n; i++) {
        u8 type = rd8(e);
        if (type == 0) {
            if (rd8(e + 3) & 1) cpus++;
            if (rd8(e + 3) & 2) bsp = rd8(e + 1);
            e += 20;
        } else {
            if (type == 2) ioapics++;
            e += 8;
        }
    }
    check(bsp == 0 && ioapics == 1, "processor 0 is the bootstrap processor; one IOAPIC");
    puts_("smp: ");
    putdec(cpus);
    puts_(" processors in the MP table\n");

    for (u64 i = 0; i < (u64)(tramp_end - tramp_start); i++) *(volatile u8 *)(0x8000 + i) = (u8)tramp_start[i];
    *(volatile u32 *)0xfee000f0ul = 0x1ff; /* local APIC on */
    icr(0x000c4500);                       /* INIT, assert, to all but self */
    icr(0x000c4608);                       /* SIPI, vector 0x08: start at 0x8000 */
    icr(0x000c4608);                       /* a second SIPI, as the MP spec asks */
    for (long spin = 0; ap_count < cpus - 1 && spin < 2000000; spin++) __asm__ volatile("pause");
    puts_("smp: ");
    putdec(ap_count);
    puts_(" application processors checked in\n");
    check(ap_count == cpus - 1, "every application processor checked in");
    u64 want = ((1ul << cpus) - 1) & ~1ul;
    check(ap_seen == want, "each with its own APIC id");
    exit_(failures ? 1 : 0);
}
