// virtio-net (virtio 1.x §5.1) on a tap the runner opened and handed in: one receive and one transmit
// queue, the MAC and MTU in the configuration, no offloads (the guest checksums and segments itself).
// The tap carries 12-byte virtio-net headers (IFF_VNET_HDR, TUNSETVNETHDRSZ 12), the same header a
// VERSION_1 driver puts before each frame, so frames pass between ring and tap without reshaping.
// Transmit runs on the vCPU thread that notified; receive on a thread of its own (on the housekeeping
// CPU) that reads the tap and fills the driver's receive buffers while holding the MMIO bus, so it never
// races a vCPU touching the device. No vhost-net on these hosts (platform facts), so the VMM copies.

import CLinux
#if canImport(Glibc)
import Glibc
#endif

public final class VirtioNet: ModernVirtioDevice, @unchecked Sendable {
    public static let headerSize = 12
    public static let queueSize: UInt16 = 256
    /// The largest frame the tap hands over (a 64 KiB GSO frame never comes: no offloads are on).
    static let frameLimit = 65_536
    static let featureMTU: UInt64 = 1 << 3, featureMAC: UInt64 = 1 << 5

    public let deviceType: UInt32 = 1
    public let features: UInt64 = VirtioNet.featureMTU | VirtioNet.featureMAC
    public let queueMaxSizes: [UInt16] = [VirtioNet.queueSize, VirtioNet.queueSize]
    public let configSize = 12
    public let interruptsOutOfBand = false
    let tap: Int32
    let config: [UInt8]
    var rx = Virtqueue(size: VirtioNet.queueSize), tx = Virtqueue(size: VirtioNet.queueSize)
    var active = false
    var memory: GuestMemory?
    weak var transport: VirtioMMIOTransport?
    var bus: MMIOBus?
    let wake: Int32, stopper: Int32
    var thread: PinnedThread?
    /// Frames sent and received, and those dropped (no receive buffer while inactive, a full tap).
    public private(set) var sent = 0, received = 0, dropped = 0

    /// `tap`: an open tap (owned from here on); `mac`: six bytes; `mtu`: what the guest may send.
    public init(tap: Int32, mac: [UInt8], mtu: Int) throws {
        guard mac.count == 6 else { throw VMMError.config("a MAC address has 6 bytes, not \(mac.count)") }
        guard (68...65_535 - 14).contains(mtu) else { throw VMMError.config("an MTU of \(mtu) is outside 68–65521") }
        self.tap = tap
        // mac[6], status (no STATUS feature: unused), max_virtqueue_pairs (no MQ: unused), mtu.
        config = mac + le(UInt16(0)) + le(UInt16(1)) + le(UInt16(mtu))
        let w = clinux_eventfd(), s = clinux_eventfd()
        guard w >= 0, s >= 0 else { throw VMMError.host("eventfd: \(String(cString: strerror(-min(w, s))))") }
        wake = w; stopper = s
    }

    deinit {
        stopIO()
        close(tap); close(wake); close(stopper)
    }

    public func readConfig(_ offset: Int) -> UInt8 { offset < config.count ? config[offset] : 0 }
    public func writeConfig(_ offset: Int, _ value: UInt8) {}  // the MAC is the host's choice

    public func plugged(base: UInt64, gsi: UInt32, vm: VM) throws {}

    /// Wires the device to its transport and bus and starts the receive thread on `cpu`.
    public func startIO(transport: VirtioMMIOTransport, bus: MMIOBus, cpu: Int?) throws {
        self.transport = transport
        self.bus = bus
        thread = try PinnedThread(cpu: cpu) { [self] in receiveLoop() }
    }

    /// Ends the receive thread (the VM is over).
    public func stopIO() {
        guard let t = thread else { return }
        HostFDs.signal(stopper)
        t.join()
        thread = nil
    }

    public func activate(features: UInt64, queues: [QueueSetup], memory: GuestMemory) throws {
        for (i, q) in queues.enumerated() where q.ready {
            var v = Virtqueue(size: q.size)
            try v.setAddresses(descriptors: q.descriptors, driver: q.driverArea, device: q.deviceArea, memory: memory)
            if i == 0 { rx = v } else { tx = v }
        }
        self.memory = memory
        active = true
        HostFDs.signal(wake)
    }

    public func reset() {
        active = false
        rx.reset(); tx.reset()
    }

    public func notify(_ queue: Int) {
        if queue == 0 { return HostFDs.signal(wake) }  // receive buffers: the receive thread looks again
        transmit()
    }

    /// Sends every frame the driver queued; called with the bus held.
    func transmit() {
        guard active, let m = memory else { return }
        var used = false
        do {
            while let chain = try tx.pop(m) {
                let bytes = try m.gather(chain, limit: Self.headerSize + Self.frameLimit)
                if bytes.count > Self.headerSize {
                    // A full tap queue drops the frame, as a NIC would; the guest's TCP resends.
                    if bytes.withUnsafeBytes({ write(tap, $0.baseAddress, $0.count) }) == bytes.count { sent += 1 } else { dropped += 1 }
                }
                try tx.push(m, head: chain.head, written: 0)
                used = true
            }
        } catch {
            transport?.broke("transmit queue: \(error)")
            return
        }
        if used && !tx.interruptSuppressed(m) { transport?.interrupt() }
    }

    /// Reads frames from the tap and hands each to a receive buffer; a frame that finds none waits (and
    /// the tap is not read) until the driver adds buffers.
    func receiveLoop() {
        var frame = [UInt8](repeating: 0, count: Self.headerSize + Self.frameLimit)
        var pending = 0  // bytes of a frame read but not yet delivered
        while true {
            var fds = [
                pollfd(fd: stopper, events: Int16(POLLIN), revents: 0), pollfd(fd: wake, events: Int16(POLLIN), revents: 0),
                pollfd(fd: tap, events: pending == 0 ? Int16(POLLIN) : 0, revents: 0),
            ]
            if poll(&fds, 3, -1) < 0 && errno != EINTR { return }
            if fds[0].revents != 0 { return }
            if fds[1].revents != 0 {
                var v: UInt64 = 0
                _ = read(wake, &v, 8)
            }
            if pending == 0 && fds[2].revents & Int16(POLLIN) != 0 {
                let n = frame.withUnsafeMutableBytes { read(tap, $0.baseAddress, $0.count) }
                if n > Self.headerSize { pending = n }
            }
            // Deliver what is pending, then whatever else the tap holds while buffers last.
            while pending > 0 {
                var delivered = false
                bus?.exclusive { delivered = deliver(&frame, pending) }
                guard delivered else { break }
                pending = 0
                let n = frame.withUnsafeMutableBytes { read(tap, $0.baseAddress, $0.count) }
                if n > Self.headerSize { pending = n }
            }
        }
    }

    /// One frame into the next receive buffer (with the bus held). False: no buffer yet; a frame that
    /// arrives while the device is not running is dropped (true).
    func deliver(_ frame: inout [UInt8], _ count: Int) -> Bool {
        guard active, let m = memory else {
            dropped += 1
            return true
        }
        // num_buffers: one buffer per frame (no mergeable receive buffers); the tap leaves it unset.
        frame[10] = 1; frame[11] = 0
        do {
            guard let chain = try rx.pop(m) else { return false }
            let n = try frame.withUnsafeBytes { try m.fill(chain, from: UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
            try rx.push(m, head: chain.head, written: n)
            received += 1
            if !rx.interruptSuppressed(m) { transport?.interrupt() }
        } catch {
            transport?.broke("receive queue: \(error)")
        }
        return true
    }
}
