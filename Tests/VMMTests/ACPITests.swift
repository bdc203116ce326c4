// The ACPI tables checked by the reference disassembler (ACPICA's iasl, from acpica-tools, which
// scripts/deps.sh installs): each table must disassemble without an error or warning, with the fields
// Linux reads. The conformance guest (Guests/acpi.c) checks them as a guest finds them.
import Foundation
import Testing
@testable import VMM

@Suite struct ACPITests {
    static let iasl = ["/usr/bin/iasl", "/usr/local/bin/iasl"].first { FileManager.default.isExecutableFile(atPath: $0) }

    /// The tables in `blob` (laid out from Layout.acpi), by signature, found from the RSDP as a guest would.
    static func tables(_ blob: [UInt8]) -> [String: [UInt8]] {
        func u32(_ o: Int) -> Int { Int(blob[o]) | Int(blob[o + 1]) << 8 | Int(blob[o + 2]) << 16 | Int(blob[o + 3]) << 24 }
        func u64(_ o: Int) -> Int { u32(o) | u32(o + 4) << 32 }
        func at(_ gpa: Int) -> [UInt8] { let o = gpa - Int(Layout.acpi); return Array(blob[o..<(o + u32(o + 4))]) }
        var out = ["RSDP": Array(blob[0..<36])]
        let xsdt = at(u64(24))
        out["XSDT"] = xsdt
        for i in 0..<((xsdt.count - 36) / 8) {
            let t = at(Int(xsdt[36 + 8 * i]) | Int(xsdt[37 + 8 * i]) << 8 | Int(xsdt[38 + 8 * i]) << 16 | Int(xsdt[39 + 8 * i]) << 24)
            out[String(decoding: t[0..<4], as: UTF8.self)] = t
        }
        if let f = out["FACP"] { out["DSDT"] = at(Int(f[140]) | Int(f[141]) << 8 | Int(f[142]) << 16 | Int(f[143]) << 24) }
        return out
    }

    @Test func theTablesFitAndRefuseImpossibleProcessorCounts() throws {
        for n in [1, 2, 64, 254] {
            let t = Self.tables(try ACPI.build(cpus: n, pci: [(1, 10), (2, 11)]))
            #expect(Set(t.keys) == ["RSDP", "XSDT", "FACP", "APIC", "DSDT"])
            #expect(t["APIC"]!.count == 44 + 8 * n + 12 + 2 * 10 + 6)
        }
        #expect { try ACPI.build(cpus: 0) } throws: { if case VMMError.config = $0 { true } else { false } }
        #expect { try ACPI.build(cpus: 255) } throws: { if case VMMError.config = $0 { true } else { false } }
    }

    @Test(.enabled(if: iasl != nil, "needs iasl (acpica-tools)")) func theReferenceDisassemblerAcceptsEveryTable() throws {
        let dir = NSTemporaryDirectory() + "acpi-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var text: [String: String] = [:]
        // The RSDP is no system description table (iasl reads it only from acpidump output); the guest
        // checks it.
        let mmio = [VirtioMMIOSlot(base: 0xd000_0000, size: 0x200, gsi: 16), VirtioMMIOSlot(base: 0xd000_1000, size: 0x200, gsi: 17)]
        for (name, bytes) in Self.tables(try ACPI.build(cpus: 4, pci: [(1, 10), (2, 11)], mmio: mmio)) where name != "RSDP" {
            let bin = "\(dir)/\(name.lowercased()).dat"
            try Data(bytes).write(to: URL(fileURLWithPath: bin))
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Self.iasl!)
            p.arguments = ["-d", bin]
            p.currentDirectoryURL = URL(fileURLWithPath: dir)
            let out = Pipe()
            p.standardOutput = out; p.standardError = out
            try p.run()
            let log = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            #expect(p.terminationStatus == 0, "iasl -d \(name): \(log)")
            let dsl = (try? String(contentsOfFile: "\(dir)/\(name.lowercased()).dsl", encoding: .utf8)) ?? ""
            #expect(!dsl.isEmpty, "iasl wrote no disassembly for \(name): \(log)")
            for bad in ["Error", "Warning", "Invalid", "Incorrect checksum"] {
                #expect(!dsl.contains(bad), "\(name): \(bad) in\n\(dsl)")
            }
            text[name] = dsl
        }
        #expect(text["FACP"]?.contains(#/Hardware Reduced \(V5\) : 1/#) == true, "\(text["FACP"] ?? "")")
        #expect(text["APIC"]?.range(of: "Processor Enabled : 1")?.isEmpty == false)
        #expect(text["APIC"]?.components(separatedBy: "Subtable Type : 00 [Processor Local APIC]").count == 5)
        #expect(text["APIC"]?.contains("Address : FEC00000") == true)
        #expect(text["APIC"]?.components(separatedBy: "Trigger Mode : 3").count == 3, "the two PCI lines are level-triggered")
        let dsdt = text["DSDT"] ?? ""
        for want in [
            "Device (PCI0)", "EisaId (\"PNP0A03\")", "Device (COM1)", "EisaId (\"PNP0501\")", "Device (RTC)",
            "EisaId (\"PNP0B00\")", "Name (_PRT", "0x0001FFFF", "0x0002FFFF", "IRQNoFlags", "0x03F8", "0x0CF8",
            "WordBusNumber",
            // The virtio-mmio devices: their windows and edge-triggered GSIs.
            "Device (VR00)", "Device (VR01)", "\"LNRO0005\"", "Memory32Fixed (ReadWrite,", "0xD0001000",
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )", "0x00000011",
        ] {
            #expect(dsdt.contains(want), "the DSDT has \(want):\n\(dsdt)")
        }
    }
}
