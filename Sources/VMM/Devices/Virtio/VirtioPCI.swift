// The legacy virtio-pci transport (virtio 1.x §4.1.4.8, "legacy interfaces"): a transitional PCI
// function (vendor 0x1af4, a transitional device id, subsystem = the virtio type) whose I/O BAR0 holds
// the common header — features, queue PFN, size, select, notify, status, ISR — and then the device's
// configuration. No MSI-X: the interrupt is INTA#, asserted while ISR has a bit set and lowered when
// the driver reads ISR. A driver that breaks a ring stops the device and the VM ends, naming why.

public protocol VirtioDevice: AnyObject, Sendable {
    /// The virtio device type: 2 block, 3 console.
    var deviceType: UInt16 { get }
    /// The transitional PCI device id (0x1001 block, 0x1003 console: legacy ids are not type-derived).
    var pciDevice: UInt16 { get }
    var pciClass: UInt32 { get }
    var features: UInt32 { get }
    var queueSizes: [UInt16] { get }
    /// Bytes of the device-specific configuration.
    var configSize: Int { get }
    func readConfig(_ offset: Int) -> UInt8
    func writeConfig(_ offset: Int, _ value: UInt8)
    /// The transport the device uses for its queues and interrupt; set once when plugged.
    func attach(_ t: VirtioTransport)
    /// The driver wrote `queue` to the notify register (buffers are available).
    func notify(_ queue: Int) throws
    /// The driver finished setting up (DRIVER_OK).
    func driverReady() throws
    /// The driver reset the device: drop in-flight state.
    func reset()
}

/// What a device sees of its transport.
public final class VirtioTransport: PCIFunction, @unchecked Sendable {
    public static let vendor: UInt16 = 0x1af4
    public static let status = (acknowledge: UInt8(1), driver: UInt8(2), driverOK: UInt8(4), featuresOK: UInt8(8), failed: UInt8(0x80))
    static let headerSize = 20

    public var config: PCIConfig
    public let device: VirtioDevice
    public let memory: GuestMemory
    public var queues: [Virtqueue]
    public private(set) var guestFeatures: UInt32 = 0
    public private(set) var deviceStatus: UInt8 = 0
    var selected = 0
    var isr: UInt8 = 0
    let irq: UInt32
    let line: @Sendable (UInt32, Bool) -> Void
    let fault: @Sendable (String) -> Void
    public private(set) var broken: String?

    /// `line(irq, level)` drives the function's interrupt; `fault` ends the VM.
    public init(
        _ device: VirtioDevice, memory: GuestMemory, ioBase: UInt16, irq: UInt32,
        line: @escaping @Sendable (UInt32, Bool) -> Void, fault: @escaping @Sendable (String) -> Void
    ) {
        config = PCIConfig(
            PCIIdentity(
                vendor: Self.vendor, device: device.pciDevice, classCode: device.pciClass,
                subsystemVendor: Self.vendor, subsystem: device.deviceType),
            ioSize: Self.ioSize(for: device), ioBase: ioBase, interruptLine: UInt8(truncatingIfNeeded: irq))
        self.device = device
        self.memory = memory
        self.queues = device.queueSizes.map { Virtqueue(size: $0) }
        self.irq = irq
        self.line = line
        self.fault = fault
        device.attach(self)
    }

    public static func ioSize(for device: VirtioDevice) -> UInt32 {
        var size: UInt32 = 4
        while size < UInt32(headerSize + device.configSize) { size <<= 1 }
        return size
    }

    public var driverOK: Bool { deviceStatus & Self.status.driverOK != 0 && broken == nil }

    /// Marks used buffers for the driver: ISR bit 0, and INTA# unless the driver suppressed it.
    public func interrupt(queue: Int) {
        if queue < queues.count && queues[queue].interruptSuppressed(memory) { return }
        isr |= 1
        line(irq, true)
    }

    /// A ring the driver broke: the device stops and the VM ends with the reason.
    public func broke(_ why: String) {
        guard broken == nil else { return }
        broken = why
        deviceStatus |= Self.status.failed
        fault("virtio \(device.deviceType == 2 ? "block" : device.deviceType == 3 ? "console" : "device") \(why)")
    }

    func run(_ what: () throws -> Void) {
        guard broken == nil else { return }
        do { try what() } catch { broke("\(error)") }
    }

    public func ioRead(offset: UInt16, size: Int) -> UInt32 {
        let o = Int(offset)
        switch (o, size) {
        case (0, 4): return device.features
        case (4, 4): return guestFeatures
        case (8, 4): return selected < queues.count ? queues[selected].pfn : 0
        case (12, 2): return selected < queues.count ? UInt32(queues[selected].size) : 0
        case (14, 2): return UInt32(selected)
        case (16, 2): return 0
        case (18, 1): return UInt32(deviceStatus)
        case (19, 1):
            let v = isr
            isr = 0
            line(irq, false)
            return UInt32(v)
        default:
            guard o >= Self.headerSize, o - Self.headerSize + size <= device.configSize else {
                return size >= 4 ? 0xffff_ffff : (1 << (8 * UInt32(size))) - 1
            }
            var v: UInt32 = 0
            for i in 0..<size { v |= UInt32(device.readConfig(o - Self.headerSize + i)) << (8 * UInt32(i)) }
            return v
        }
    }

    public func ioWrite(offset: UInt16, size: Int, value: UInt32) {
        let o = Int(offset)
        switch (o, size) {
        case (4, 4): guestFeatures = value & device.features
        case (8, 4):
            guard selected < queues.count else { return }
            run { try queues[selected].setPFN(value, memory: memory) }
        case (14, 2): selected = Int(value & 0xffff)
        case (16, 2):
            let q = Int(value & 0xffff)
            // A notify before DRIVER_OK is allowed (legacy drivers prime receive buffers early).
            guard q < queues.count, queues[q].ready else { return }
            run { try device.notify(q) }
        case (18, 1):
            let s = UInt8(truncatingIfNeeded: value)
            if s == 0 { resetDevice(); return }
            let wasReady = deviceStatus & Self.status.driverOK != 0
            deviceStatus = s | (deviceStatus & Self.status.failed)
            if !wasReady && s & Self.status.driverOK != 0 { run { try device.driverReady() } }
        default:
            guard o >= Self.headerSize, o - Self.headerSize + size <= device.configSize else { return }
            for i in 0..<size { device.writeConfig(o - Self.headerSize + i, UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))) }
        }
    }

    func resetDevice() {
        deviceStatus = 0
        guestFeatures = 0
        selected = 0
        isr = 0
        line(irq, false)
        for i in queues.indices { queues[i].reset() }
        broken = nil
        device.reset()
    }
}
