// The few ACPI Machine Language constructs the DSDT needs (ACPI 6.x §20, AML encoding, and §6.4,
// resource descriptors): scopes, devices, named integers, packages and resource templates.
// Each function returns the encoded bytes; nesting is by concatenation.

enum AML {
    /// A package length: one byte up to 63, else a lead byte with the count of following bytes and the
    /// low nibble, then 8 bits per byte. The length counts its own bytes.
    static func pkgLength(_ body: Int) -> [UInt8] {
        for extra in 0...3 {
            let total = body + 1 + extra
            if extra == 0 && total < 0x40 { return [UInt8(total)] }
            if extra > 0 && total < 1 << (4 + 8 * extra) {
                var b = [UInt8(extra << 6) | UInt8(total & 0x0f)]
                for i in 0..<extra { b.append(UInt8((total >> (4 + 8 * i)) & 0xff)) }
                return b
            }
        }
        preconditionFailure("an AML package of \(body) bytes is beyond the encoding")
    }

    /// A name segment: four characters, padded with '_'.
    static func seg(_ s: String) -> [UInt8] {
        precondition(s.utf8.count <= 4 && !s.isEmpty)
        return Array(s.utf8) + [UInt8](repeating: UInt8(ascii: "_"), count: 4 - s.utf8.count)
    }

    static func integer(_ v: UInt64) -> [UInt8] {
        switch v {
        case 0: return [0x00]  // ZeroOp
        case 1: return [0x01]  // OneOp
        case ...0xff: return [0x0a, UInt8(v)]
        case ...0xffff: return [0x0b] + le(UInt16(v))
        case ...0xffff_ffff: return [0x0c] + le(UInt32(v))
        default: return [0x0e] + le(v)
        }
    }

    /// EisaId("PNP0A03"): three 5-bit letters and four hex digits, as a DWord.
    static func eisaID(_ id: String) -> [UInt8] {
        let c = Array(id.utf8)
        precondition(c.count == 7)
        let letters = (UInt16(c[0] - 0x40) << 10) | (UInt16(c[1] - 0x40) << 5) | UInt16(c[2] - 0x40)
        let product = UInt16(String(decoding: c[3...], as: UTF8.self), radix: 16)!
        return [0x0c, UInt8(letters >> 8), UInt8(letters & 0xff), UInt8(product >> 8), UInt8(product & 0xff)]
    }

    /// A string constant (an ACPI _HID such as "LNRO0005" that is not an EISA id).
    static func string(_ s: String) -> [UInt8] { [0x0d] + Array(s.utf8) + [0] }

    static func name(_ n: String, _ value: [UInt8]) -> [UInt8] { [0x08] + seg(n) + value }

    static func scope(_ path: [UInt8], _ body: [UInt8]) -> [UInt8] { [0x10] + pkgLength(path.count + body.count) + path + body }

    static func device(_ n: String, _ body: [UInt8]) -> [UInt8] {
        [0x5b, 0x82] + pkgLength(4 + body.count) + seg(n) + body
    }

    static func package(_ elements: [[UInt8]]) -> [UInt8] {
        let body = [UInt8(elements.count)] + elements.flatMap { $0 }
        return [0x12] + pkgLength(body.count) + body
    }

    /// A resource template: the descriptors, an end tag, as a buffer.
    static func resources(_ descriptors: [[UInt8]]) -> [UInt8] {
        let bytes: [UInt8] = descriptors.flatMap { $0 } + [0x79, 0x00]
        let body = integer(UInt64(bytes.count)) + bytes
        return [0x11] + pkgLength(body.count) + body
    }

    /// IO(Decode16, base, base, 1, count): a fixed range of ports.
    static func io(_ base: UInt16, _ count: UInt8) -> [UInt8] { [0x47, 0x01] + le(base) + le(base) + [1, count] }

    /// IRQNoFlags() { irq }: an edge-triggered, active-high ISA interrupt.
    static func irq(_ n: Int) -> [UInt8] { [0x22] + le(UInt16(1 << n)) }

    /// Memory32Fixed(ReadWrite, base, length).
    static func memory32Fixed(_ base: UInt32, _ length: UInt32) -> [UInt8] { [0x86] + le(UInt16(9)) + [1] + le(base) + le(length) }

    /// Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi }: an extended interrupt
    /// descriptor, which names a GSI directly (beyond the 16 ISA lines).
    static func edgeInterrupt(_ gsi: UInt32) -> [UInt8] { [0x89] + le(UInt16(6)) + [0x03, 1] + le(gsi) }

    /// A word address space a bridge produces: 0 memory, 1 I/O, 2 bus numbers; fixed minimum and maximum.
    static func wordSpace(type: UInt8, _ min: UInt16, _ max: UInt16, typeFlags: UInt8 = 0) -> [UInt8] {
        [0x88] + le(UInt16(13)) + [type, 0x0c, typeFlags] + le(UInt16(0)) + le(min) + le(max)
            + le(UInt16(0)) + le(max &- min &+ 1)
    }
}
