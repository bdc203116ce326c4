/* The ACPI tables as a guest finds them: the RSDP by the zero page's acpi_rsdp_addr and by scanning the
   BIOS area, its two checksums, the XSDT and every table it lists (checksums), a hardware-reduced FADT
   whose DSDT is a valid table, and a MADT with one enabled local APIC per processor (ids 0…n-1, the
   bootstrap processor's matching CPUID), the IOAPIC at 0xfec00000 and LINT1 as NMI. Exits 0 if all
   hold, after printing the processor count for the host to compare. */
#include "guest.h"

static u8 sum(u64 a, u32 n)
{
    u8 s = 0;
    for (u32 i = 0; i < n; i++) s += rd8(a + i);
    return s;
}
static int sig(u64 a, const char *s)
{
    for (int i = 0; i < 4; i++)
        if (rd8(a + (u64)i) != (u8)s[i]) return 0;
    return 1;
}

__attribute__((section(".text.start"), noreturn)) void _start(void)
{
    u64 zp;
    __asm__ volatile("mov %%rsi, %0" : "=r"(zp));
    u64 rsdp = 0;
    for (u64 p = 0xe0000; p < 0x100000; p += 16)
        if (rd64(p) == 0x2052545020445352ul) {
            rsdp = p;
            break;
        } /* "RSD PTR " */
    check(rsdp != 0, "an RSDP in the BIOS area");
    if (!rsdp) exit_(1);
    check(rd64(zp + 0x70) == rsdp, "the zero page's acpi_rsdp_addr points at it");
    check(sum(rsdp, 20) == 0, "the RSDP's checksum");
    check(rd8(rsdp + 15) == 2 && rd32(rsdp + 20) == 36 && sum(rsdp, 36) == 0,
          "an ACPI 2.0 RSDP and its extended checksum");
    u64 xsdt = rd64(rsdp + 24);
    check(sig(xsdt, "XSDT") && sum(xsdt, rd32(xsdt + 4)) == 0, "the XSDT and its checksum");
    u32 n = (rd32(xsdt + 4) - 36) / 8;
    u64 fadt = 0, madt = 0;
    for (u32 i = 0; i < n; i++) {
        u64 t = rd64(xsdt + 36 + 8 * (u64)i);
        check(sum(t, rd32(t + 4)) == 0, "a listed table's checksum");
        if (sig(t, "FACP")) fadt = t;
        if (sig(t, "APIC")) madt = t;
    }
    check(fadt && madt, "the XSDT lists a FADT and a MADT");
    if (!fadt || !madt) exit_(1);
    check(rd32(fadt + 4) == 276 && rd8(fadt + 8) == 6, "a revision-6 FADT of 276 bytes");
    check(rd32(fadt + 112) & (1u << 20), "the FADT says hardware-reduced");
    u64 dsdt = rd64(fadt + 140);
    check(dsdt == rd32(fadt + 40) && sig(dsdt, "DSDT") && sum(dsdt, rd32(dsdt + 4)) == 0,
          "the FADT's DSDT is a valid table");

    check(rd32(madt + 36) == 0xfee00000u, "the MADT's local APIC address");
    u32 cpus = 0, ids_ok = 1, ioapics = 0, nmi = 0;
    for (u64 e = madt + 44; e < madt + rd32(madt + 4); e += rd8(e + 1)) {
        u8 type = rd8(e), len = rd8(e + 1);
        if (len < 2) {
            check(0, "MADT entries have a length");
            exit_(1);
        }
        if (type == 0) {
            if (rd8(e + 3) != cpus || !(rd32(e + 4) & 1)) ids_ok = 0;
            cpus++;
        }
        if (type == 1) {
            ioapics++;
            check(rd32(e + 4) == 0xfec00000u && rd32(e + 8) == 0, "the IOAPIC at 0xfec00000, GSI base 0");
        }
        if (type == 4 && rd8(e + 2) == 0xff && rd8(e + 5) == 1) nmi++;
    }
    u32 a = 1, b, c = 0, d;
    __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
    check(ids_ok && (b >> 24) == 0, "enabled local APICs with ids 0..n-1; the bootstrap processor is 0");
    check(ioapics == 1 && nmi == 1, "one IOAPIC, LINT1 as NMI on all processors");
    puts_("acpi: ");
    putdec(cpus);
    puts_(" processors in the MADT\n");
    exit_(failures ? 1 : 0);
}
