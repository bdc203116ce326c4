// Unix stream sockets by path: the agent channel we connect to, the vhost-user sockets we listen on
// for a file server.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

enum UnixSocket {
    static func connect(_ path: String) throws -> Int32 {
        let fd = try make(path)
        let r = withAddress(path) { Glibc.connect(fd, $0, $1) }
        guard r == 0 else {
            let e = String(cString: strerror(errno)); Glibc.close(fd)
            throw AgentError("cannot connect to \(path): \(e)")
        }
        return fd
    }

    /// A listening socket at `path` (a leftover file there is replaced); close-on-exec.
    static func listen(_ path: String) throws -> Int32 {
        let fd = try make(path)
        unlink(path)
        guard withAddress(path, { Glibc.bind(fd, $0, $1) }) == 0, Glibc.listen(fd, 4) == 0 else {
            let e = String(cString: strerror(errno)); Glibc.close(fd)
            throw RunnerError.spawn("cannot listen on \(path): \(e)")
        }
        return fd
    }

    private static func make(_ path: String) throws -> Int32 {
        guard path.utf8.count < MemoryLayout.size(ofValue: sockaddr_un().sun_path) else { throw AgentError("socket path too long: \(path)") }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw AgentError("socket: \(String(cString: strerror(errno)))") }
        return fd
    }

    private static func withAddress(_ path: String, _ call: (UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in path.utf8.enumerated() { p[i] = b }
            p[path.utf8.count] = 0
        }
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }
}
