// The few legacy ISA devices a guest touches at boot: the CMOS RTC (ports 0x70/0x71; Linux's hctosys
// spins forever without one), the i8042 controller (0x60/0x64; its reset command, 0xfe, is how a guest
// without ACPI reboots, and Linux probes it at boot), the POST port 0x80, and our paravirtual exit port.

#if canImport(Glibc)
import Glibc
#endif

/// CMOS RTC and NVRAM: the time in BCD, 24-hour, never mid-update.
public final class CMOS: PortDevice, @unchecked Sendable {
    var index: UInt8 = 0
    var nvram = [UInt8](repeating: 0, count: 128)
    let now: () -> time_t

    public init(now: @escaping () -> time_t = { time(nil) }) {
        self.now = now
        nvram[0x0a] = 0x26  // 32.768 kHz base, 1024 Hz rate; UIP clear
        nvram[0x0b] = 0x02  // 24-hour, BCD
        nvram[0x0d] = 0x80  // valid RAM and time
    }

    static func bcd(_ v: Int32) -> UInt8 { UInt8(((v / 10) << 4) | (v % 10)) }

    public func read(offset: UInt16, size: Int) -> UInt32 {
        guard offset == 1 else { return UInt32(index) }
        var t = now()
        var tm = tm()
        gmtime_r(&t, &tm)
        let i = index & 0x7f
        switch i {
        case 0x00: return UInt32(Self.bcd(tm.tm_sec))
        case 0x02: return UInt32(Self.bcd(tm.tm_min))
        case 0x04: return UInt32(Self.bcd(tm.tm_hour))
        case 0x06: return UInt32(Self.bcd(tm.tm_wday + 1))
        case 0x07: return UInt32(Self.bcd(tm.tm_mday))
        case 0x08: return UInt32(Self.bcd(tm.tm_mon + 1))
        case 0x09: return UInt32(Self.bcd((tm.tm_year + 1900) % 100))
        case 0x32: return UInt32(Self.bcd((tm.tm_year + 1900) / 100))
        case 0x0c: return 0
        default: return UInt32(nvram[Int(i)])
        }
    }

    public func write(offset: UInt16, size: Int, value: UInt32) {
        if offset == 0 { index = UInt8(truncatingIfNeeded: value); return }
        let i = Int(index & 0x7f)
        if i > 0x0d { nvram[i] = UInt8(truncatingIfNeeded: value) }  // the clock itself is read-only
    }
}

/// The i8042 keyboard controller with neither keyboard nor mouse behind it: the controller commands
/// Linux's probe sends (read and write the command byte, self tests, port enable and disable) are
/// answered as a real one answers them, and command 0xfe resets, which is how a guest without ACPI
/// reboots. Answering matters for boot time: a controller that takes commands but never answers makes
/// Linux wait out its command timeout (about a second) before it gives up on the i8042.
public final class I8042: PortDevice, @unchecked Sendable {
    /// The controller's output buffer holds 16 bytes at most, however many commands a guest sends.
    static let outputLimit = 16
    let reset: @Sendable () -> Void
    /// The command byte: system flag set, keyboard and mouse ports disabled, their interrupts off.
    private(set) var commandByte: UInt8 = 0x34
    /// Bytes for the guest to read from port 0x60, oldest first.
    private(set) var output: [UInt8] = []
    /// A command waiting for its data byte on port 0x60.
    var pending: UInt8?
    /// Whether the last write was to the command port (status bit 3).
    var lastWasCommand = false

    public init(reset: @escaping @Sendable () -> Void) { self.reset = reset }

    public func read(offset: UInt16, size: Int) -> UInt32 {
        switch offset {
        case 0: return output.isEmpty ? 0 : UInt32(output.removeFirst())
        case 4:
            // Keyboard not inhibited, system flag, input buffer always empty, output buffer as it is.
            return 0x14 | (lastWasCommand ? 0x08 : 0) | (output.isEmpty ? 0 : 0x01)
        default: return 0
        }
    }

    public func write(offset: UInt16, size: Int, value: UInt32) {
        let byte = UInt8(truncatingIfNeeded: value)
        switch offset {
        case 4:
            lastWasCommand = true
            pending = nil
            switch byte {
            case 0x20: answer(commandByte)  // read the command byte
            case 0x60, 0xd1, 0xd2, 0xd3, 0xd4: pending = byte  // a data byte follows
            case 0xa7: commandByte |= 0x20  // mouse port off
            case 0xa8: commandByte &= ~0x20  // mouse port on
            case 0xa9, 0xab: answer(0x00)  // port tests pass
            case 0xaa: answer(0x55)  // controller self test passes
            case 0xad: commandByte |= 0x10  // keyboard port off
            case 0xae: commandByte &= ~0x10  // keyboard port on
            case 0xfe: reset()  // pulse the reset line
            default: break
            }
        case 0:
            lastWasCommand = false
            switch pending {
            case 0x60: commandByte = byte
            case 0xd2, 0xd3: answer(byte)  // as if the keyboard or mouse had sent it
            default: break  // the output port (0xd1), or a byte for a device that is not there
            }
            pending = nil
        default: break
        }
    }

    private func answer(_ byte: UInt8) {
        if output.count < Self.outputLimit { output.append(byte) }
    }
}

/// Port 0x80 (POST codes) and the like: accepted and ignored.
public final class Sink: PortDevice, @unchecked Sendable {
    public init() {}
    public func read(offset: UInt16, size: Int) -> UInt32 { 0 }
    public func write(offset: UInt16, size: Int, value: UInt32) {}
}

/// The paravirtual exit port: a 32-bit write of the guest's status ends the VM with it. 0x501 is where
/// QEMU's isa-debug-exit sits by default, so one test guest ends under both (0x510 would be fw_cfg's).
public final class ExitPort: PortDevice, @unchecked Sendable {
    public static let port: UInt16 = 0x501
    let exit: @Sendable (UInt32) -> Void
    public init(exit: @escaping @Sendable (UInt32) -> Void) { self.exit = exit }
    public func read(offset: UInt16, size: Int) -> UInt32 { 0x534c_564d }  // "SLVM": a guest can probe for it
    public func write(offset: UInt16, size: Int, value: UInt32) {
        if offset == 0 && size == 4 { exit(value) }
    }
}
