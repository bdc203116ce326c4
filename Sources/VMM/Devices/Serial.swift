// A 16550A UART (COM1: ports 0x3f8–0x3ff, IRQ 4). Linux's 8250 driver needs: the scratch register and
// MCR→MSR loopback to detect the chip, FIFO-enabled IIR values (0xc1 none, 0xc2 THR empty), and the
// THR-empty interrupt after each transmitted byte (an edge on the IRQ line), or user-space tty writes
// stall. Output goes to a sink; input, when given, arrives through `receive`.

import Synchronization

public final class Serial: PortDevice, @unchecked Sendable {
    let raise: @Sendable () -> Void
    let output: @Sendable ([UInt8]) -> Void
    var ier: UInt8 = 0, lcr: UInt8 = 0, mcr: UInt8 = 0x08, scr: UInt8 = 0, dll: UInt8 = 12, dlm: UInt8 = 0
    var fifoEnabled = false
    var thrEmptyPending = false
    var rx: [UInt8] = []
    var pending: [UInt8] = []

    public init(output: @escaping @Sendable ([UInt8]) -> Void, interrupt: @escaping @Sendable () -> Void) {
        self.output = output
        self.raise = interrupt
    }

    var dlab: Bool { lcr & 0x80 != 0 }
    var loopback: Bool { mcr & 0x10 != 0 }

    func iir() -> UInt8 {
        let fifo: UInt8 = fifoEnabled ? 0xc0 : 0
        if ier & 0x01 != 0 && !rx.isEmpty { return fifo | 0x04 }
        if ier & 0x02 != 0 && thrEmptyPending { return fifo | 0x02 }
        return fifo | 0x01
    }

    func update() {
        if iir() & 0x01 == 0 { raise() }
    }

    public func read(offset: UInt16, size: Int) -> UInt32 {
        switch offset {
        case 0:
            if dlab { return UInt32(dll) }
            let b = rx.isEmpty ? 0 : rx.removeFirst()
            update()
            return UInt32(b)
        case 1: return UInt32(dlab ? dlm : ier)
        case 2:
            let v = iir()
            if v & 0x0f == 0x02 { thrEmptyPending = false }  // reading IIR acknowledges THR empty
            return UInt32(v)
        case 3: return UInt32(lcr)
        case 4: return UInt32(mcr)
        case 5: return UInt32(0x60 | (rx.isEmpty ? 0 : 0x01))  // THR and transmitter empty (+ data ready)
        case 6:
            if loopback {
                // CTS←RTS, DSR←DTR, RI←OUT1, DCD←OUT2
                return UInt32(((mcr & 0x02) << 3) | ((mcr & 0x01) << 5) | ((mcr & 0x04) << 4) | ((mcr & 0x08) << 4))
            }
            return 0xb0  // DCD, DSR, CTS
        case 7: return UInt32(scr)
        default: return 0xff
        }
    }

    public func write(offset: UInt16, size: Int, value: UInt32) {
        let v = UInt8(truncatingIfNeeded: value)
        switch offset {
        case 0:
            if dlab { dll = v; return }
            if loopback { rx.append(v) } else { output([v]) }
            thrEmptyPending = true
            update()
        case 1:
            if dlab { dlm = v; return }
            let was = ier
            ier = v & 0x0f
            if ier & 0x02 != 0 && was & 0x02 == 0 { thrEmptyPending = true }  // enabling THRE interrupts fires one
            update()
        case 2: fifoEnabled = v & 0x01 != 0; if v & 0x02 != 0 { rx.removeAll() }
        case 3: lcr = v
        case 4: mcr = v & 0x1f
        case 7: scr = v
        default: break
        }
    }

    /// Bytes from the host for the guest to read.
    public func receive(_ bytes: [UInt8]) {
        rx.append(contentsOf: bytes.prefix(max(0, 4096 - rx.count)))
        update()
    }
}
