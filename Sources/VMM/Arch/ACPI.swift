// ACPI tables (ACPI 6.x): RSDP → XSDT → FADT (→ DSDT) and MADT. Debian's cloud kernel has no MP-table
// parser, so without a MADT it sees neither the local APICs nor the other processors. The platform is
// "hardware-reduced" (no PM timer, SCI or sleep registers: power-off goes through the exit port, reset
// through the i8042 line), so Linux leaves the 8259s and the PIT alone and takes every interrupt through
// the IOAPIC. The DSDT names what it then cannot probe: the PCI host bridge (its bus, configuration
// ports and I/O window, and the routing of each slot's INTA# to an IOAPIC pin), COM1 with its IRQ, and
// the CMOS RTC. Written in the BIOS area below 1 MiB, which e820 reports reserved, where Linux also scans
// for the RSDP; the zero page points at it too.

public enum ACPI {
    static let oemID = Array("SLURMV".utf8)  // 6 bytes
    static let oemTableID = Array("EMBEDVMM".utf8)  // 8 bytes
    static let creatorID = Array("SVMM".utf8)

    /// FADT flags: HW_REDUCED_ACPI (bit 20).
    static let hardwareReduced: UInt32 = 1 << 20
    /// IA-PC boot architecture flags: no VGA (bit 2), no MSI (bit 3); no 8042 bit, so Linux does not
    /// probe a keyboard controller whose only function here is the reset line.
    static let bootArch: UInt16 = (1 << 2) | (1 << 3)

    /// A system description table: the 36-byte header, then `body`; length and checksum filled in.
    static func table(_ signature: String, revision: UInt8, _ body: [UInt8]) -> [UInt8] {
        var t = Array(signature.utf8) + le(UInt32(36 + body.count)) + [revision, 0] + oemID + oemTableID
        t += le(UInt32(1)) + creatorID + le(UInt32(1)) + body
        t[9] = checksum(t[...])
        return t
    }

    /// The MADT: one enabled local APIC per processor (APIC ids 0…cpus-1, as CPUID reports them), the
    /// IOAPIC (id `cpus`, GSI base 0), the PCI lines level-triggered and active low, and LINT1 as NMI on
    /// every processor. ISA IRQs otherwise map to the GSI of the same number, as KVM's default routing
    /// wires them (the PIT on pin 0, not 2 as QEMU reroutes it), so there is no override for IRQ 0.
    /// Active low because Linux registers a _PRT entry that names a GSI directly as level, active low
    /// (PCI's default), and refuses a pin already described otherwise: with "active high" here it
    /// failed virtio-pci's probe ("PCI INT A: failed to register GSI", -EBUSY), seen in the SVM
    /// sandbox. KVM's IOAPIC does not model polarity, so the wire is the same either way.
    static func madt(cpus: Int, pciLines: [UInt8]) -> [UInt8] {
        var b = le(Layout.localAPIC) + le(UInt32(1))  // PCAT_COMPAT: the 8259s are present
        for i in 0..<cpus { b += [0, 8, UInt8(i), UInt8(i)] + le(UInt32(1)) }  // processor local APIC, enabled
        b += [1, 12, UInt8(cpus), 0] + le(Layout.ioapic) + le(UInt32(0))
        for line in pciLines {  // source override: level (3 << 2), active low (3)
            b += [2, 10, 0, line] + le(UInt32(line)) + le(UInt16((3 << 2) | 3))
        }
        b += [4, 6, 0xff] + le(UInt16(0)) + [1]  // local APIC NMI: all processors, LINT1
        return table("APIC", revision: 5, b)
    }

