// Host descriptors the devices share: Unix socket addresses (the agent channel listens on one, the
// vhost-user front end connects to one) and eventfds (kicks, wake-ups).

#if canImport(Glibc)
import Glibc
#endif

public enum HostFDs {
    /// Opens a file the VMM was given: a path, or `fd:N` for a descriptor its parent opened and handed
    /// in (a confined VMM may not see the file's directory, or have the right to open it itself). An
    /// inherited descriptor is taken over as it is, made close-on-exec: the caller owns it from here
    /// (each is named once), so no second copy stays open. Returns the descriptor or -1 with errno set.
    public static func open(_ path: String, _ flags: Int32) -> Int32 {
        if path.hasPrefix("fd:") {
            guard let n = Int32(path.dropFirst(3)), n >= 0 else { errno = EBADF; return -1 }
            return fcntl(n, F_SETFD, FD_CLOEXEC) == 0 ? n : -1
        }
        return Glibc.open(path, flags | O_CLOEXEC)
    }

    /// The address of the Unix socket at `path`, or nil when the path is empty or longer than
    /// `sun_path` holds.
    static func unixAddress(_ path: String) -> sockaddr_un? {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return nil }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in bytes.enumerated() { p[i] = b } }
        return addr
    }

    /// The longest Unix socket path.
    static var maxPath: Int { MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1 }

    /// bind(2) or connect(2) with a Unix socket address.
    static func with(_ addr: sockaddr_un, _ call: (UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
        withUnsafePointer(to: addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call($0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
    }

    /// Adds one to an eventfd's counter: whoever polls it wakes.
    static func signal(_ eventfd: Int32) {
        var one: UInt64 = 1
        _ = write(eventfd, &one, 8)
    }
}
