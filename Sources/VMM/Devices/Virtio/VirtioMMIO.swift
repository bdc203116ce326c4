// The virtio-mmio transport, version 2 (virtio 1.x §4.2.2): a 0x200-byte register window in guest
// physical space, described to the guest by the DSDT (LNRO0005), with one edge-triggered interrupt.
// Devices that exist only in modern virtio (virtio-fs has no legacy PCI id) use it. Unlike the legacy
// PCI transport the driver places each part of a split ring on its own (descriptors, driver area,
// device area); the transport keeps what the driver wrote and hands the whole set to the device at
// DRIVER_OK, after checking every ring lies in guest RAM. Registers are 32 bits wide; anything else a
// guest does (another width, an unknown offset, a queue that does not exist) reads as zero and is
// ignored, never stops the VM.

/// A split virtqueue as the driver placed it through a modern transport.
public struct QueueSetup: Sendable, Equatable {
    public var size: UInt16 = 0
    public var descriptors: UInt64 = 0
    public var driverArea: UInt64 = 0
    public var deviceArea: UInt64 = 0
    public var ready = false

    public init() {}

    /// Bytes of each part of a split ring of `size` entries (virtio 1.x §2.7: with the event fields).
    static func bytes(size: UInt16) -> (descriptors: Int, driver: Int, device: Int) {
        (16 * Int(size), 6 + 2 * Int(size), 6 + 8 * Int(size))
    }
}

/// A device behind the virtio-mmio transport.
public protocol ModernVirtioDevice: AnyObject, Sendable {
    /// The virtio device type (26: file system).
    var deviceType: UInt32 { get }
    /// Features offered to the driver; VIRTIO_F_VERSION_1 (bit 32) is added by the transport.
    var features: UInt64 { get }
    /// The largest size of each queue (a power of two).
    var queueMaxSizes: [UInt16] { get }
    var configSize: Int { get }
    func readConfig(_ offset: Int) -> UInt8
    func writeConfig(_ offset: Int, _ value: UInt8)
    /// Plugged at `base` with interrupt `gsi`: where a device wires its kicks and calls into KVM.
    func plugged(base: UInt64, gsi: UInt32, vm: VM) throws
    /// DRIVER_OK: the features the driver accepted and every queue as it set it up.
    func activate(features: UInt64, queues: [QueueSetup], memory: GuestMemory) throws
    /// A queue notify that reached the VMM rather than an ioeventfd.
    func notify(_ queue: Int)
    /// The driver reset the device (status 0).
    func reset()
    /// Whether the queues interrupt the guest without the VMM (a vhost-user backend through an
    /// irqfd): the transport cannot see those interrupts, so it reports a used-buffer interrupt on
    /// every read of the status register and lets the driver look at its rings.
    var interruptsOutOfBand: Bool { get }
}

public final class VirtioMMIOTransport: MMIODevice, @unchecked Sendable {
    public static let windowSize: UInt64 = 0x200
    static let magic: UInt32 = 0x7472_6976  // "virt"
    static let vendor: UInt32 = 0x6d76_6c73  // "slvm"
    public static let versionOne: UInt64 = 1 << 32
    static let notifyRegister: UInt64 = 0x50
    public static let status = (
        acknowledge: UInt32(1), driver: UInt32(2), driverOK: UInt32(4), featuresOK: UInt32(8), needsReset: UInt32(0x40), failed: UInt32(0x80)
    )

    public let device: ModernVirtioDevice
    let memory: GuestMemory
    public let base: UInt64
    public let gsi: UInt32
    let pulse: @Sendable () -> Void
    let fault: @Sendable (String) -> Void
    var deviceFeatureSelect: UInt32 = 0
    var driverFeatureSelect: UInt32 = 0
    public private(set) var driverFeatures: UInt64 = 0
    public private(set) var deviceStatus: UInt32 = 0
    var queueSelect = 0
    public private(set) var queues: [QueueSetup]
    var interruptStatus: UInt32 = 0
    var configGeneration: UInt32 = 0
    public private(set) var active = false

    /// `pulse` raises the interrupt (an edge on `gsi`); `fault` ends the VM with a reason.
    public init(
        _ device: ModernVirtioDevice, memory: GuestMemory, base: UInt64, gsi: UInt32,
        pulse: @escaping @Sendable () -> Void, fault: @escaping @Sendable (String) -> Void
    ) {
        self.device = device; self.memory = memory; self.base = base; self.gsi = gsi; self.pulse = pulse; self.fault = fault
        queues = device.queueMaxSizes.map { _ in QueueSetup() }
    }

    public var offeredFeatures: UInt64 { device.features | Self.versionOne }

    /// The device used buffers of its queues: tell the driver.
    public func interrupt() {
        interruptStatus |= 1
        pulse()
    }

    public func read(offset: UInt64, size: Int) -> UInt64 {
        if offset >= 0x100 {
            let o = Int(offset - 0x100)
            guard size <= 8, o + size <= device.configSize else { return 0 }
            var v: UInt64 = 0
            for i in 0..<size { v |= UInt64(device.readConfig(o + i)) << (8 * UInt64(i)) }
            return v
        }
        guard size == 4 else { return 0 }
        let q = queueSelect < queues.count ? queues[queueSelect] : nil
        let v: UInt32
        switch offset {
        case 0x000: v = Self.magic
        case 0x004: v = 2
        case 0x008: v = device.deviceType
        case 0x00c: v = Self.vendor
        case 0x010: v = deviceFeatureSelect < 2 ? UInt32(truncatingIfNeeded: offeredFeatures >> (32 * UInt64(deviceFeatureSelect))) : 0
        case 0x034: v = queueSelect < queues.count ? UInt32(device.queueMaxSizes[queueSelect]) : 0
        case 0x044: v = q?.ready == true ? 1 : 0
        case 0x060: v = interruptStatus | (device.interruptsOutOfBand && active ? 1 : 0)
        case 0x070: v = deviceStatus
        // No shared memory regions (no DAX window): a length of all ones says so.
        case 0x0b0, 0x0b4: v = 0xffff_ffff
        case 0x0fc: v = configGeneration
        default: v = 0
        }
        return UInt64(v)
    }