    /// A revision-6 FADT for a hardware-reduced platform, pointing at the DSDT.
    static func fadt(dsdt: UInt64) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 276 - 36)
        func put(_ bytes: [UInt8], _ offset: Int) { for (i, x) in bytes.enumerated() { b[offset - 36 + i] = x } }
        put(le(UInt32(truncatingIfNeeded: dsdt)), 40)  // DSDT
        put(le(bootArch), 109)  // IAPC_BOOT_ARCH
        put(le(hardwareReduced), 112)  // Flags
        b[131 - 36] = 5  // FADT minor version (6.5)
        put(le(dsdt), 140)  // X_DSDT
        put(Array("SLURMVM\0".utf8), 268)  // hypervisor vendor identity
        return table("FACP", revision: 6, b)
    }

    /// The DSDT: \\_SB.PCI0 (PNP0A03, bus 0, ports 0xcf8–0xcff, I/O 0x0000–0x0cf7 and 0x0d00–0xffff, and
    /// a _PRT sending INTA# of each slot in `pci` to the GSI of its line), \\_SB.COM1 (PNP0501, 0x3f8,
    /// IRQ 4), \\_SB.RTC (PNP0B00, ports 0x70–0x71, no interrupt: the VMM's RTC raises none) and a
    /// virtio-mmio device (LNRO0005: its register window, an edge-triggered GSI) for each of `mmio`.
    static func dsdt(pci: [(slot: Int, line: UInt8)], mmio: [VirtioMMIOSlot] = []) -> [UInt8] {
        let prt = AML.package(
            pci.map { p in
                AML.package([AML.integer(UInt64(p.slot) << 16 | 0xffff), AML.integer(0), AML.integer(0), AML.integer(UInt64(p.line))])
            })
        let pci0 = AML.device(
            "PCI0",
            AML.name("_HID", AML.eisaID("PNP0A03")) + AML.name("_UID", AML.integer(0))
                + AML.name("_SEG", AML.integer(0)) + AML.name("_BBN", AML.integer(0))
                + AML.name(
                    "_CRS",
                    AML.resources([
                        AML.wordSpace(type: 2, 0, 0),  // bus numbers 0–0
                        AML.io(0xcf8, 8),  // configuration mechanism #1
                        AML.wordSpace(type: 1, 0x0000, 0x0cf7, typeFlags: 3),  // I/O below and above it
                        AML.wordSpace(type: 1, 0x0d00, 0xffff, typeFlags: 3),
                    ]))
                + AML.name("_PRT", prt))
        let com1 = AML.device(
            "COM1",
            AML.name("_HID", AML.eisaID("PNP0501")) + AML.name("_UID", AML.integer(1))
                + AML.name("_CRS", AML.resources([AML.io(0x3f8, 8), AML.irq(4)])))
        let rtc = AML.device(
            "RTC",
            AML.name("_HID", AML.eisaID("PNP0B00")) + AML.name("_CRS", AML.resources([AML.io(0x70, 2)])))
        let virtio = mmio.enumerated().flatMap { i, d in
            AML.device(
                "VR" + String(format2(i)),
                AML.name("_HID", AML.string("LNRO0005")) + AML.name("_UID", AML.integer(UInt64(i)))
                    + AML.name("_CRS", AML.resources([AML.memory32Fixed(UInt32(d.base), UInt32(d.size)), AML.edgeInterrupt(d.gsi)])))
        }
        return table("DSDT", revision: 2, AML.scope([0x5c] + AML.seg("_SB"), pci0 + com1 + rtc + virtio))
    }

    /// Every table for `cpus` processors and the PCI slots' interrupt lines, laid out from `base`
    /// (16-byte aligned, RSDP first).
    public static func build(
        cpus: Int, pci: [(slot: Int, line: UInt8)] = [], mmio: [VirtioMMIOSlot] = [], at base: UInt64 = Layout.acpi
    ) throws -> [UInt8] {
        let pciLines = pci.map(\.line)
        guard cpus >= 1, cpus <= 254 else { throw VMMError.config("the ACPI tables describe 1 to 254 processors, not \(cpus)") }
        var out = [UInt8](repeating: 0, count: 36)  // the RSDP, written last
        func place(_ t: [UInt8]) -> UInt64 {
            while out.count % 16 != 0 { out.append(0) }
            let at = base + UInt64(out.count)
            out += t
            return at
        }
        guard mmio.count <= 100 else { throw VMMError.config("the DSDT names at most 100 virtio-mmio devices, not \(mmio.count)") }
        let dsdt = place(dsdt(pci: pci, mmio: mmio))
        let fadt = place(fadt(dsdt: dsdt))
        let madt = place(madt(cpus: cpus, pciLines: pciLines))
        let xsdt = place(table("XSDT", revision: 1, le(fadt) + le(madt)))
        var rsdp = Array("RSD PTR ".utf8) + [0] + oemID + [2] + le(UInt32(0)) + le(UInt32(36)) + le(xsdt) + [0, 0, 0, 0]
        rsdp[8] = checksum(rsdp[0..<20])
        rsdp[32] = checksum(rsdp[...])
        out.replaceSubrange(0..<36, with: rsdp)
        guard base + UInt64(out.count) <= Layout.acpiEnd else {
            throw VMMError.config("the ACPI tables for \(cpus) processors do not fit below \(hex(Layout.acpiEnd))")
        }
        return out
    }
}

/// Where a virtio-mmio device's registers sit and which GSI it raises.
public struct VirtioMMIOSlot: Sendable, Equatable {
    public var base: UInt64, size: UInt64, gsi: UInt32
    public init(base: UInt64, size: UInt64, gsi: UInt32) { self.base = base; self.size = size; self.gsi = gsi }
}

/// Two decimal digits, for device names VR00–VR99.
func format2(_ i: Int) -> String { i < 10 ? "0\(i)" : "\(i % 100)" }
