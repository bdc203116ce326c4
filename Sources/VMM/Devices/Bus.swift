// Port I/O dispatch. A device claims a port range; an access to an unclaimed port reads as all ones
// and a write to one is dropped, as on real hardware — a guest probing ports never stops the VM.

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
