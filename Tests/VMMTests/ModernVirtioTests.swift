// The devices on virtio-mmio: the transport's registers as the virtio 1.x spec (§4.2.2) defines them,
// against a device that records what it is given; virtio-fs's vhost-user front end against Debian's
// real virtiofsd, with FUSE requests placed in a split ring in guest memory and answered by the back
// end through the memfd; virtio-net against the kernel through a real tap; and all of them under
// random and hostile input.

import Foundation
import Testing
import CLinux
import Support
@testable import VMM
#if canImport(Glibc)
import Glibc
#endif

/// A device that only records what the transport hands it.
final class RecordingDevice: ModernVirtioDevice, @unchecked Sendable {
    let deviceType: UInt32 = 26
    let features: UInt64 = 1 << 28
    let queueMaxSizes: [UInt16] = [256, 64]
    let configSize = 8
    var config: [UInt8] = [1, 2, 3, 4, 5, 6, 7, 8]
    var activations: [(UInt64, [QueueSetup])] = []
    var notifies: [Int] = []
    var resets = 0
    let interruptsOutOfBand: Bool
    init(outOfBand: Bool = false) { interruptsOutOfBand = outOfBand }
    func readConfig(_ offset: Int) -> UInt8 { config[offset] }
    func writeConfig(_ offset: Int, _ value: UInt8) { config[offset] = value }
    func plugged(base: UInt64, gsi: UInt32, vm: VM) throws {}
    func activate(features: UInt64, queues: [QueueSetup], memory: GuestMemory) throws { activations.append((features, queues)) }
    func notify(_ queue: Int) { notifies.append(queue) }
    func reset() { resets += 1 }
}

@Suite struct VirtioMMIOTests {
    static func transport(
        _ d: ModernVirtioDevice, memory: GuestMemory, faults: Counter = Counter(), pulses: Counter = Counter()
    ) -> VirtioMMIOTransport {
        VirtioMMIOTransport(d, memory: memory, base: Layout.virtioMMIO, gsi: 16, pulse: { pulses.add() }, fault: { _ in faults.add() })
    }

    /// The driver's side of §3.1.1 for queue `q` of `size` at `at` (descriptors, then the driver and
    /// device areas 4 KiB apart).
    static func setUpQueue(_ t: VirtioMMIOTransport, _ q: Int, size: UInt32, at: UInt64) {
        t.write(offset: 0x30, size: 4, value: UInt64(q))
        t.write(offset: 0x38, size: 4, value: UInt64(size))
        for (reg, addr) in [(0x80, at), (0x90, at + 0x4000), (0xa0, at + 0x8000)] {
            t.write(offset: UInt64(reg), size: 4, value: addr & 0xffff_ffff)
            t.write(offset: UInt64(reg + 4), size: 4, value: addr >> 32)
        }
        t.write(offset: 0x44, size: 4, value: 1)
    }

    static func negotiate(_ t: VirtioMMIOTransport, features: UInt64) -> Bool {
        t.write(offset: 0x70, size: 4, value: 1 | 2)
        for sel in 0..<2 {
            t.write(offset: 0x24, size: 4, value: UInt64(sel))
            t.write(offset: 0x20, size: 4, value: (features >> (32 * UInt64(sel))) & 0xffff_ffff)
        }
        t.write(offset: 0x70, size: 4, value: 1 | 2 | 8)
        return t.read(offset: 0x70, size: 4) & 8 != 0
    }

