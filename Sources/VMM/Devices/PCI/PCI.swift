// PCI configuration space through configuration mechanism #1 (ports 0xcf8 address, 0xcfc–0xcff data):
// one bus, function 0 of each slot, a host bridge at slot 0 (Linux's type-1 probe looks for one). A
// function has at most one BAR, an I/O BAR0 — legacy virtio-pci needs no more — whose ports are served
// through a window the bus claims on the port bus; the VMM assigns each BAR in that window, as firmware
// would, and follows a guest that moves it inside the window.

public struct PCIIdentity: Sendable {
    public var vendor: UInt16, device: UInt16, classCode: UInt32, subsystemVendor: UInt16, subsystem: UInt16
    public init(vendor: UInt16, device: UInt16, classCode: UInt32, subsystemVendor: UInt16 = 0, subsystem: UInt16 = 0) {
        self.vendor = vendor; self.device = device; self.classCode = classCode
        self.subsystemVendor = subsystemVendor; self.subsystem = subsystem
    }
}

/// A function's type-0 configuration header: what the guest may change (command, BAR0, interrupt line)
/// changes; everything else is read-only; registers past the header read as zero.
public struct PCIConfig: Sendable {
    var bytes = [UInt8](repeating: 0, count: 256)
    /// Size of the I/O BAR0 in ports (a power of two, at least 4), or 0 for none.
    public let ioSize: UInt32

    public static let commandIO: UInt16 = 0x1, commandMemory: UInt16 = 0x2, commandBusMaster: UInt16 = 0x4
    static let commandWritable: UInt16 = 0x0407  // I/O, memory, bus master, INTx disable

    public init(_ id: PCIIdentity, ioSize: UInt32 = 0, ioBase: UInt16 = 0, interruptLine: UInt8? = nil) {
        precondition(ioSize == 0 || (ioSize >= 4 && ioSize & (ioSize - 1) == 0))
        self.ioSize = ioSize
        put16(0x00, id.vendor); put16(0x02, id.device)
        put32(0x08, id.classCode << 8)  // revision 0
        bytes[0x0e] = 0  // header type 0, single function
        put16(0x2c, id.subsystemVendor); put16(0x2e, id.subsystem)
        if ioSize > 0 { put32(0x10, (UInt32(ioBase) & ~(ioSize - 1)) | 1) }
        if let line = interruptLine { bytes[0x3c] = line; bytes[0x3d] = 1 }  // INTA#
    }

    mutating func put16(_ o: Int, _ v: UInt16) { bytes[o] = UInt8(v & 0xff); bytes[o + 1] = UInt8(v >> 8) }
    mutating func put32(_ o: Int, _ v: UInt32) { for i in 0..<4 { bytes[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) } }
    func get32(_ o: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[o + $1]) << (8 * UInt32($1)) } }

    public var command: UInt16 { UInt16(bytes[4]) | UInt16(bytes[5]) << 8 }
    public var interruptLine: UInt8 { bytes[0x3c] }
    /// Where BAR0's ports start, when the guest has I/O decoding on.
    public var ioBase: UInt16? {
        guard ioSize > 0, command & Self.commandIO != 0 else { return nil }
        return UInt16(truncatingIfNeeded: get32(0x10) & ~(ioSize - 1) & 0xffff)
    }

    /// `size` (1, 2, 4) bytes at `offset`, within one dword.
    public func read(_ offset: Int, size: Int) -> UInt32 {
        guard offset >= 0, offset + size <= 256 else { return 0xffff_ffff }
        var v: UInt32 = 0
        for i in 0..<size { v |= UInt32(bytes[offset + i]) << (8 * UInt32(i)) }
        return v
    }

    public mutating func write(_ offset: Int, size: Int, value: UInt32) {
        guard offset >= 0, offset + size <= 256, size == 1 || size == 2 || size == 4, offset & (size - 1) == 0 else { return }
        let reg = offset & ~3
        var merged = get32(reg)
        for i in 0..<size {
            let shift = 8 * UInt32(offset - reg + i)
            merged = (merged & ~(0xff << shift)) | (UInt32(UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))) << shift)
        }
        switch reg {
        case 0x04:  // command (status is read-only here: nothing sets its bits)
            let cmd = UInt16(truncatingIfNeeded: merged) & Self.commandWritable
            put16(0x04, cmd)
        case 0x10 where ioSize > 0:
            // Sizing writes all ones and reads back the size mask; the low bit says "I/O".
            // I/O decoding is 16 bits wide, so the upper half reads as zero.
            put32(0x10, (merged & ~(ioSize - 1) & 0xffff) | 1)
        case 0x3c:
            bytes[0x3c] = UInt8(truncatingIfNeeded: merged)  // interrupt line: firmware's scratch
        default:
            break  // identity, other BARs, expansion ROM: read-only (zero where absent)
        }
    }
}

