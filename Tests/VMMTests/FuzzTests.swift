// Guest-facing parsers under random input: kernel images (ELF and bzImage headers mutated at random)
// either load inside guest memory or are refused with an error, and the device models take any
// sequence of port accesses. The host process must never crash or write outside guest RAM.

import Testing
@testable import VMM

struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

@Suite struct FuzzTests {
    /// A valid one-segment ELF64 for x86-64 loading at 16 MiB.
    static func elf() -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 0x200)
        func put<T: FixedWidthInteger>(_ v: T, _ o: Int) { withUnsafeBytes(of: v.littleEndian) { for (i, x) in $0.enumerated() { b[o + i] = x } } }
        b[0] = 0x7f; b[1] = 0x45; b[2] = 0x4c; b[3] = 0x46; b[4] = 2; b[5] = 1; b[6] = 1
        put(UInt16(2), 16); put(UInt16(0x3e), 18); put(UInt32(1), 20); put(UInt64(0x100_0000), 24); put(UInt64(64), 32)
        put(UInt16(64), 52); put(UInt16(56), 54); put(UInt16(1), 56)
        put(UInt32(1), 64); put(UInt64(0x100), 72); put(UInt64(0x100_0000), 80); put(UInt64(0x100_0000), 88)
        put(UInt64(0x100), 96); put(UInt64(0x1000), 104)
        return b
    }

    static func bzImage() -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 0x1400)
        func put<T: FixedWidthInteger>(_ v: T, _ o: Int) { withUnsafeBytes(of: v.littleEndian) { for (i, x) in $0.enumerated() { b[o + i] = x } } }
        b[0x1f1] = 4; put(UInt16(0xaa55), 0x1fe); b[0x201] = 0x60
        b[0x202] = 0x48; b[0x203] = 0x64; b[0x204] = 0x72; b[0x205] = 0x53
        put(UInt16(0x020f), 0x206); put(UInt16(1), 0x236); put(UInt64(0x100_0000), 0x258); put(UInt32(0x2000), 0x260)
        return b
    }

    @Test func mutatedKernelImagesLoadInBoundsOrAreRefused() throws {
        let memory = try GuestMemory(size: 32 << 20, hugetlb: false)
        var rng = SplitMix(state: 1)
        #expect(throws: Never.self) { try KernelLoader.load(Self.elf(), into: memory) }
        #expect(throws: Never.self) { try KernelLoader.load(Self.bzImage(), into: memory) }
        var loaded = 0, refused = 0
        for round in 0..<4000 {
            var b = round % 2 == 0 ? Self.elf() : Self.bzImage()
            for _ in 0..<Int.random(in: 1...8, using: &rng) {
                let at = round % 2 == 0 ? Int.random(in: 0..<120, using: &rng) : Int.random(in: 0x1f0..<0x270, using: &rng)
                b[at] = UInt8.random(in: 0...255, using: &rng)
            }
            if Bool.random(using: &rng) { b = Array(b.prefix(Int.random(in: 0...b.count, using: &rng))) }
            do {
                let k = try KernelLoader.load(b, into: memory)
                #expect(k.end <= memory.size && k.entry < k.end)
                loaded += 1
            } catch { refused += 1 }
        }
        #expect(loaded > 0 && refused > 0)
    }

    @Test func devicesTakeAnySequenceOfPortAccesses() throws {
        var rng = SplitMix(state: 7)
        let bus = PortBus()
        let resets = Counter()
        try bus.attach(Serial(output: { _ in }, interrupt: {}), base: 0x3f8, count: 8)
        try bus.attach(CMOS(), base: 0x70, count: 2)
        try bus.attach(I8042(reset: { resets.add() }), base: 0x60, count: 5)
        try bus.attach(ExitPort(exit: { _ in }), base: ExitPort.port, count: 4)
        for _ in 0..<200_000 {
            let port = [UInt16(0x3f8), 0x70, 0x60, ExitPort.port, 0x1000][Int.random(in: 0..<5, using: &rng)] &+ UInt16.random(in: 0..<9, using: &rng)
            let size = [1, 2, 4][Int.random(in: 0..<3, using: &rng)]
            if Bool.random(using: &rng) { _ = bus.read(port, size: size) } else { bus.write(port, size: size, value: UInt32.random(in: 0...UInt32.max, using: &rng)) }
        }
        #expect(throws: VMMError.self) { try bus.attach(Sink(), base: 0x3f9, count: 1) }   // overlapping claims are refused
    }

    @Test func guestAddressesOutsideRAMAreRefused() throws {
        let m = try GuestMemory(size: 4 << 20, hugetlb: false)
        #expect(throws: VMMError.self) { try m.slice(4 << 20, 1) }
        #expect(throws: VMMError.self) { try m.slice(UInt64.max - 2, 8) }
        #expect(throws: VMMError.self) { try m.slice(0, -1) }
        #expect(throws: Never.self) { try m.slice((4 << 20) - 8, 8) }
    }
}

final class Counter: @unchecked Sendable {
    var n = 0
    func add() { n += 1 }
}