    @Test func theRegistersIdentifyTheDeviceAndOfferVersionOne() throws {
        let m = try GuestMemory(size: 4 << 20, hugetlb: false)
        let t = Self.transport(RecordingDevice(), memory: m)
        #expect(t.read(offset: 0, size: 4) == 0x7472_6976)  // "virt"
        #expect(t.read(offset: 4, size: 4) == 2)
        #expect(t.read(offset: 8, size: 4) == 26)
        t.write(offset: 0x14, size: 4, value: 0)
        #expect(t.read(offset: 0x10, size: 4) == 1 << 28)
        t.write(offset: 0x14, size: 4, value: 1)
        #expect(t.read(offset: 0x10, size: 4) == 1, "VIRTIO_F_VERSION_1 is bit 32")
        t.write(offset: 0x14, size: 4, value: 2)
        #expect(t.read(offset: 0x10, size: 4) == 0)
        // Queue sizes, absent queues, the configuration at any width, no shared memory regions.
        t.write(offset: 0x30, size: 4, value: 1)
        #expect(t.read(offset: 0x34, size: 4) == 64)
        t.write(offset: 0x30, size: 4, value: 2)
        #expect(t.read(offset: 0x34, size: 4) == 0)
        #expect(
            t.read(offset: 0x100, size: 1) == 1 && t.read(offset: 0x102, size: 2) == 0x0403 && t.read(offset: 0x100, size: 8) == 0x0807_0605_0403_0201
        )
        #expect(t.read(offset: 0x106, size: 4) == 0, "a read past the configuration reads zero")
        #expect(t.read(offset: 0xb0, size: 4) == 0xffff_ffff && t.read(offset: 0xb4, size: 4) == 0xffff_ffff)
        #expect(t.read(offset: 0, size: 2) == 0, "registers are 32 bits wide; other widths read zero")
    }

    @Test func featuresOKHoldsOnlyForOfferedFeaturesWithVersionOne() throws {
        let m = try GuestMemory(size: 4 << 20, hugetlb: false)
        let t = Self.transport(RecordingDevice(), memory: m)
        #expect(!Self.negotiate(t, features: 1 << 28), "without VERSION_1")
        t.write(offset: 0x70, size: 4, value: 0)
        #expect(!Self.negotiate(t, features: 1 << 32 | 1 << 29), "a feature not offered")
        t.write(offset: 0x70, size: 4, value: 0)
        #expect(Self.negotiate(t, features: 1 << 32 | 1 << 28))
        #expect(t.driverFeatures == 1 << 32 | 1 << 28)
        // Once FEATURES_OK is set the features are fixed.
        t.write(offset: 0x24, size: 4, value: 0)
        t.write(offset: 0x20, size: 4, value: 0)
        #expect(t.driverFeatures == 1 << 32 | 1 << 28)
    }

    @Test func driverOKHandsTheDeviceEveryQueueAsTheDriverPlacedIt() throws {
        let m = try GuestMemory(size: 4 << 20, hugetlb: false)
        let d = RecordingDevice()
        let faults = Counter()
        let t = Self.transport(d, memory: m, faults: faults)
        #expect(Self.negotiate(t, features: 1 << 32))
        Self.setUpQueue(t, 0, size: 256, at: 0x10000)
        Self.setUpQueue(t, 1, size: 64, at: 0x20000)
        // A ready queue's registers are fixed.
        t.write(offset: 0x30, size: 4, value: 0)
        t.write(offset: 0x38, size: 4, value: 8)
        t.write(offset: 0x70, size: 4, value: 1 | 2 | 8 | 4)
        #expect(faults.n == 0)
        #expect(d.activations.count == 1)
        let qs = d.activations.first?.1 ?? []
        #expect(qs.count == 2 && qs[0].size == 256 && qs[0].descriptors == 0x10000 && qs[0].driverArea == 0x14000 && qs[0].deviceArea == 0x18000)
        #expect(qs[1].size == 64 && qs[1].descriptors == 0x20000 && qs[1].ready)
        // Notifies reach the device for ready queues only; the status register then shows the
        // device's interrupt until acknowledged.
        t.write(offset: 0x50, size: 4, value: 1)
        t.write(offset: 0x50, size: 4, value: 7)
        #expect(d.notifies == [1])
        t.interrupt()
        #expect(t.read(offset: 0x60, size: 4) == 1)
        t.write(offset: 0x64, size: 4, value: 1)
        #expect(t.read(offset: 0x60, size: 4) == 0)
        // A reset stops the device and clears the transport.
        t.write(offset: 0x70, size: 4, value: 0)
        #expect(d.resets == 1 && t.read(offset: 0x70, size: 4) == 0 && !t.active)
        t.write(offset: 0x30, size: 4, value: 0)
        #expect(t.read(offset: 0x44, size: 4) == 0)
    }

    @Test func ringsOutsideGuestMemoryOrOfBadSizeAreRefused() throws {
        let m = try GuestMemory(size: 4 << 20, hugetlb: false)
        for (size, at) in [(UInt32(256), UInt64((4 << 20) - 0x8000)), (100, 0x10000), (512, 0x10000), (256, UInt64.max - 0x10000)] {
            let d = RecordingDevice()
            let faults = Counter()
            let t = Self.transport(d, memory: m, faults: faults)
            #expect(Self.negotiate(t, features: 1 << 32))
            Self.setUpQueue(t, 0, size: size, at: at)
            t.write(offset: 0x70, size: 4, value: 1 | 2 | 8 | 4)
            #expect(faults.n == 1 && d.activations.isEmpty, "size \(size) at \(at)")
            #expect(t.read(offset: 0x70, size: 4) & 0x40 != 0, "DEVICE_NEEDS_RESET")
        }
    }

    @Test func aDeviceThatInterruptsOutOfBandAlwaysShowsAUsedBufferOnceActive() throws {
        let m = try GuestMemory(size: 4 << 20, hugetlb: false)
        let t = Self.transport(RecordingDevice(outOfBand: true), memory: m)
        #expect(t.read(offset: 0x60, size: 4) == 0)
        #expect(Self.negotiate(t, features: 1 << 32))
        Self.setUpQueue(t, 0, size: 256, at: 0x10000)
        t.write(offset: 0x70, size: 4, value: 15)
        #expect(t.read(offset: 0x60, size: 4) == 1)
        t.write(offset: 0x64, size: 4, value: 1)
        #expect(t.read(offset: 0x60, size: 4) == 1)
    }

    /// 200k random register accesses: never a crash, a read never wider than asked, and the device
    /// activated only with rings inside guest memory.
    @Test func theTransportTakesAnySequenceOfAccesses() throws {
        let m = try GuestMemory(size: 4 << 20, hugetlb: false)
        let d = RecordingDevice()
        let t = Self.transport(d, memory: m)
        var rng = SeededRandom(seed: 26)
        for round in 0..<200_000 {
            if round % 1000 == 0 { _ = Self.negotiate(t, features: 1 << 32 | 1 << 28) }
            let off = Bool.random(using: &rng) ? UInt64.random(in: 0..<0x110, using: &rng) & ~3 : UInt64.random(in: 0..<0x200, using: &rng)
            let size = [1, 2, 4, 8][Int.random(in: 0..<4, using: &rng)]
            if Bool.random(using: &rng) {
                let v = t.read(offset: off, size: size)
                if size < 8 { #expect(v >> (8 * UInt64(size)) == 0) }
            } else {
                let v =
                    Int.random(in: 0..<4, using: &rng) == 0 ? UInt64.random(in: 0...15, using: &rng) : UInt64.random(in: 0...UInt64.max, using: &rng)
                t.write(offset: off, size: size, value: v)
            }
        }
        for (_, qs) in d.activations {
            for q in qs where q.ready {
                let b = QueueSetup.bytes(size: q.size)
                #expect((try? m.slice(q.descriptors, b.descriptors)) != nil && (try? m.slice(q.deviceArea, b.device)) != nil)
            }
        }
    }
}

