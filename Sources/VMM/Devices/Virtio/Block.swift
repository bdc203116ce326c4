// virtio-blk (type 2) over a host file: the job image's root disk. Requests (virtio 1.x §5.2.6): a
// 16-byte header (type, reserved, sector), data buffers, and a one-byte status the device writes last.
// Served on the vCPU thread that notified, with pread/pwrite straight into guest memory (bounds-checked
// buffers). A read-only disk refuses writes with IOERR and says so in its features; a request past the
// end or of an unknown type gets IOERR/UNSUPP, never a VM stop — only a broken ring stops the VM.

#if canImport(Glibc)
import Glibc
#endif

public final class VirtioBlock: VirtioDevice, @unchecked Sendable {
    static let featureSegMax: UInt32 = 1 << 2, featureRO: UInt32 = 1 << 5, featureBlockSize: UInt32 = 1 << 6, featureFlush: UInt32 = 1 << 9
    static let typeIn: UInt32 = 0, typeOut: UInt32 = 1, typeFlush: UInt32 = 4, typeGetID: UInt32 = 8
    static let ok: UInt8 = 0, ioError: UInt8 = 1, unsupported: UInt8 = 2
    public static let sectorSize = 512
    static let segMax: UInt32 = 126

    public let pciDevice: UInt16 = 0x1001
    public let deviceType: UInt16 = 2
    public let pciClass: UInt32 = 0x01_80_00  // mass storage, other
    public let features: UInt32
    public let queueSizes: [UInt16] = [128]
    public let configSize = 24
    public let readOnly: Bool
    public let sectors: UInt64
    let fd: Int32
    let serial: [UInt8]
    // unowned: the transport owns the device, and the PCI bus owns the transport.
    unowned var transport: VirtioTransport!

    /// Opens `path` (or `fd:N`, see `HostFDs.open`; read-only unless `writable`); its size must be a
    /// whole number of sectors.
    public init(path: String, writable: Bool, serial: String = "slurm-vm-root") throws {
        let f = HostFDs.open(path, writable ? O_RDWR : O_RDONLY)
        guard f >= 0 else { throw VMMError.device("cannot open disk \(path): \(String(cString: strerror(errno)))") }
        var st = stat()
        guard fstat(f, &st) == 0, st.st_size > 0, st.st_size % Int(Self.sectorSize) == 0 else {
            close(f)
            throw VMMError.device("disk \(path) must be a non-empty file whose size is a multiple of \(Self.sectorSize) bytes")
        }
        fd = f
        readOnly = !writable
        sectors = UInt64(st.st_size) / UInt64(Self.sectorSize)
        features = Self.featureSegMax | Self.featureBlockSize | (writable ? Self.featureFlush : Self.featureRO)
        self.serial = Array(serial.utf8.prefix(20))
    }

    deinit { close(fd) }

    public func attach(_ t: VirtioTransport) { transport = t }

    public func readConfig(_ offset: Int) -> UInt8 {
        func byte(_ v: UInt64, _ at: Int) -> UInt8 { UInt8(truncatingIfNeeded: v >> (8 * UInt64(offset - at))) }
        switch offset {
        case 0..<8: return byte(sectors, 0)  // capacity
        case 8..<12: return 0  // size_max: not offered
        case 12..<16: return byte(UInt64(Self.segMax), 12)  // seg_max
        case 16..<20: return 0  // geometry: not offered
        case 20..<24: return byte(UInt64(Self.sectorSize), 20)  // blk_size
        default: return 0
        }
    }
    public func writeConfig(_ offset: Int, _ value: UInt8) {}
    public func reset() {}
    public func driverReady() throws {}

    public func notify(_ queue: Int) throws {
        let m = transport.memory
        var served = false
        while let c = try transport.queues[0].pop(m) {
            let written = try serve(c)
            try transport.queues[0].push(m, head: c.head, written: written)
            served = true
        }
        if served { transport.interrupt(queue: 0) }
    }

    /// One request; returns the bytes written into the chain (data and status).
    func serve(_ c: DescriptorChain) throws -> Int {
        let m = transport.memory
        // The status byte is the last byte of the last writable buffer.
        guard let last = c.writable.last, last.count >= 1 else { throw VMMError.virtqueue("a block request has no status byte") }
        let header = try m.gather(c, limit: 16)
        guard header.count == 16 else { throw VMMError.virtqueue("a block request's header is \(header.count) bytes, not 16") }
        let type = UInt32(header[0]) | UInt32(header[1]) << 8 | UInt32(header[2]) << 16 | UInt32(header[3]) << 24
        var sector: UInt64 = 0
        for i in 0..<8 { sector |= UInt64(header[8 + i]) << (8 * UInt64(i)) }
        // Data: readable bytes after the header (writes) or writable bytes before the status (reads).
        var data: [(gpa: UInt64, count: Int)] = []
        var skip = 16
        for b in c.readable {
            if skip >= b.count { skip -= b.count; continue }
            data.append((b.gpa + UInt64(skip), b.count - skip)); skip = 0
        }
        var out = c.writable
        out[out.count - 1].count -= 1
        if out[out.count - 1].count == 0 { out.removeLast() }
        let statusAt = last.gpa + UInt64(last.count - 1)

        var status = Self.ok
        var written = 0
        switch type {
        case Self.typeIn:
            status = transfer(out, sector: sector, write: false)
            if status == Self.ok { written = out.reduce(0) { $0 + $1.count } }
        case Self.typeOut:
            status = readOnly ? Self.ioError : transfer(data, sector: sector, write: true)
        case Self.typeFlush:
            status = readOnly || fdatasync(fd) == 0 ? Self.ok : Self.ioError
        case Self.typeGetID:
            var id = serial + [UInt8](repeating: 0, count: 20 - serial.count)
            written = try id.withUnsafeMutableBytes { b in
                var n = 0
                for d in out where n < 20 {
                    let k = min(d.count, 20 - n)
                    try m.slice(d.gpa, k).copyMemory(from: UnsafeRawBufferPointer(rebasing: b[n..<(n + k)]))
                    n += k
                }
                return n
            }
        default:
            status = Self.unsupported
        }
        try m.write([status], at: statusAt)
        return written + 1
    }

    /// Moves the buffers' bytes from or to the disk starting at `sector`.
    func transfer(_ bufs: [(gpa: UInt64, count: Int)], sector: UInt64, write: Bool) -> UInt8 {
        let total = bufs.reduce(0) { $0 + $1.count }
        guard total % Self.sectorSize == 0, sector <= sectors, UInt64(total / Self.sectorSize) <= sectors - sector else { return Self.ioError }
        var offset = off_t(sector * UInt64(Self.sectorSize))
        for b in bufs where b.count > 0 {
            guard let s = try? transport.memory.slice(b.gpa, b.count), let p = s.baseAddress else { return Self.ioError }
            var done = 0
            while done < b.count {
                let n = write ? pwrite(fd, p + done, b.count - done, offset) : pread(fd, p + done, b.count - done, offset)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { return Self.ioError }
                done += n
                offset += off_t(n)
            }
        }
        return Self.ok
    }
}
