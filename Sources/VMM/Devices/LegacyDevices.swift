// The few legacy ISA devices a guest touches at boot: the CMOS RTC (ports 0x70/0x71; Linux's hctosys
// spins forever without one), the i8042 controller (0x60/0x64; its reset command, 0xfe, is how a guest
// without ACPI reboots), the POST port 0x80, and our paravirtual exit port.

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

/// The i8042 keyboard controller, only as far as a guest reboots through it.
public final class I8042: PortDevice, @unchecked Sendable {
    let reset: @Sendable () -> Void
    public init(reset: @escaping @Sendable () -> Void) { self.reset = reset }
    public func read(offset: UInt16, size: Int) -> UInt32 { offset == 4 ? 0x1c : 0 }  // status: system flag, input buffer empty
    public func write(offset: UInt16, size: Int, value: UInt32) {
        if offset == 4 && value & 0xff == 0xfe { reset() }
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