@Suite struct VhostUserTests {
    @Test func replyHeadersAreCheckedBeforeTheirPayloadIsRead() {
        func header(_ r: UInt32, _ f: UInt32, _ n: UInt32) -> [UInt8] { le(r) + le(f) + le(n) }
        #expect((try? VhostUserMessage.replyLength(header(1, 5, 8), to: 1)) == 8)
        #expect(throws: VMMError.self) { try VhostUserMessage.replyLength(header(1, 1, 8), to: 1) }  // not a reply
        #expect(throws: VMMError.self) { try VhostUserMessage.replyLength(header(2, 5, 8), to: 1) }  // another request's
        #expect(throws: VMMError.self) { try VhostUserMessage.replyLength(header(1, 6, 8), to: 1) }  // version 2
        #expect(throws: VMMError.self) { try VhostUserMessage.replyLength(header(1, 5, 1 << 20), to: 1) }
        #expect(throws: VMMError.self) { try VhostUserMessage.replyLength([1, 2, 3], to: 1) }
        var rng = SeededRandom(seed: 5)
        for _ in 0..<50_000 {
            let h = (0..<12).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if let n = try? VhostUserMessage.replyLength(h, to: VhostUserMessage.u32(h, 0)) { #expect(n <= VhostUserMessage.maxPayload) }
        }
    }

    /// A back end that answers with garbage, half a reply, or nothing at all: the front end gives up
    /// with a reason, within its timeout, and never crashes.
    @Test func aHostileBackEndIsRefused() throws {
        var rng = SeededRandom(seed: 9)
        for round in 0..<40 {
            let path = NSTemporaryDirectory() + "vu-hostile-\(getpid())-\(round).sock"
            let listener = try Self.listen(path)
            defer { close(listener); unlink(path) }
            let reply: [UInt8]
            switch round % 4 {
            case 0: reply = (0..<Int.random(in: 1...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            case 1: reply = le(UInt32(1)) + le(UInt32(5)) + le(UInt32(8)) + [1, 2]  // cut short, then closed
            case 2: reply = le(UInt32(1)) + le(UInt32(5)) + le(UInt32(4)) + [0, 0, 0, 0]  // features of 4 bytes
            default: reply = le(UInt32(3)) + le(UInt32(5)) + le(UInt32(8)) + le(UInt64(0))  // answers another request
            }
            let server = Thread {
                let c = accept(listener, nil, nil)
                guard c >= 0 else { return }
                var buf = [UInt8](repeating: 0, count: 64)
                _ = recv(c, &buf, 64, 0)
                _ = reply.withUnsafeBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                close(c)
            }
            server.start()
            #expect(throws: VMMError.self) { _ = try VhostUserFrontend(path: path) }
        }
    }

    static func listen(_ path: String) throws -> Int32 {
        unlink(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard let addr = HostFDs.unixAddress(path), HostFDs.with(addr, { bind(fd, $0, $1) }) == 0, Glibc.listen(fd, 1) == 0 else {
            throw VMMError.host("cannot listen on \(path)")
        }
        return fd
    }
}

/// Debian's virtiofsd behind our front end, no guest: the test plays the guest's driver, places FUSE
/// requests in a split ring in guest memory, kicks, and reads the answers the back end wrote there.
@Suite(.serialized) struct VirtioFSBackendTests {
    static let virtiofsd = "/usr/lib/qemu/virtiofsd"
    static let runnable = getuid() == 0 && access(virtiofsd, X_OK) == 0

    /// A driver for one queue of the device: descriptors at `ring`, driver area +0x4000, device area
    /// +0x8000, buffers from `ring` + 0x10000.
    struct Driver {
        let m: GuestMemory
        let ring: UInt64
        let size: UInt16 = 16
        var next: UInt16 = 0

        var setup: QueueSetup {
            var q = QueueSetup()
            q.size = size; q.descriptors = ring; q.driverArea = ring + 0x4000; q.deviceArea = ring + 0x8000; q.ready = true
            return q
        }

        /// Offers a request (device-readable) and room for its answer (device-writable).
        mutating func offer(_ request: [UInt8], answerRoom: Int) throws {
            let buf = ring + 0x10000 + UInt64(next) * 0x2000
            try m.write(request, at: buf)
            let d0 = ring + 16 * UInt64(2 * next % size), d1 = ring + 16 * UInt64((2 * next + 1) % size)
            try m.write(buf, at: d0); try m.write(UInt32(request.count), at: d0 + 8); try m.write(UInt16(1), at: d0 + 12)
            try m.write(UInt16((2 * next + 1) % size), at: d0 + 14)
            try m.write(buf + 0x1000, at: d1); try m.write(UInt32(answerRoom), at: d1 + 8); try m.write(UInt16(2), at: d1 + 12)
            try m.write(UInt16(2 * next % size), at: ring + 0x4000 + 4 + 2 * UInt64(next % size))
            next += 1
            try m.write(next, at: ring + 0x4000 + 2)
        }

        func usedIndex() throws -> UInt16 { try m.slice(ring + 0x8000 + 2, 2).loadUnaligned(as: UInt16.self) }
        /// The answer to request `i`: its length in the used ring, then the bytes.
        func answer(_ i: Int) throws -> [UInt8] {
            let len = try m.slice(ring + 0x8000 + 4 + 8 * UInt64(i % Int(size)) + 4, 4).loadUnaligned(as: UInt32.self)
            return Array(try m.slice(ring + 0x10000 + UInt64(i) * 0x2000 + 0x1000, Int(min(len, 0x1000))))
        }
    }

    static func fuse(_ opcode: UInt32, unique: UInt64, node: UInt64, _ body: [UInt8]) -> [UInt8] {
        le(UInt32(40 + body.count)) + le(opcode) + le(unique) + le(node) + le(UInt32(0)) + le(UInt32(0)) + le(UInt32(getpid())) + le(UInt32(0)) + body
    }

    /// Waits for the back end's calls on `fd` (the irqfd's eventfd in a VM) until the used index is
    /// `used` (a call may come early: libvhost-user signals once when the call descriptor is set).
    static func waitForCall(_ fd: Int32, driver: Driver, used: UInt16) -> Bool {
        for _ in 0..<10 {
            if (try? driver.usedIndex()) == used { return true }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 10_000) == 1 else { return false }
            var v: UInt64 = 0
            _ = read(fd, &v, 8)
        }
        return (try? driver.usedIndex()) == used
    }

    @Test(.enabled(if: runnable, "SKIPPED: needs root and Debian's virtiofsd (qemu-system-common)"))
    func virtiofsdAnswersFUSERequestsThroughTheSharedRing() throws {
        let dir = NSTemporaryDirectory() + "vfs-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Data("hello".utf8).write(to: URL(fileURLWithPath: dir + "/hello.txt"))
        let sock = dir + ".sock"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.virtiofsd)
        p.arguments = ["-f", "--socket-path=\(sock)", "-o", "source=\(dir)", "-o", "sandbox=chroot", "-o", "log_level=warn"]
        try p.run()
        defer { p.terminate(); p.waitUntilExit(); try? FileManager.default.removeItem(atPath: dir); unlink(sock) }
        for _ in 0..<500 where access(sock, F_OK) != 0 { usleep(10_000) }

        let m = try GuestMemory(size: 16 << 20, hugetlb: false, shared: true)
        let fs = try VirtioFS(socket: sock, tag: "share0")
        #expect(fs.features & ~VirtioFS.allowed == 0)
        var driver = Driver(m: m, ring: 0x100000)
        // Without EVENT_IDX: this driver does not publish the used-event index, so it wants a call
        // for every used buffer.
        try fs.activate(features: VirtioMMIOTransport.versionOne, queues: [QueueSetup(), driver.setup], memory: m)
        // FUSE_INIT (26), protocol 7.31; then LOOKUP (1) of hello.txt under the root (node 1).
        try driver.offer(Self.fuse(26, unique: 1, node: 0, le(UInt32(7)) + le(UInt32(31)) + le(UInt32(0)) + le(UInt32(0))), answerRoom: 0x1000)
        fs.notify(1)
        #expect(Self.waitForCall(fs.call[1], driver: driver, used: 1), "virtiofsd used the buffers and signalled the call eventfd")
        let initReply = try driver.answer(0)
        #expect(initReply.count >= 16 + 8)
        #expect(VhostUserMessage.u32(initReply, 4) == 0, "FUSE_INIT succeeded (error 0)")
        #expect(VhostUserMessage.u64(initReply, 8) == 1, "the answer carries the request's unique id")
        #expect(VhostUserMessage.u32(initReply, 16) == 7, "FUSE major version 7")
        try driver.offer(Self.fuse(1, unique: 2, node: 1, Array("hello.txt".utf8) + [0]), answerRoom: 0x1000)
        fs.notify(1)
        #expect(Self.waitForCall(fs.call[1], driver: driver, used: 2))
        let lookup = try driver.answer(1)
        #expect(VhostUserMessage.u32(lookup, 4) == 0, "the lookup found the file")
        // fuse_entry_out: nodeid, generation, entry and attr validity (8+4+4 bytes), then fuse_attr:
        // ino, size.
        #expect(lookup.count >= 16 + 48 && VhostUserMessage.u64(lookup, 16 + 40 + 8) == 5, "the file's size is 5")
        // A reset stops the rings (GET_VRING_BASE), and the device starts again.
        try fs.backend.stop()
        try fs.activate(features: VirtioMMIOTransport.versionOne, queues: [QueueSetup(), driver.setup], memory: m)
    }

    @Test(.enabled(if: runnable, "SKIPPED: needs root and Debian's virtiofsd (qemu-system-common)"))
    func withoutSharedMemoryOrABackEndTheDeviceSaysWhy() throws {
        #expect { _ = try VirtioFS(socket: "/nonexistent/fs.sock", tag: "x") } throws: { "\($0)".contains("cannot connect") }
        #expect { _ = try VirtioFS(socket: "/x", tag: String(repeating: "t", count: 37)) } throws: { "\($0)".contains("tag") }
    }
}

/// virtio-net on a real tap: the test is the guest's driver (through the MMIO bus, as a vCPU would
/// reach it), the host's kernel is the far end. And the device under random rings and random frames.
@Suite(.serialized) struct VirtioNetTests {
    static let mac: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]
    static let base = Layout.virtioMMIO

    /// A driver for the two queues: rx at 0x100000, tx at 0x200000 (parts 0x4000 apart), buffers after.
    static func start(_ bus: MMIOBus, memory m: GuestMemory) throws {
        func w(_ off: UInt64, _ v: UInt64) { bus.write(base + off, size: 4, value: v) }
        w(0x70, 3)
        w(0x24, 0); w(0x20, 1 << 5 | 1 << 3); w(0x24, 1); w(0x20, 1)
        w(0x70, 11)
        for (q, at) in [(0, UInt64(0x100000)), (1, UInt64(0x200000))] {
            w(0x30, UInt64(q)); w(0x38, 256)
            w(0x80, at); w(0x90, at + 0x4000); w(0xa0, at + 0x8000)
            w(0x44, 1)
        }
        w(0x70, 15)
    }

    /// Offers descriptor `i` of queue `at` (writable for rx, the frame for tx) and notifies.
    static func offer(_ bus: MMIOBus, _ m: GuestMemory, queue: Int, at: UInt64, index i: UInt16, buffer: UInt64, length: Int, writable: Bool) throws {
        let d = at + 16 * UInt64(i)
        try m.write(buffer, at: d); try m.write(UInt32(length), at: d + 8); try m.write(UInt16(writable ? 2 : 0), at: d + 12)
        try m.write(i, at: at + 0x4000 + 4 + 2 * UInt64(i % 256))
        try m.write(i &+ 1, at: at + 0x4000 + 2)
        bus.write(base + 0x50, size: 4, value: UInt64(queue))
    }

    static func used(_ m: GuestMemory, at: UInt64) -> UInt16 { (try? m.slice(at + 0x8000 + 2, 2).loadUnaligned(as: UInt16.self)) ?? 0 }

    @Test(.enabled(if: getuid() == 0, "SKIPPED: making a tap needs root"))
    func anARPRequestLeavesThroughTheTapAndItsAnswerArrivesInAReceiveBuffer() throws {
        let name = "tvnet\(getpid() % 100_000)"
        let tap = clinux_open_tap(name)
        try #require(tap >= 0, "cannot make tap \(name)")
        #expect(clinux_tap_prepare(tap, 12) == 0)
        // Our own address on a tap of our own (TEST-NET-2); no IPv6 chatter in the receive ring.
        for c in [
            "sysctl -qw net.ipv6.conf.\(name).disable_ipv6=1", "ip addr add 198.51.100.1/30 dev \(name)", "ip link set \(name) up",
        ] {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = ["-c", c]
            try p.run(); p.waitUntilExit()
        }
        let m = try GuestMemory(size: 4 << 20, hugetlb: false)
        let net = try VirtioNet(tap: tap, mac: Self.mac, mtu: 1500)
        let bus = MMIOBus()
        let pulses = Counter(), faults = Counter()
        let t = VirtioMMIOTransport(net, memory: m, base: Self.base, gsi: 16, pulse: { pulses.add() }, fault: { _ in faults.add() })
        try bus.attach(t, base: Self.base, count: VirtioMMIOTransport.windowSize)
        try net.startIO(transport: t, bus: bus, cpu: nil)
        defer { net.stopIO() }
        #expect(bus.read(Self.base + 0x100, size: 4) == 0x1200_5452 && bus.read(Self.base + 0x10a, size: 2) == 1500, "MAC and MTU")
        try Self.start(bus, memory: m)
        #expect(t.active && faults.n == 0)
        for i in 0..<8 {
            try Self.offer(bus, m, queue: 0, at: 0x100000, index: UInt16(i), buffer: 0x300000 + UInt64(i) * 0x1000, length: 2048, writable: true)
        }
        // Who has 198.51.100.1? Tell 198.51.100.2 (us).
        let arp: [UInt8] =
            [UInt8](repeating: 0, count: 12) + [0xff, 0xff, 0xff, 0xff, 0xff, 0xff] + Self.mac + [0x08, 0x06]
            + [0, 1, 0x08, 0, 6, 4, 0, 1] + Self.mac + [198, 51, 100, 2] + [0, 0, 0, 0, 0, 0] + [198, 51, 100, 1]
        try m.write(arp, at: 0x380000)
        try Self.offer(bus, m, queue: 1, at: 0x200000, index: 0, buffer: 0x380000, length: arp.count, writable: false)
        #expect(Self.used(m, at: 0x200000) == 1, "the frame was sent and its buffer returned")
        var reply: [UInt8]?
        for _ in 0..<500 where reply == nil {
            let n = Int(Self.used(m, at: 0x100000))
            for k in 0..<n {
                let id = Int(try m.slice(0x108000 + 4 + 8 * UInt64(k), 4).loadUnaligned(as: UInt32.self))
                let len = Int(try m.slice(0x108000 + 8 + 8 * UInt64(k), 4).loadUnaligned(as: UInt32.self))
                let f = Array(try m.slice(0x300000 + UInt64(id) * 0x1000, min(len, 2048)))
                if f.count >= 12 + 42, f[24] == 0x08, f[25] == 0x06, f[33] == 2 { reply = f }
            }
            usleep(10_000)
        }
        let r = try #require(reply, "the kernel's ARP reply reached a receive buffer")
        #expect(r[10] == 1 && r[11] == 0, "num_buffers is 1")
        #expect(Array(r[12..<18]) == Self.mac, "addressed to our MAC")
        #expect(Array(r[40..<44]) == [198, 51, 100, 1], "from the tap's address")
        #expect(pulses.n >= 2 && faults.n == 0)
        #expect(net.sent == 1 && net.received >= 1)
    }

    /// Random rings and register traffic from the driver side while random frames arrive from the far
    /// end (a datagram socket stands in for the tap): faults are reported, nothing crashes.
    @Test func theDeviceSurvivesRandomRingsAndFrames() throws {
        var pair: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0, &pair) == 0)
        defer { close(pair[1]) }
        _ = fcntl(pair[0], F_SETFL, fcntl(pair[0], F_GETFL) | O_NONBLOCK)
        let m = try GuestMemory(size: 4 << 20, hugetlb: false)
        let net = try VirtioNet(tap: pair[0], mac: Self.mac, mtu: 1500)
        let bus = MMIOBus()
        let faults = Counter()
        let t = VirtioMMIOTransport(net, memory: m, base: Self.base, gsi: 16, pulse: {}, fault: { _ in faults.add() })
        try bus.attach(t, base: Self.base, count: VirtioMMIOTransport.windowSize)
        try net.startIO(transport: t, bus: bus, cpu: nil)
        defer { net.stopIO() }
        var rng = SeededRandom(seed: 44)
        for round in 0..<3000 {
            if round % 100 == 0 {
                bus.write(Self.base + 0x70, size: 4, value: 0)
                try Self.start(bus, memory: m)
            }
            let q = Int.random(in: 0..<2, using: &rng)
            let at = q == 0 ? UInt64(0x100000) : 0x200000
            let i = UInt16.random(in: 0..<256, using: &rng)
            let d = at + 16 * UInt64(i)
            let addr =
                Int.random(in: 0..<8, using: &rng) == 0
                ? UInt64.random(in: 0...UInt64.max, using: &rng) : UInt64.random(in: 0x300000..<0x3f0000, using: &rng)
            try m.write(addr, at: d)
            try m.write(UInt32.random(in: 0...(Bool.random(using: &rng) ? 3000 : UInt32.max), using: &rng), at: d + 8)
            try m.write(UInt16.random(in: 0...7, using: &rng), at: d + 12)
            try m.write(UInt16.random(in: 0..<258, using: &rng), at: d + 14)
            try m.write(UInt16.random(in: 0..<258, using: &rng), at: at + 0x4000 + 4 + 2 * UInt64(i))
            try m.write(UInt16.random(in: 0...UInt16.max, using: &rng), at: at + 0x4000 + 2)
            bus.write(Self.base + 0x50, size: 4, value: UInt64(q))
            if round % 3 == 0 {
                let frame = (0..<Int.random(in: 0..<1600, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                _ = frame.withUnsafeBytes { send(pair[1], $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            }
            if round % 7 == 0 {
                bus.write(
                    Self.base + UInt64.random(in: 0..<0x110, using: &rng), size: [1, 2, 4, 8][Int.random(in: 0..<4, using: &rng)],
                    value: UInt64.random(in: 0...UInt64.max, using: &rng))
            }
        }
        #expect(faults.n > 0, "random rings were refused at least once")
    }
}
