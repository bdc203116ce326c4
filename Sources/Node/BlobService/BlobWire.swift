// The blob service's sockets: connecting with timeouts, lines and bytes both ways, fetching a reply
// into memory or a file. Used by the node cache (the client) and slurm-vmd's catalog role (the server).

import Foundation
import Support
#if canImport(Glibc)
import Glibc
#endif

public enum BlobWire {
    /// Connects to host:port with a timeout on every read and write.
    public static func connect(_ address: String, timeout: TimeInterval) throws -> Int32 {
        guard let (host, port) = HostPort.split(address) else { throw NodeError.catalog("'\(address)' is not HOST:PORT") }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &res) == 0, let first = res else {
            throw NodeError.catalog("cannot resolve \(host)")
        }
        defer { freeaddrinfo(res) }
        var lastError = ""
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            let fd = socket(a.pointee.ai_family, a.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), a.pointee.ai_protocol)
            if fd >= 0 {
                setTimeouts(fd, timeout)
                if Glibc.connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 { return fd }
                lastError = String(cString: strerror(errno))
                close(fd)
            }
            ai = a.pointee.ai_next
        }
        throw NodeError.catalog("cannot connect to the catalog at \(address): \(lastError)")
    }

    /// The local IP address of a connected socket, as text.
    public static func localAddress(_ fd: Int32) -> String? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } } == 0
        guard ok else { return nil }
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        let rc = withUnsafePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getnameinfo($0, len, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST)
            }
        }
        guard rc == 0 else { return nil }
        let h = String(cString: host)
        return h.contains(":") ? "[\(h)]" : h
    }

    public static func setTimeouts(_ fd: Int32, _ t: TimeInterval) {
        var tv = timeval(tv_sec: Int(t), tv_usec: Int((t - t.rounded(.down)) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    public static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = send(fd, bytes.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL))
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            off += n
        }
        return true
    }

    public static func writeAll(_ fd: Int32, _ s: String) -> Bool {
        Array(s.utf8).withUnsafeBytes { writeAll(fd, $0) }
    }

    /// Reads one "\n"-terminated line (at most 4 KiB) byte by byte, so nothing after it is consumed.
    public static func readLine(_ fd: Int32) -> String? {
        var line = [UInt8]()
        var c: UInt8 = 0
        while line.count < 4096 {
            let n = read(fd, &c, 1)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return nil }
            if c == 10 { return String(decoding: line, as: UTF8.self) }
            line.append(c)
        }
        return nil
    }

    /// Sends a request and reads the reply's header: the size that follows.
    static func request(_ req: BlobRequest, _ fd: Int32, from: String) throws -> Int64 {
        guard writeAll(fd, req.line + "\n") else {
            throw NodeError.catalog("cannot send to the catalog at \(from): \(String(cString: strerror(errno)))")
        }
        guard let head = readLine(fd) else { throw NodeError.catalog("the catalog at \(from) closed the connection or timed out") }
        switch try BlobReply.parse(head) {
        case .ok(let size): return size
        case .error(let e): throw NodeError.catalog("the catalog at \(from): \(e)")
        default: throw NodeError.protocolViolation("the catalog at \(from) sent '\(head.prefix(80))', not OK SIZE")
        }
    }

    /// A small reply, in memory.
    public static func fetch(_ req: BlobRequest, from: String, timeout: TimeInterval) throws -> Data {
        let fd = try connect(from, timeout: timeout)
        defer { close(fd) }
        let size = try request(req, fd, from: from)
        guard size <= 64 << 20 else { throw NodeError.protocolViolation("the catalog at \(from) announced \(size) bytes for '\(req.line)'") }
        var data = Data(count: Int(size))
        var off = 0
        let ok = data.withUnsafeMutableBytes { p -> Bool in
            while off < Int(size) {
                let n = read(fd, p.baseAddress! + off, Int(size) - off)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return false }
                off += n
            }
            return true
        }
        guard ok else { throw NodeError.catalog("the catalog at \(from) stopped after \(off) of \(size) bytes") }
        return data
    }

    /// A blob, streamed into a new file `path`; `expect` is the size the record gives.
    public static func fetch(_ req: BlobRequest, from: String, timeout: TimeInterval, into path: String, expect: Int64) throws {
        let fd = try connect(from, timeout: timeout)
        defer { close(fd) }
        let size = try request(req, fd, from: from)
        guard size == expect || expect < 0 else {
            throw NodeError.protocolViolation("the catalog at \(from) offers \(size) bytes for '\(req.line)', the record says \(expect)")
        }
        let out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard out >= 0 else { throw NodeError.io("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(out) }
        let cap = 1 << 20
        let buf = UnsafeMutableRawPointer.allocate(byteCount: cap, alignment: 16)
        defer { buf.deallocate() }
        var got: Int64 = 0
        while got < size {
            let n = read(fd, buf, Int(min(Int64(cap), size - got)))
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { throw NodeError.catalog("the transfer of '\(req.line)' from \(from) stopped after \(got) of \(size) bytes") }
            var off = 0
            while off < n {
                let w = write(out, buf + off, n - off)
                if w < 0 && errno == EINTR { continue }
                if w <= 0 { throw NodeError.io("cannot write \(path) (is the node cache's disk full?): \(String(cString: strerror(errno)))") }
                off += w
            }
            got += Int64(n)
        }
        guard fsync(out) == 0 else { throw NodeError.io("cannot sync \(path): \(String(cString: strerror(errno)))") }
    }
}