    public func write(offset: UInt64, size: Int, value: UInt64) {
        if offset >= 0x100 {
            let o = Int(offset - 0x100)
            guard size <= 8, o + size <= device.configSize else { return }
            for i in 0..<size { device.writeConfig(o + i, UInt8(truncatingIfNeeded: value >> (8 * UInt64(i)))) }
            return
        }
        guard size == 4 else { return }
        let v = UInt32(truncatingIfNeeded: value)
        // The ring's registers may change only while the queue is not ready (§4.2.2.2).
        func setQueue(_ body: (inout QueueSetup) -> Void) {
            guard queueSelect < queues.count, !queues[queueSelect].ready, !active else { return }
            body(&queues[queueSelect])
        }
        func low(_ x: UInt64) -> UInt64 { (x & ~0xffff_ffff) | UInt64(v) }
        func high(_ x: UInt64) -> UInt64 { (x & 0xffff_ffff) | UInt64(v) << 32 }
        switch offset {
        case 0x014: deviceFeatureSelect = v
        case 0x020:
            guard driverFeatureSelect < 2, deviceStatus & Self.status.featuresOK == 0 else { return }
            let shift = 32 * UInt64(driverFeatureSelect)
            driverFeatures = (driverFeatures & ~(0xffff_ffff << shift)) | UInt64(v) << shift
        case 0x024: driverFeatureSelect = v
        case 0x030: queueSelect = Int(v)
        case 0x038: setQueue { $0.size = UInt16(truncatingIfNeeded: v) }
        case 0x044:
            guard queueSelect < queues.count, !active else { return }
            queues[queueSelect].ready = v & 1 == 1
        case 0x050:
            guard v < queues.count, queues[Int(v)].ready else { return }
            device.notify(Int(v))
        case 0x064: interruptStatus &= ~v
        case 0x070: setStatus(v)
        case 0x080: setQueue { $0.descriptors = low($0.descriptors) }
        case 0x084: setQueue { $0.descriptors = high($0.descriptors) }
        case 0x090: setQueue { $0.driverArea = low($0.driverArea) }
        case 0x094: setQueue { $0.driverArea = high($0.driverArea) }
        case 0x0a0: setQueue { $0.deviceArea = low($0.deviceArea) }
        case 0x0a4: setQueue { $0.deviceArea = high($0.deviceArea) }
        default: break
        }
    }

    func setStatus(_ v: UInt32) {
        if v == 0 { return resetDevice() }
        var s = v & 0xff
        // FEATURES_OK stays set only for features the device offered, VERSION_1 among them (§3.1.1).
        if s & Self.status.featuresOK != 0 && deviceStatus & Self.status.featuresOK == 0 {
            if driverFeatures & ~offeredFeatures != 0 || driverFeatures & Self.versionOne == 0 { s &= ~Self.status.featuresOK }
        }
        let starting = s & Self.status.driverOK != 0 && deviceStatus & Self.status.driverOK == 0
        deviceStatus = s | (deviceStatus & (Self.status.needsReset | Self.status.failed))
        guard starting, !active else { return }
        guard deviceStatus & Self.status.featuresOK != 0 else { return broke("the driver set DRIVER_OK without FEATURES_OK") }
        do {
            for (i, q) in queues.enumerated() where q.ready {
                let max = device.queueMaxSizes[i]
                guard q.size > 0, q.size <= max, q.size & (q.size - 1) == 0 else {
                    throw VMMError.virtqueue("queue \(i) has size \(q.size); it must be a power of two up to \(max)")
                }
                let b = QueueSetup.bytes(size: q.size)
                for (what, gpa, n) in [
                    ("descriptor table", q.descriptors, b.descriptors), ("driver area", q.driverArea, b.driver),
                    ("device area", q.deviceArea, b.device),
                ] {
                    do { _ = try memory.slice(gpa, n) } catch {
                        throw VMMError.virtqueue("queue \(i)'s \(what) at \(hex(gpa))+\(n) lies outside guest memory")
                    }
                }
            }
            try device.activate(features: driverFeatures, queues: queues, memory: memory)
            active = true
        } catch {
            broke("\(error)")
        }
    }

    /// A driver that broke the rules, or a device that could not start: the device needs a reset and
    /// the VM ends with the reason (as on the legacy transport).
    func broke(_ why: String) {
        deviceStatus |= Self.status.needsReset
        fault("virtio-mmio device \(device.deviceType) at \(hex(base)): \(why)")
    }

    func resetDevice() {
        if active { device.reset() }
        active = false
        deviceStatus = 0
        driverFeatures = 0
        deviceFeatureSelect = 0
        driverFeatureSelect = 0
        queueSelect = 0
        interruptStatus = 0
        queues = device.queueMaxSizes.map { _ in QueueSetup() }
    }
}
