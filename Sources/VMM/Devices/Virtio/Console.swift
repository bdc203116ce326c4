// The virtio console (type 3) with the multiport feature, as the guest agent expects it: one named
// port, "org.slurm-vm.agent" (id 1; port 0 stays unused, as QEMU keeps it for a console). Control
// messages (virtio 1.x §5.3.6.2): the driver says DEVICE_READY, the device adds the port, the driver
// says PORT_READY, the device names it and says whether the host end is open; PORT_OPEN goes both
// ways. A guest sees the host end close as a hang-up, which is how the agent knows its host left.
// Host bytes wait in a bounded buffer for receive buffers; guest bytes wait in another for the host
// channel; when either is full, that direction stops until it drains (no byte is dropped). Host bytes
// are taken only while the guest has the port open, as QEMU does: what a runner sends before the guest
// driver has reset the device and opened the port stays in the socket instead of being lost to the
// reset (or, under Linux, discarded by a driver whose port is still closed).

public final class VirtioConsole: VirtioDevice, @unchecked Sendable {
    public static let agentPortName = "org.slurm-vm.agent"
    static let multiport: UInt32 = 1 << 1
    static let portID: UInt32 = 1
    static let maxPorts: UInt32 = 2
    /// Control events.
    enum Event: UInt16 { case deviceReady = 0, portAdd = 1, portRemove = 2, portReady = 3, consolePort = 4, resize = 5, portOpen = 6, portName = 7 }
    /// Queues: port 0 receive/transmit, control receive/transmit, port 1 receive/transmit.
    static let controlRX = 2, controlTX = 3, portRX = 4, portTX = 5
    /// Bytes each direction may hold before it waits.
    public static let bufferLimit = 1 << 20

    public let pciDevice: UInt16 = 0x1003
    public let deviceType: UInt16 = 3
    public let pciClass: UInt32 = 0x07_80_00  // communication controller, other
    public let features: UInt32 = VirtioConsole.multiport
    public let queueSizes: [UInt16] = [64, 64, 32, 32, 128, 128]
    public let configSize = 12
    // unowned: the transport owns the device, and the PCI bus owns the transport.
    unowned var transport: VirtioTransport!
    var controlOut: [[UInt8]] = []
    var portReady = false
    public private(set) var guestOpen = false
    public private(set) var hostOpen = false
    /// Host → guest bytes not yet in a receive buffer.
    var inbound: [UInt8] = []
    var inboundStart = 0
    /// Guest → host bytes not yet taken by the channel.
    var outbound: [UInt8] = []
    /// Tells the host channel there is output, or room for input.
    let wake: @Sendable () -> Void

    public init(wake: @escaping @Sendable () -> Void = {}) { self.wake = wake }

    public func attach(_ t: VirtioTransport) { transport = t }

    public func readConfig(_ offset: Int) -> UInt8 {
        // cols, rows (unused without the size feature), max_nr_ports, emerg_wr
        offset >= 4 && offset < 8 ? UInt8(truncatingIfNeeded: Self.maxPorts >> (8 * UInt32(offset - 4))) : 0
    }
    public func writeConfig(_ offset: Int, _ value: UInt8) {}

    public func reset() {
        controlOut = []; portReady = false; guestOpen = false
        inbound = []; inboundStart = 0; outbound = []
    }

    public func driverReady() throws { try pumpAll() }

    public func notify(_ queue: Int) throws {
        switch queue {
        case Self.controlTX: try readControl()
        case Self.controlRX: try sendControl()
        case Self.portRX: try pumpInbound()
        case Self.portTX: try pumpOutbound()
        default:
            // Port 0 is never added; whatever a driver puts there is returned unused.
            while let c = try transport.queues[queue].pop(transport.memory) {
                try transport.queues[queue].push(transport.memory, head: c.head, written: 0)
            }
            transport.interrupt(queue: queue)
        }
    }

    func pumpAll() throws {
        try sendControl(); try pumpInbound(); try pumpOutbound()
    }

    // MARK: control

    func control(_ e: Event, value: UInt16 = 0, payload: [UInt8] = []) {
        var m = [UInt8]()
        for i in 0..<4 { m.append(UInt8(truncatingIfNeeded: Self.portID >> (8 * UInt32(i)))) }
        m += [UInt8(e.rawValue & 0xff), UInt8(e.rawValue >> 8), UInt8(value & 0xff), UInt8(value >> 8)]
        controlOut.append(m + payload)
    }

