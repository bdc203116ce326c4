// Port I/O and MMIO dispatch. A device claims a range; an access to an unclaimed address reads as all
// ones and a write to one is dropped, as on real hardware — a guest probing never stops the VM.

import Synchronization

public protocol PortDevice: AnyObject, Sendable {
    /// `offset` is from the start of the device's range; `size` is 1, 2 or 4.
    func read(offset: UInt16, size: Int) -> UInt32
    func write(offset: UInt16, size: Int, value: UInt32)
}

public final class PortBus: Sendable {
    struct Range { let base: UInt16; let count: UInt16; let device: PortDevice }
    private let ranges = Mutex<[Range]>([])
    /// One device access at a time: devices are simple state machines, not built for concurrency.
    private let access = Mutex<Void>(())

    public init() {}

    public func attach(_ d: PortDevice, base: UInt16, count: UInt16) throws {
        try ranges.withLock { r in
            guard count > 0, Int(base) + Int(count) <= 0x10000 else { throw VMMError.device("port range \(hex(base))+\(count) is out of bounds") }
            if let c = r.first(where: { base < $0.base &+ $0.count && $0.base < base &+ count }) {
                throw VMMError.device("ports \(hex(base))+\(count) overlap a device at \(hex(c.base))")
            }
            r.append(Range(base: base, count: count, device: d))
        }
    }

    func find(_ port: UInt16) -> Range? { ranges.withLock { r in r.first { port >= $0.base && port - $0.base < $0.count } } }

    /// A read returns `size` bytes: what a device answers beyond them is cut off, as the bus would.
    public func read(_ port: UInt16, size: Int) -> UInt32 {
        let mask: UInt32 = size >= 4 ? 0xffff_ffff : (1 << (8 * UInt32(size))) - 1
        guard let r = find(port) else { return mask }
        return access.withLock { _ in r.device.read(offset: port - r.base, size: size) } & mask
    }

    /// Runs `body` while no device access is in progress: how a host-side thread (the agent channel)
    /// touches device state the vCPUs also touch.
    public func exclusive(_ body: () -> Void) {
        access.withLock { _ in body() }
    }

    public func write(_ port: UInt16, size: Int, value: UInt32) {
        guard let r = find(port) else { return }
        access.withLock { _ in r.device.write(offset: port - r.base, size: size, value: value) }
    }
}

public protocol MMIODevice: AnyObject, Sendable {
    /// `offset` is from the start of the device's range; `size` is 1, 2, 4 or 8.
    func read(offset: UInt64, size: Int) -> UInt64
    func write(offset: UInt64, size: Int, value: UInt64)
}

/// Guest-physical ranges outside RAM that devices claim (virtio-mmio's register windows).
public final class MMIOBus: Sendable {
    struct Range { let base: UInt64; let count: UInt64; let device: MMIODevice }
    private let ranges = Mutex<[Range]>([])
    private let access = Mutex<Void>(())

    public init() {}

    public func attach(_ d: MMIODevice, base: UInt64, count: UInt64) throws {
        try ranges.withLock { r in
            guard count > 0, base <= UInt64.max - count else { throw VMMError.device("MMIO range \(hex(base))+\(count) is out of bounds") }
            if let c = r.first(where: { base < $0.base + $0.count && $0.base < base + count }) {
                throw VMMError.device("MMIO \(hex(base))+\(count) overlaps a device at \(hex(c.base))")
            }
            r.append(Range(base: base, count: count, device: d))
        }
    }

    func find(_ address: UInt64) -> Range? { ranges.withLock { r in r.first { address >= $0.base && address - $0.base < $0.count } } }

    /// Runs `body` while no device access is in progress (a device's host-side thread).
    public func exclusive(_ body: () -> Void) {
        access.withLock { _ in body() }
    }

    public func read(_ address: UInt64, size: Int) -> UInt64 {
        let mask: UInt64 = size >= 8 ? .max : (1 << (8 * UInt64(size))) - 1
        guard let r = find(address) else { return mask }
        return access.withLock { _ in r.device.read(offset: address - r.base, size: size) } & mask
    }

    public func write(_ address: UInt64, size: Int, value: UInt64) {
        guard let r = find(address) else { return }
        access.withLock { _ in r.device.write(offset: address - r.base, size: size, value: value) }
    }
}
