// One connection of the Unix-socket API: JSON objects, one per line, both ways (Messages.swift). The peer's identity
// comes from SO_PEERCRED (the kernel's word, not the client's), and a client may attach descriptors
// to its first line (SCM_RIGHTS) — a task wrapper hands over its stdin, stdout and stderr this way,
// so the daemon writes a task's output straight to slurmstepd's pipes.
//
// SwiftNIO is not used here: it has no SCM_RIGHTS on stream sockets; every connection is short or
// blocks on a guest, so a thread per connection is the simple, honest model.

import CLinux
import Foundation
import Support
#if canImport(Glibc)
import Glibc
#endif

public struct Peer: Sendable, Equatable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32
}

/// What can go wrong between slurm-vmd and its callers, by kind; each message says what to do.
public enum DaemonError: Error, CustomStringConvertible, Equatable {
    /// A socket could not be made, read or written.
    case connection(String)
    /// The other side is not there (slurm-vmd not running, a node's push listener down).
    case unreachable(String)
    /// A message that is not what the protocol allows.
    case malformed(String)
    /// The caller may not do this.
    case forbidden(String)
    /// This slurm-vmd does not have the role the call needs.
    case noRole(String)
    /// MUNGE could not make or check a credential.
    case munge(String)
    /// The daemon's own setup is wrong (listen addresses, socket paths, a second daemon).
    case config(String)
    /// The other side answered with an error of its own.
    case refused(String)

    public var description: String {
        switch self {
        case .connection(let s), .unreachable(let s), .malformed(let s), .forbidden(let s), .noRole(let s), .munge(let s), .config(let s),
            .refused(let s):
            return s
        }
    }
}

public final class LineConnection: @unchecked Sendable {
    public let fd: Int32
    var buffer = [UInt8]()
    /// Descriptors received so far and not yet taken.
    public private(set) var receivedFDs: [Int32] = []
    let writeLock = NSLock()
    public static let maxLine = 16 << 20

    public init(fd: Int32) { self.fd = fd }
    deinit {
        for f in receivedFDs { close(f) }
        close(fd)
    }

    public func peer() throws -> Peer {
        var pid: pid_t = 0, uid: uid_t = 0, gid: gid_t = 0
        let r = clinux_peer_credentials(fd, &pid, &uid, &gid)
        guard r == 0 else { throw DaemonError.connection("SO_PEERCRED: \(String(cString: strerror(-r)))") }
        return Peer(pid: pid, uid: uid, gid: gid)
    }

    /// Takes ownership of the descriptors received with the messages so far.
    public func takeFDs() -> [Int32] { defer { receivedFDs = [] }; return receivedFDs }

    /// The next line, or nil at the end of the stream.
    public func readLine() throws -> String? {
        while true {
            if let nl = buffer.firstIndex(of: 10) {
                let line = String(decoding: buffer[..<nl], as: UTF8.self)
                buffer.removeSubrange(...nl)
                return line
            }
            guard buffer.count < Self.maxLine else { throw DaemonError.malformed("a message longer than \(Self.maxLine) bytes") }
            var chunk = [UInt8](repeating: 0, count: 64 << 10)
            var fds = [Int32](repeating: -1, count: 8)
            var nfds: Int32 = 0
            let n = chunk.withUnsafeMutableBytes { c in
                fds.withUnsafeMutableBufferPointer { f in clinux_recv_with_fds(fd, c.baseAddress, UInt(c.count), f.baseAddress, 8, &nfds) }
            }
            if nfds > 0 { receivedFDs += fds.prefix(Int(nfds)) }
            if n < 0 {
                if -n == EINTR { continue }
                throw DaemonError.connection("read: \(String(cString: strerror(Int32(-n))))")
            }
            if n == 0 { return nil }
            buffer += chunk.prefix(n)
        }
    }

    /// Writes `data` and a newline as one line (with descriptors attached to its first bytes, if any).
    func sendLine(_ data: Data, fds: [Int32] = []) throws {
        var data = data
        data.append(10)
        writeLock.lock(); defer { writeLock.unlock() }
        try data.withUnsafeBytes { (p: UnsafeRawBufferPointer) in
            var off = 0
            var first = true
            while off < p.count {
                let n: Int
                if first && !fds.isEmpty {
                    n = fds.withUnsafeBufferPointer { f in
                        Int(clinux_send_with_fds(fd, p.baseAddress! + off, UInt(p.count - off), f.baseAddress, Int32(f.count)))
                    }
                    if n < 0 { errno = Int32(-n) }
                } else {
                    n = Glibc.send(fd, p.baseAddress! + off, p.count - off, Int32(MSG_NOSIGNAL))
                }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw DaemonError.connection("write: \(String(cString: strerror(errno)))")
                }
                first = false
                off += n
            }
        }
    }

    /// Half-closes our side (the peer sees the end of the stream).
    public func shutdownWrite() { Glibc.shutdown(fd, Int32(SHUT_WR)) }

    // MARK: endpoints

    public static func connect(_ path: String) throws -> LineConnection {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw DaemonError.connection("socket: \(String(cString: strerror(errno)))") }
        var addr = try unixAddress(path)
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard r == 0 else {
            let e = String(cString: strerror(errno)); close(fd)
            throw DaemonError.unreachable("slurm-vmd is not reachable at \(path) (\(e)); is it running?")
        }
        return LineConnection(fd: fd)
    }

    static func unixAddress(_ path: String) throws -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw DaemonError.config("socket path too long: \(path)") }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
            p[bytes.count] = 0
        }
        return addr
    }

    /// Listens on a Unix socket path. A stale socket file is replaced; a live daemon's is not.
    public static func listen(_ path: String, mode: mode_t = 0o666) throws -> Int32 {
        if Files.exists(path) {
            if let c = try? connect(path) { _ = c; throw DaemonError.config("another slurm-vmd is already listening on \(path)") }
            unlink(path)
        }
        try Files.mkdirs((path as NSString).deletingLastPathComponent, mode: 0o755)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw DaemonError.connection("socket: \(String(cString: strerror(errno)))") }
        var addr = try unixAddress(path)
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: Glibc.sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard r == 0 else { let e = String(cString: strerror(errno)); close(fd); throw DaemonError.connection("cannot listen on \(path): \(e)") }
        // Anyone may connect (matching at submission is open to all); each operation checks the peer.
        chmod(path, mode)
        guard Glibc.listen(fd, 128) == 0 else { let e = String(cString: strerror(errno)); close(fd); throw DaemonError.connection("listen: \(e)") }
        return fd
    }
}
