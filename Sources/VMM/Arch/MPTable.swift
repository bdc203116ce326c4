// The Intel MultiProcessor Specification 1.4 table: how a guest without ACPI (Debian's generic kernel
// has X86_MPPARSE) finds its processors, the IOAPIC and the routing of ISA interrupts. Written in the
// last KiB of base memory, where Linux searches for the floating pointer.

public enum MPTable {
    public static let ioapicVersion: UInt8 = 0x11
    public static let apicVersion: UInt8 = 0x14

    static func checksum(_ b: ArraySlice<UInt8>) -> UInt8 { UInt8(truncatingIfNeeded: 0 &- b.reduce(0) { $0 &+ Int($1) }) }

    static func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

    /// The table for `cpus` processors (APIC ids 0…cpus-1, 0 the bootstrap processor); the IOAPIC's id
    /// follows them. ISA IRQs 0–15 go to the IOAPIC pins of the same number.
    public static func build(cpus: Int, at base: UInt64 = Layout.mpTable) throws -> [UInt8] {
        guard cpus >= 1, cpus <= 254 else { throw VMMError("an MP table describes 1 to 254 processors, not \(cpus)") }
        let ioapicID = UInt8(cpus)
        var entries: [UInt8] = []
        var count: UInt16 = 0
        for i in 0..<cpus {
            entries += [0, UInt8(i), apicVersion, i == 0 ? 0x03 : 0x01]   // processor; enabled (| BSP)
            entries += le(UInt32(0x600)) + le(UInt32(0x201)) + [UInt8](repeating: 0, count: 8)
            count += 1
        }
        entries += [1, 0] + Array("ISA   ".utf8); count += 1            // bus 0
        entries += [2, ioapicID, ioapicVersion, 1] + le(Layout.ioapic); count += 1
        for irq in 0..<16 {                                                  // I/O interrupt assignments
            entries += [3, 0] + le(UInt16(0)) + [0, UInt8(irq), ioapicID, UInt8(irq)]; count += 1
        }
        entries += [4, 3] + le(UInt16(0)) + [0, 0, 0xff, 0]; count += 1     // ExtINT to every LINT0
        entries += [4, 1] + le(UInt16(0)) + [0, 0, 0xff, 1]; count += 1     // NMI to every LINT1

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
        guard all.count <= 0x400 else { throw VMMError("the MP table for \(cpus) processors does not fit in the last KiB of base memory") }
        return all
    }
}
