// The Intel MultiProcessor Specification 1.4 table: how a guest without ACPI (Debian's generic kernel
// has X86_MPPARSE) finds its processors, the IOAPIC and the routing of ISA interrupts. Written in the
// last KiB of base memory, where Linux searches for the floating pointer.

public enum MPTable {
    public static let ioapicVersion: UInt8 = 0x11
    public static let apicVersion: UInt8 = 0x14

    /// The table for `cpus` processors (APIC ids 0…cpus-1, 0 the bootstrap processor); the IOAPIC's id
    /// follows them. Bus 0 is PCI (Linux matches MP bus ids to PCI bus numbers), bus 1 ISA. ISA IRQs go
    /// to the IOAPIC pins of the same number, except the lines `pci` gives to PCI slots: INTA# of each
    /// such slot goes to the pin of its line, level-triggered, active high (as KVM's IOAPIC sees it).
    public static func build(cpus: Int, pci: [(slot: Int, line: UInt8)] = [], at base: UInt64 = Layout.mpTable) throws -> [UInt8] {
        guard cpus >= 1, cpus <= 254 else { throw VMMError.config("an MP table describes 1 to 254 processors, not \(cpus)") }
        let ioapicID = UInt8(cpus)
        var entries: [UInt8] = []
        var count: UInt16 = 0
        for i in 0..<cpus {
            entries += [0, UInt8(i), apicVersion, i == 0 ? 0x03 : 0x01]  // processor; enabled (| BSP)
            entries += le(UInt32(0x600)) + le(UInt32(0x201)) + [UInt8](repeating: 0, count: 8)
            count += 1
        }
        entries += [1, 0] + Array("PCI   ".utf8); count += 1  // bus 0
        entries += [1, 1] + Array("ISA   ".utf8); count += 1  // bus 1
        entries += [2, ioapicID, ioapicVersion, 1] + le(Layout.ioapic); count += 1
        let pciLines = Set(pci.map(\.line))
        for irq in 0..<16 where !pciLines.contains(UInt8(irq)) {  // I/O interrupt assignments
            entries += [3, 0] + le(UInt16(0)) + [1, UInt8(irq), ioapicID, UInt8(irq)]; count += 1
        }
        for p in pci {  // INTA# (pin 0) of each slot
            entries += [3, 0] + le(UInt16(0x0d)) + [0, UInt8(p.slot << 2), ioapicID, p.line]; count += 1
        }
        entries += [4, 3] + le(UInt16(0)) + [0, 0, 0xff, 0]; count += 1  // ExtINT to every LINT0
        entries += [4, 1] + le(UInt16(0)) + [0, 0, 0xff, 1]; count += 1  // NMI to every LINT1

        let headerSize = 44
        var header: [UInt8] = Array("PCMP".utf8) + le(UInt16(headerSize + entries.count)) + [4, 0]
        header += Array("SLURMVM ".utf8) + Array("EMBEDDED VMM".utf8)
        header += le(UInt32(0)) + le(UInt16(0)) + le(count) + le(Layout.localAPIC) + le(UInt16(0)) + [0, 0]
        var table = header + entries
        table[7] = checksum(table[...])

        let tableAddress = base + 16
        var floating: [UInt8] = Array("_MP_".utf8) + le(UInt32(truncatingIfNeeded: tableAddress)) + [1, 4, 0, 0, 0, 0, 0, 0]
        floating[10] = checksum(floating[...])
        let all = floating + table
        guard all.count <= 0x400 else { throw VMMError.config("the MP table for \(cpus) processors does not fit in the last KiB of base memory") }
        return all
    }
}