/// A PCI function: its configuration header and the ports behind its BAR0.
public protocol PCIFunction: AnyObject, Sendable {
    var config: PCIConfig { get set }
    func ioRead(offset: UInt16, size: Int) -> UInt32
    func ioWrite(offset: UInt16, size: Int, value: UInt32)
}

/// Slot 0: the host bridge (class 0x0600), so a guest's type-1 sanity check finds the bus.
public final class PCIHostBridge: PCIFunction, @unchecked Sendable {
    public var config = PCIConfig(PCIIdentity(vendor: 0x1b36, device: 0x0008, classCode: 0x06_00_00))
    public init() {}
    public func ioRead(offset: UInt16, size: Int) -> UInt32 { 0xffff_ffff }
    public func ioWrite(offset: UInt16, size: Int, value: UInt32) {}
}

/// Bus 0 and its configuration ports. Accesses come through the port bus, one at a time.
public final class PCIBus: PortDevice, @unchecked Sendable {
    public static let configPorts: UInt16 = 0xcf8
    /// The I/O window for BARs: below it the legacy ISA ports, above it nothing a PC has.
    public static let ioWindow: UInt16 = 0xc000, ioWindowSize: UInt16 = 0x1000
    public static let slots = 32
    var functions = [PCIFunction?](repeating: nil, count: PCIBus.slots)
    var address: UInt32 = 0
    var nextIO = PCIBus.ioWindow

    public init() { functions[0] = PCIHostBridge() }

    /// Puts a function in the next free slot; returns the slot.
    @discardableResult
    public func plug(_ f: PCIFunction) throws -> Int {
        guard let slot = functions.firstIndex(where: { $0 == nil }) else { throw VMMError.device("all \(Self.slots) PCI slots are taken") }
        functions[slot] = f
        return slot
    }

    /// An I/O range for a function's BAR0, aligned to its size, inside the window.
    public func allocateIO(_ size: UInt32) throws -> UInt16 {
        let base = (UInt32(nextIO) + size - 1) & ~(size - 1)
        guard base + size <= UInt32(Self.ioWindow) + UInt32(Self.ioWindowSize) else { throw VMMError.device("the PCI I/O window is full") }
        nextIO = UInt16(base + size)
        return UInt16(base)
    }

    var selected: PCIFunction? {
        guard address & 0x8000_0000 != 0 else { return nil }
        let bus = (address >> 16) & 0xff, slot = Int((address >> 11) & 0x1f), function = (address >> 8) & 0x7
        guard bus == 0, function == 0 else { return nil }
        return functions[slot]
    }

    // 0xcf8–0xcfb: the address (dword access only; a byte write to 0xcfb is mechanism #2's probe and
    // is ignored); 0xcfc–0xcff: the data of the selected register.
    public func read(offset: UInt16, size: Int) -> UInt32 {
        if offset < 4 { return offset == 0 && size == 4 ? address : 0xffff_ffff }
        guard let f = selected else { return size >= 4 ? 0xffff_ffff : (1 << (8 * UInt32(size))) - 1 }
        return f.config.read(Int(address & 0xfc) + Int(offset - 4), size: min(size, 8 - Int(offset)))
    }

    public func write(offset: UInt16, size: Int, value: UInt32) {
        if offset < 4 {
            if offset == 0 && size == 4 { address = value & 0x80ff_fffc }
            return
        }
        guard let f = selected else { return }
        f.config.write(Int(address & 0xfc) + Int(offset - 4), size: min(size, 8 - Int(offset)), value: value)
    }

    /// The function whose BAR0 holds `port`, and the offset into it.
    func decode(_ port: UInt16) -> (PCIFunction, UInt16)? {
        for f in functions {
            guard let f, let base = f.config.ioBase else { continue }
            if port >= base && UInt32(port - base) < f.config.ioSize { return (f, port - base) }
        }
        return nil
    }

    /// The window as a port device: each access goes to the BAR that holds it, if any.
    public var window: PortDevice { Window(self) }

    final class Window: PortDevice, @unchecked Sendable {
        let bus: PCIBus
        init(_ b: PCIBus) { bus = b }
        func read(offset: UInt16, size: Int) -> UInt32 {
            guard let (f, o) = bus.decode(PCIBus.ioWindow + offset) else { return size >= 4 ? 0xffff_ffff : (1 << (8 * UInt32(size))) - 1 }
            return f.ioRead(offset: o, size: size)
        }
        func write(offset: UInt16, size: Int, value: UInt32) {
            guard let (f, o) = bus.decode(PCIBus.ioWindow + offset) else { return }
            f.ioWrite(offset: o, size: size, value: value)
        }
    }
}
