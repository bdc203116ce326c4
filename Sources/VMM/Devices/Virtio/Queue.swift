// A split virtqueue in the legacy layout (virtio 0.9.5 / 1.x §2.7 "legacy interface"): the driver
// gives one page frame number; the descriptor table, the available ring and, at the next 4 KiB
// boundary, the used ring follow from it and the queue size. Everything here is read from guest
// memory the guest can change under us, so every index is reduced, every buffer is checked to lie in
// guest RAM before it is touched, a chain is at most `size` descriptors long (a loop cannot spin the
// VMM), and a driver that claims more available buffers than the ring holds is an error, not a crash.

import Synchronization

/// One request: the buffers of a descriptor chain, device-readable ones first.
public struct DescriptorChain: Sendable {
    public let head: UInt16
    public var readable: [(gpa: UInt64, count: Int)] = []
    public var writable: [(gpa: UInt64, count: Int)] = []
    public var readableCount: Int { readable.reduce(0) { $0 + $1.count } }
    public var writableCount: Int { writable.reduce(0) { $0 + $1.count } }
}

public struct Virtqueue: Sendable {
    public static let align: UInt64 = 4096
    static let next: UInt16 = 1, write: UInt16 = 2, indirect: UInt16 = 4
    /// Largest total a chain may describe: far beyond any request, short of overflowing an Int32 length.
    static let maxChainBytes = 1 << 30

    public let size: UInt16
    /// Guest page frame of the ring; 0: not set up.
    public private(set) var pfn: UInt32 = 0
    var lastAvail: UInt16 = 0
    var usedIdx: UInt16 = 0

    public init(size: UInt16) {
        precondition(size > 0 && size & (size - 1) == 0 && size <= 32768)
        self.size = size
    }

    /// Where the parts of the ring are: from the PFN (legacy layout), or as a modern driver placed them.
    public private(set) var ready = false
    private(set) var descTable: UInt64 = 0
    private(set) var availRing: UInt64 = 0
    private(set) var usedRing: UInt64 = 0
    /// Bytes the whole ring occupies from its first page.
    public static func bytes(size: UInt16) -> UInt64 {
        let avail = 16 * UInt64(size) + 6 + 2 * UInt64(size)
        return (avail + align - 1) / align * align + 6 + 8 * UInt64(size)
    }

    /// The driver placed the ring (0: released it). The whole ring must lie in guest memory.
    public mutating func setPFN(_ p: UInt32, memory: GuestMemory) throws {
        reset()
        guard p != 0 else { return }
        _ = try checked(memory, UInt64(p) * Self.align, Int(Self.bytes(size: size)), "the ring")
        pfn = p
        descTable = UInt64(p) * Self.align
        availRing = descTable + 16 * UInt64(size)
        usedRing = (availRing + 6 + 2 * UInt64(size) + Self.align - 1) & ~(Self.align - 1)
        ready = true
    }

    /// A ring a modern transport placed part by part (each part checked to lie in guest memory).
    public mutating func setAddresses(descriptors: UInt64, driver: UInt64, device: UInt64, memory: GuestMemory) throws {
        reset()
        _ = try checked(memory, descriptors, 16 * Int(size), "the descriptor table")
        _ = try checked(memory, driver, 6 + 2 * Int(size), "the driver area")
        _ = try checked(memory, device, 6 + 8 * Int(size), "the device area")
        descTable = descriptors; availRing = driver; usedRing = device
        ready = true
    }

    public mutating func reset() { pfn = 0; ready = false; descTable = 0; availRing = 0; usedRing = 0; lastAvail = 0; usedIdx = 0 }

    func checked(_ m: GuestMemory, _ gpa: UInt64, _ count: Int, _ what: String) throws -> UnsafeMutableRawBufferPointer {
        do { return try m.slice(gpa, count) } catch { throw VMMError.virtqueue("\(what) at \(hex(gpa))+\(count) lies outside guest memory") }
    }

    func load16(_ m: GuestMemory, _ gpa: UInt64) throws -> UInt16 {
        UInt16(littleEndian: try checked(m, gpa, 2, "a ring field").loadUnaligned(as: UInt16.self))
    }