    func readControl() throws {
        let m = transport.memory
        while let c = try transport.queues[Self.controlTX].pop(m) {
            let b = try m.gather(c, limit: 64)
            try transport.queues[Self.controlTX].push(m, head: c.head, written: 0)
            guard b.count >= 8 else { continue }  // a short message is ignored
            let id = UInt32(b[0]) | UInt32(b[1]) << 8 | UInt32(b[2]) << 16 | UInt32(b[3]) << 24
            let event = UInt16(b[4]) | UInt16(b[5]) << 8, value = UInt16(b[6]) | UInt16(b[7]) << 8
            switch Event(rawValue: event) {
            case .deviceReady where value == 1:
                control(.portAdd)
            case .portReady where id == Self.portID && value == 1:
                portReady = true
                control(.portName, payload: Array(Self.agentPortName.utf8))
                control(.portOpen, value: hostOpen ? 1 : 0)
            case .portOpen where id == Self.portID:
                guestOpen = value != 0
                // Bytes taken for a session the guest closed belong to no one: a reopened port starts
                // from what is still in the socket, not from the tail of an old conversation.
                if !guestOpen { inbound = []; inboundStart = 0 }
                try pumpInbound()
                wake()
            default:
                break  // unknown events and other ports: ignored, as a newer driver may send them
            }
        }
        transport.interrupt(queue: Self.controlTX)
        try sendControl()
    }

    func sendControl() throws {
        let m = transport.memory
        var sent = false
        while !controlOut.isEmpty, let c = try transport.queues[Self.controlRX].pop(m) {
            let msg = controlOut.removeFirst()
            let n = try msg.withUnsafeBytes { try m.fill(c, from: $0) }
            try transport.queues[Self.controlRX].push(m, head: c.head, written: n)
            sent = true
        }
        if sent { transport.interrupt(queue: Self.controlRX) }
    }

    // MARK: data

    /// The host channel opened or closed; the guest hears of it once its port is ready.
    public func hostConnected(_ open: Bool) throws {
        guard open != hostOpen else { return }
        hostOpen = open
        if !open { outbound = [] }  // nobody will read it: the guest's next writes wait for a host
        if portReady && transport.driverOK {
            control(.portOpen, value: open ? 1 : 0)
            try sendControl()
        }
    }

    /// Whether host bytes may be taken: the driver is up and the guest has opened the port.
    var acceptsInbound: Bool { guestOpen && transport.driverOK }

    /// Room for host bytes: none until they may be taken.
    public var inboundRoom: Int {
        guard acceptsInbound else { return 0 }
        return max(0, Self.bufferLimit - (inbound.count - inboundStart))
    }

    /// Host bytes for the guest; returns how many were taken (the rest must wait for room).
    @discardableResult
    public func deliver(_ bytes: UnsafeRawBufferPointer) throws -> Int {
        let n = min(bytes.count, inboundRoom)
        guard n > 0 else { return 0 }
        inbound.append(contentsOf: bytes.prefix(n))
        try pumpInbound()
        return n
    }

    func pumpInbound() throws {
        guard acceptsInbound else { return }
        let m = transport.memory
        var filled = false
        while inbound.count > inboundStart, let c = try transport.queues[Self.portRX].pop(m) {
            let n = try inbound.withUnsafeBytes { try m.fill(c, from: UnsafeRawBufferPointer(rebasing: $0[inboundStart...])) }
            inboundStart += n
            try transport.queues[Self.portRX].push(m, head: c.head, written: n)
            filled = true
        }
        if inboundStart == inbound.count {
            inbound.removeAll(keepingCapacity: true); inboundStart = 0
        } else if inboundStart > Self.bufferLimit / 2 {
            inbound.removeFirst(inboundStart); inboundStart = 0
        }
        if filled { transport.interrupt(queue: Self.portRX); wake() }
    }

    /// Guest bytes for the host, taken all at once.
    public func takeOutbound() throws -> [UInt8] {
        let out = outbound
        outbound = []
        if !out.isEmpty && transport.driverOK { try pumpOutbound() }  // writes that waited for room
        return out
    }

    func pumpOutbound() throws {
        let m = transport.memory
        var took = false
        while outbound.count < Self.bufferLimit, let c = try transport.queues[Self.portTX].pop(m) {
            let b = try m.gather(c, limit: Self.bufferLimit)
            if hostOpen { outbound += b }
            try transport.queues[Self.portTX].push(m, head: c.head, written: 0)
            took = true
        }
        if took { transport.interrupt(queue: Self.portTX); if !outbound.isEmpty { wake() } }
    }
}
