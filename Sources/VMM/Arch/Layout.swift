// Where everything lives in guest physical memory (x86-64, Linux 64-bit boot protocol). The low
// megabyte holds the boot structures; the kernel loads at 16 MiB; the initramfs at the top of RAM.

public enum Layout {
    public static let gdt: UInt64 = 0x500
    public static let idt: UInt64 = 0x520
    /// The zero page (struct boot_params), handed to the kernel in RSI.
    public static let zeroPage: UInt64 = 0x7000
    /// Initial stack of the bootstrap processor (a conformance guest uses it; Linux sets its own).
    public static let bootStack: UInt64 = 0x8ff0
    /// Identity page tables: PML4, one PDPT, four page directories of 2 MiB pages (the first 4 GiB).
    public static let pml4: UInt64 = 0x9000
    public static let pdpt: UInt64 = 0xa000
    public static let pageDirectories: UInt64 = 0xb000
    public static let commandLine: UInt64 = 0x20000
    public static let commandLineMax = 0x10000
    /// The last KiB of base memory, where Linux looks for the MP floating pointer.
    public static let mpTable: UInt64 = 0x9fc00
    public static let ebdaStart: UInt64 = 0x9fc00
    /// The ACPI tables, in the BIOS area (reserved in e820) where Linux scans for the RSDP.
    public static let acpi: UInt64 = 0xe0000
    public static let acpiEnd: UInt64 = 0x100000
    public static let highMemory: UInt64 = 0x100000
    /// Where kernels load (the bzImage's pref_address; a vmlinux's segments name their own).
    public static let kernelLoad: UInt64 = 0x1000000
    /// RAM beyond this goes above 4 GiB: the 32-bit window below 4 GiB is for the APICs and the TSS.
    public static let lowMemoryEnd: UInt64 = 0xc000_0000
    public static let highMemoryStart: UInt64 = 0x1_0000_0000
    /// virtio-mmio register windows, one per 4 KiB from here (in the 32-bit hole, far from the APICs),
    /// and the GSIs they raise from `virtioMMIOFirstGSI` on (the IOAPIC's pins past the ISA lines).
    public static let virtioMMIO: UInt64 = 0xd000_0000
    public static let virtioMMIOStride: UInt64 = 0x1000
    public static let virtioMMIOFirstGSI: UInt32 = 16
    public static let virtioMMIOMax = 8
    public static let tssAddress: UInt64 = 0xfffb_d000
    public static let identityMapAddress: UInt64 = 0xfffb_c000
    public static let ioapic: UInt32 = 0xfec0_0000
    public static let localAPIC: UInt32 = 0xfee0_0000

    /// Guest RAM in [0, lowMemoryEnd) only for now: one slot, one contiguous mapping.
    public static let maxMemory: UInt64 = lowMemoryEnd
}