    /// Whether the driver asked for no interrupts (VRING_AVAIL_F_NO_INTERRUPT).
    public func interruptSuppressed(_ m: GuestMemory) -> Bool {
        // A full barrier between publishing used entries and reading the driver's flag (virtio 1.x
        // §2.7.7.2): the driver clears the flag, then reads the used index; without it the flag can
        // be read before the index store is visible, both sides miss each other, and the interrupt
        // is lost (a writer waiting for its buffers sleeps forever).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        guard ready, let f = try? load16(m, availRing) else { return false }
        return f & 1 != 0
    }

    /// The next available chain, or nil when the driver has offered nothing new.
    public mutating func pop(_ m: GuestMemory) throws -> DescriptorChain? {
        guard ready else { return nil }
        let availIdx = try load16(m, availRing + 2)
        let pending = availIdx &- lastAvail
        guard pending != 0 else { return nil }
        guard pending <= size else {
            throw VMMError.virtqueue("the driver made \(pending) buffers available in a ring of \(size)")
        }
        atomicMemoryFence(ordering: .acquiring)  // the ring entry after the index that published it
        let head = try load16(m, availRing + 4 + 2 * UInt64(lastAvail % size))
        lastAvail &+= 1
        return try walk(m, head: head)
    }

    func walk(_ m: GuestMemory, head: UInt16) throws -> DescriptorChain {
        guard head < size else { throw VMMError.virtqueue("descriptor index \(head) is outside the table of \(size)") }
        var chain = DescriptorChain(head: head)
        var i = head
        var total = 0
        for n in 0... {
            guard n < Int(size) else { throw VMMError.virtqueue("the descriptor chain from \(head) loops (longer than the table of \(size))") }
            let d = try checked(m, descTable + 16 * UInt64(i), 16, "descriptor \(i)")
            let addr = UInt64(littleEndian: d.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
            let len = Int(UInt32(littleEndian: d.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
            let flags = UInt16(littleEndian: d.loadUnaligned(fromByteOffset: 12, as: UInt16.self))
            let next = UInt16(littleEndian: d.loadUnaligned(fromByteOffset: 14, as: UInt16.self))
            guard flags & Self.indirect == 0 else { throw VMMError.virtqueue("descriptor \(i) is indirect, a feature never offered") }
            total += len
            guard total <= Self.maxChainBytes else {
                throw VMMError.virtqueue("the chain from \(head) describes more than \(Self.maxChainBytes >> 20) MiB")
            }
            _ = try checked(m, addr, len, "buffer of descriptor \(i)")
            if flags & Self.write != 0 {
                chain.writable.append((addr, len))
            } else {
                guard chain.writable.isEmpty else { throw VMMError.virtqueue("descriptor \(i) is device-readable after a device-writable one") }
                chain.readable.append((addr, len))
            }
            guard flags & Self.next != 0 else { break }
            guard next < size else { throw VMMError.virtqueue("descriptor \(i) links to \(next), outside the table of \(size)") }
            i = next
        }
        return chain
    }

    /// Returns a chain to the driver with `written` bytes filled in.
    public mutating func push(_ m: GuestMemory, head: UInt16, written: Int) throws {
        guard ready else { return }
        let e = try checked(m, usedRing + 4 + 8 * UInt64(usedIdx % size), 8, "a used-ring entry")
        e.storeBytes(of: UInt32(head).littleEndian, toByteOffset: 0, as: UInt32.self)
        e.storeBytes(of: UInt32(truncatingIfNeeded: written).littleEndian, toByteOffset: 4, as: UInt32.self)
        usedIdx &+= 1
        atomicMemoryFence(ordering: .releasing)  // the entry before the index that publishes it
        try checked(m, usedRing + 2, 2, "the used index").storeBytes(of: usedIdx.littleEndian, as: UInt16.self)
    }
}

extension GuestMemory {
    /// Copies `bytes` into a chain's writable buffers, in order; returns how many fit.
    func fill(_ chain: DescriptorChain, from bytes: UnsafeRawBufferPointer) throws -> Int {
        var done = 0
        for b in chain.writable where done < bytes.count {
            let n = min(b.count, bytes.count - done)
            try slice(b.gpa, n).copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[done..<(done + n)]))
            done += n
        }
        return done
    }

    /// The bytes of a chain's readable buffers, concatenated (at most `limit`).
    func gather(_ chain: DescriptorChain, limit: Int = Int.max) throws -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(min(limit, chain.readableCount))
        for b in chain.readable where out.count < limit {
            out.append(contentsOf: try slice(b.gpa, min(b.count, limit - out.count)))
        }
        return out
    }
}
