// Guest-facing parsers under random input: kernel images (ELF and bzImage headers mutated at random)
// either load inside guest memory or are refused with an error, and the device models take any
// sequence of port accesses. The host process must never crash or write outside guest RAM.

import Foundation
import Testing
import Support
@testable import VMM

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
        var rng = SeededRandom(seed: 1)
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

    /// 200k random accesses over the legacy devices and unclaimed ports. Beyond not crashing: a read
    /// never returns more bits than its width, an unclaimed port reads as all ones, the i8042 resets
    /// exactly on 0xfe written to its command port, and the exit port fires exactly on 32-bit writes to it.
    @Test func devicesTakeAnySequenceOfPortAccesses() throws {
        var rng = SeededRandom(seed: 7)
        let bus = PortBus()
        let resets = Counter(), exits = Counter()
        try bus.attach(Serial(output: { _ in }, interrupt: {}), base: 0x3f8, count: 8)
        try bus.attach(CMOS(), base: 0x70, count: 2)
        try bus.attach(I8042(reset: { resets.add() }), base: 0x60, count: 5)
        try bus.attach(ExitPort(exit: { _ in exits.add() }), base: ExitPort.port, count: 4)
        var expectedResets = 0, expectedExits = 0, reads = 0, unclaimedReads = 0
        for _ in 0..<200_000 {
            let port =
                [UInt16(0x3f8), 0x70, 0x60, ExitPort.port, 0x1000][Int.random(in: 0..<5, using: &rng)] &+ UInt16.random(in: 0..<9, using: &rng)
            let size = [1, 2, 4][Int.random(in: 0..<3, using: &rng)]
            let claimed =
                (0x3f8..<0x400).contains(port) || (0x70..<0x72).contains(port) || (0x60..<0x65).contains(port)
                || (ExitPort.port..<ExitPort.port + 4).contains(port)
            if Bool.random(using: &rng) {
                let v = bus.read(port, size: size)
                reads += 1
                if size < 4 { #expect(v >> (8 * UInt32(size)) == 0, "a \(size)-byte read of \(port) gave \(v)") }
                if !claimed { unclaimedReads += 1; #expect(v == (size == 4 ? 0xffff_ffff : (1 << (8 * UInt32(size))) - 1)) }
            } else {
                let value = UInt32.random(in: 0...UInt32.max, using: &rng)
                bus.write(port, size: size, value: value)
                if port == 0x64 && value & 0xff == 0xfe { expectedResets += 1 }
                if port == ExitPort.port && size == 4 { expectedExits += 1 }
            }
        }
        #expect(resets.n == expectedResets && expectedResets > 0)
        #expect(exits.n == expectedExits && expectedExits > 0)
        #expect(reads > 50_000 && unclaimedReads > 5_000)
        // Overlapping claims are refused.
        #expect { try bus.attach(Sink(), base: 0x3f9, count: 1) } throws: { if case VMMError.device = $0 { true } else { false } }
    }

    @Test func guestAddressesOutsideRAMAreRefused() throws {
        let m = try GuestMemory(size: 4 << 20, hugetlb: false)
        #expect { try m.slice(4 << 20, 1) } throws: { if case VMMError.outsideGuestMemory = $0 { true } else { false } }
        #expect { try m.slice(UInt64.max - 2, 8) } throws: { if case VMMError.outsideGuestMemory = $0 { true } else { false } }
        #expect { try m.slice(0, -1) } throws: { if case VMMError.outsideGuestMemory = $0 { true } else { false } }
        #expect(throws: Never.self) { try m.slice((4 << 20) - 8, 8) }
    }
}

final class Counter: @unchecked Sendable {
    var n = 0
    func add() { n += 1 }
}

/// Virtqueues and the virtio devices against rings a hostile or broken driver writes: each bad ring is
/// refused with a reason (and stops its device), random rings never crash the VMM or reach outside
/// guest memory.
@Suite struct VirtqueueTests {
    /// Writes descriptor `i` of a ring at page `pfn`.
    static func desc(_ m: GuestMemory, pfn: UInt32, _ i: Int, addr: UInt64, len: UInt32, flags: UInt16, next: UInt16) throws {
        let at = UInt64(pfn) * 4096 + 16 * UInt64(i)
        try m.write(addr, at: at); try m.write(len, at: at + 8); try m.write(flags, at: at + 12); try m.write(next, at: at + 14)
    }
    /// Publishes `heads` in the available ring of a queue of `size`.
    static func offer(_ m: GuestMemory, pfn: UInt32, size: Int, _ heads: [UInt16], idx: UInt16? = nil) throws {
        let avail = UInt64(pfn) * 4096 + 16 * UInt64(size)
        for (k, h) in heads.enumerated() { try m.write(h, at: avail + 4 + 2 * UInt64(k % size)) }
        try m.write(idx ?? UInt16(heads.count), at: avail + 2)
    }

    static func refusal(_ build: (GuestMemory, UInt32) throws -> Void) throws -> String {
        let m = try GuestMemory(size: 4 << 20, hugetlb: false)
        var q = Virtqueue(size: 16)
        try q.setPFN(256, memory: m)
        try build(m, 256)
        do { _ = try q.pop(m); return "" } catch { return "\(error)" }
    }

    @Test func badChainsAreRefusedWithTheirReason() throws {
        typealias D = (addr: UInt64, len: UInt32, flags: UInt16, next: UInt16)
        // (descriptors 0, 1, …; heads offered; the available index, if not their count; the reason)
        let cases: [([D], [UInt16], UInt16?, String)] = [
            ([(4 << 20, 16, 0, 0)], [0], nil, "outside guest memory"),
            ([(0x1000, 16, 1, 1), (0x1000, 16, 1, 0)], [0], nil, "loops"),
            ([(0x1000, 0xffff_ffff, 0, 0)], [0], nil, "describes more than"),
            ([(0x1000, 8 << 20, 0, 0)], [0], nil, "outside guest memory"),
            ([], [16], nil, "outside the table"),
            ([], [0], 40, "40 buffers available in a ring of 16"),
            ([(0x1000, 8, 3, 1), (0x2000, 8, 0, 0)], [0], nil, "device-readable after a device-writable"),
            ([(0x1000, 16, 4, 0)], [0], nil, "indirect"),
            ([(0x1000, 8, 1, 99)], [0], nil, "links to 99"),
        ]
        for (descs, heads, idx, reason) in cases {
            let why = try Self.refusal { m, p in
                for (i, d) in descs.enumerated() { try Self.desc(m, pfn: p, i, addr: d.addr, len: d.len, flags: d.flags, next: d.next) }
                try Self.offer(m, pfn: p, size: 16, heads, idx: idx)
            }
            #expect(why.contains(reason), "expected '\(reason)', got '\(why)'")
        }
        // A ring that does not fit in guest memory cannot be placed.
        let m = try GuestMemory(size: 4 << 20, hugetlb: false)
        var q = Virtqueue(size: 256)
        #expect { try q.setPFN(1023, memory: m) } throws: { if case VMMError.virtqueue = $0 { true } else { false } }
        #expect(!q.ready)
    }

    @Test func aGoodChainIsReadAndReturned() throws {
        let m = try GuestMemory(size: 4 << 20, hugetlb: false)
        var q = Virtqueue(size: 16)
        try q.setPFN(256, memory: m)
        try Self.desc(m, pfn: 256, 3, addr: 0x1000, len: 100, flags: 1, next: 7)
        try Self.desc(m, pfn: 256, 7, addr: 0x3000, len: 50, flags: 2, next: 0)
        try Self.offer(m, pfn: 256, size: 16, [3])
        let c = try #require(try q.pop(m))
        #expect(c.head == 3 && c.readableCount == 100 && c.writableCount == 50)
        #expect(try q.pop(m) == nil)
        try q.push(m, head: 3, written: 50)
        let used = (256 * 4096 + 16 * 16 + 6 + 2 * 16 + 4095) / 4096 * 4096
        let s = try m.slice(UInt64(used), 12)
        #expect(s.loadUnaligned(fromByteOffset: 2, as: UInt16.self) == 1)
        #expect(s.loadUnaligned(fromByteOffset: 4, as: UInt32.self) == 3 && s.loadUnaligned(fromByteOffset: 8, as: UInt32.self) == 50)
    }

    /// Console and block devices behind their transports, driven by random register writes and random
    /// ring contents (addresses biased into and just past guest RAM). Faults are recorded, the devices
    /// reset, and it goes on; nothing crashes.
    @Test func devicesSurviveRandomRingsAndRegisters() throws {
        let m = try GuestMemory(size: 4 << 20, hugetlb: false)
        let disk = NSTemporaryDirectory() + "vq-fuzz-\(getpid()).img"
        FileManager.default.createFile(atPath: disk, contents: Data(count: 64 << 10))
        defer { try? FileManager.default.removeItem(atPath: disk) }
        let faults = Counter()
        let console = VirtioConsole()
        let block = try VirtioBlock(path: disk, writable: true)
        let transports = [console as VirtioDevice, block].map {
            VirtioTransport($0, memory: m, ioBase: 0, irq: 10, line: { _, _ in }, fault: { _ in faults.add() })
        }
        var rng = SeededRandom(seed: 11)
        func addr() -> UInt64 {
            switch Int.random(in: 0..<10, using: &rng) {
            case 0: return UInt64.random(in: 0...UInt64.max, using: &rng)
            case 1: return (4 << 20) - UInt64.random(in: 0..<64, using: &rng)
            default: return UInt64.random(in: 0..<(4 << 20), using: &rng)
            }
        }
        for round in 0..<3000 {
            let t = transports[round % 2]
            if round % 50 == 0 {
                t.ioWrite(offset: 18, size: 1, value: 0)  // reset
                t.ioWrite(offset: 4, size: 4, value: t.device.features)
                for q in 0..<t.queues.count {
                    t.ioWrite(offset: 14, size: 2, value: UInt32(q))
                    t.ioWrite(offset: 8, size: 4, value: UInt32(16 + 8 * q))  // rings from 64 KiB, 32 KiB apart
                }
                t.ioWrite(offset: 18, size: 1, value: 7)
            }
            // Scribble on a ring: descriptors, the available ring, its index.
            for _ in 0..<Int.random(in: 1...6, using: &rng) {
                let q = Int.random(in: 0..<t.queues.count, using: &rng)
                let base = UInt64(16 + 8 * q) * 4096
                let size = UInt64(t.queues[q].size)
                switch Int.random(in: 0..<4, using: &rng) {
                case 0: try m.write(addr(), at: base + 16 * UInt64.random(in: 0..<size, using: &rng))
                case 1:
                    let d = base + 16 * UInt64.random(in: 0..<size, using: &rng)
                    try m.write(UInt32.random(in: 0...(Bool.random(using: &rng) ? 4096 : UInt32.max), using: &rng), at: d + 8)
                    try m.write(UInt16.random(in: 0...7, using: &rng), at: d + 12)
                    try m.write(UInt16.random(in: 0..<UInt16(size + 2), using: &rng), at: d + 14)
                case 2:
                    try m.write(
                        UInt16.random(in: 0..<UInt16(size + 2), using: &rng), at: base + 16 * size + 4 + 2 * UInt64.random(in: 0..<size, using: &rng))
                default:
                    try m.write(
                        UInt16.random(in: 0...UInt16(Bool.random(using: &rng) ? 3 : 0xffff), using: &rng)
                            &+ (try m.slice(base + 16 * size + 2, 2).loadUnaligned(as: UInt16.self)), at: base + 16 * size + 2)
                }
                t.ioWrite(offset: 16, size: 2, value: UInt32(q))  // notify
            }
            // Random register traffic, including the device configuration.
            let off = UInt16.random(in: 0..<64, using: &rng), size = [1, 2, 4][Int.random(in: 0..<3, using: &rng)]
            if Bool.random(using: &rng) {
                _ = t.ioRead(offset: off, size: size)
            } else if off != 18 && off != 8 {
                t.ioWrite(offset: off, size: size, value: UInt32.random(in: 0...UInt32.max, using: &rng))
            }
            // Host traffic on the console.
            if round % 2 == 0 {
                let bytes = [UInt8](repeating: 0x5a, count: Int.random(in: 0..<9000, using: &rng))
                do {
                    try bytes.withUnsafeBytes { _ = try console.deliver($0) }; _ = try console.takeOutbound();
                    try console.hostConnected(Bool.random(using: &rng))
                } catch { t.broke("\(error)") }
            }
        }
        #expect(faults.n > 0, "random rings were refused at least once")
    }

    @Test func pciConfigurationSpaceTakesAnyAccess() throws {
        let bus = PortBus()
        let pci = PCIBus()
        try bus.attach(pci, base: PCIBus.configPorts, count: 8)
        try bus.attach(pci.window, base: PCIBus.ioWindow, count: PCIBus.ioWindowSize)
        let m = try GuestMemory(size: 4 << 20, hugetlb: false)
        let base = try pci.allocateIO(VirtioTransport.ioSize(for: VirtioConsole()))
        let t = VirtioTransport(VirtioConsole(), memory: m, ioBase: base, irq: 10, line: { _, _ in }, fault: { _ in })
        let slot = try pci.plug(t)
        // The host bridge, then the console with its BAR at `base` once I/O decoding is on.
        bus.write(0xcf8, size: 4, value: 0x8000_0000)
        #expect(bus.read(0xcfc, size: 4) == 0x0008_1b36 && bus.read(0xcfe, size: 2) == 0x0008)
        bus.write(0xcf8, size: 4, value: 0x8000_0000 | UInt32(slot) << 11)
        #expect(bus.read(0xcfc, size: 4) == 0x1003_1af4)
        #expect(bus.read(base, size: 4) == 0xffff_ffff, "no decoding before the command register enables it")
        bus.write(0xcf8, size: 4, value: 0x8000_0004 | UInt32(slot) << 11)
        bus.write(0xcfc, size: 2, value: 1)
        #expect(bus.read(base, size: 4) == VirtioConsole().features)
        // Moving the BAR moves the ports.
        bus.write(0xcf8, size: 4, value: 0x8000_0010 | UInt32(slot) << 11)
        bus.write(0xcfc, size: 4, value: 0xffff_ffff)
        let mask = bus.read(0xcfc, size: 4)
        #expect(mask & 1 == 1 && (~mask & 0xfffc) + 4 == VirtioTransport.ioSize(for: VirtioConsole()))
        bus.write(0xcfc, size: 4, value: UInt32(PCIBus.ioWindow) + 0x800)
        #expect(bus.read(PCIBus.ioWindow + 0x800, size: 4) == VirtioConsole().features)
        #expect(bus.read(base, size: 4) == 0xffff_ffff)
        var rng = SeededRandom(seed: 5)
        for _ in 0..<100_000 {
            let port =
                [UInt16(0xcf8), 0xcfc, PCIBus.ioWindow, PCIBus.ioWindow + 0x800][Int.random(in: 0..<4, using: &rng)]
                &+ UInt16.random(in: 0..<8, using: &rng)
            let size = [1, 2, 4][Int.random(in: 0..<3, using: &rng)]
            if Bool.random(using: &rng) {
                _ = bus.read(port, size: size)
            } else {
                bus.write(port, size: size, value: UInt32.random(in: 0...UInt32.max, using: &rng))
            }
        }
    }
}
