// File primitives every on-disk structure of slurm-vm is built from: whole-file atomic writes
// (temporary file in the same directory, fsync, rename), streaming SHA-256, advisory locks, and
// processes named by pid and start time (records of guests and VMMs on disk).

import Crypto
import Foundation
#if canImport(Glibc)
import Glibc
#endif

public struct FileError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
    public static func errno(_ what: String, _ path: String, _ e: Int32 = Glibc.errno) -> FileError {
        FileError("\(what) \(path): \(String(cString: strerror(e)))")
    }
}

public enum Files {
    /// Writes `data` to `path` so that readers see either the old file or the whole new one.
    public static func writeAtomically(_ data: Data, to path: String, mode: mode_t = 0o644) throws {
        let dir = (path as NSString).deletingLastPathComponent
        let tmp = "\(dir)/.\((path as NSString).lastPathComponent).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw FileError.errno("cannot create", tmp) }
        var ok = false
        defer { if !ok { unlink(tmp) } }
        try data.withUnsafeBytes { buf in
            var off = 0
            while off < buf.count {
                let n = write(fd, buf.baseAddress! + off, buf.count - off)
                if n < 0 { if errno == EINTR { continue }; let e = errno; close(fd); throw FileError.errno("cannot write", tmp, e) }
                off += n
            }
        }
        if fsync(fd) != 0 { let e = errno; close(fd); throw FileError.errno("cannot sync", tmp, e) }
        close(fd)
        fchmodPath(tmp, mode)
        guard rename(tmp, path) == 0 else { throw FileError.errno("cannot rename onto", path) }
        ok = true
        syncDirectory(dir)
    }

    static func fchmodPath(_ p: String, _ mode: mode_t) { chmod(p, mode) }

    /// Makes a rename durable.
    public static func syncDirectory(_ dir: String) {
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 { fsync(fd); close(fd) }
    }

    /// SHA-256 of a file, streamed, as lowercase hex, and its size.
    public static func sha256(of path: String) throws -> (hex: String, size: Int64) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw FileError.errno("cannot open", path) }
        defer { close(fd) }
        var h = SHA256()
        var size: Int64 = 0
        let cap = 1 << 20
        let buf = UnsafeMutableRawPointer.allocate(byteCount: cap, alignment: 16)
        defer { buf.deallocate() }
        while true {
            let n = read(fd, buf, cap)
            if n < 0 { if errno == EINTR { continue }; throw FileError.errno("cannot read", path) }
            if n == 0 { break }
            h.update(bufferPointer: UnsafeRawBufferPointer(start: buf, count: n))
            size += Int64(n)
        }
        return (hex(h.finalize()), size)
    }

    public static func sha256(_ data: Data) -> String { hex(SHA256.hash(data: data)) }

    static func hex<D: Sequence>(_ d: D) -> String where D.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8](); out.reserveCapacity(64)
        for b in d { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
        return String(decoding: out, as: UTF8.self)
    }

    public static func exists(_ p: String) -> Bool { access(p, F_OK) == 0 }

    public static func isDirectory(_ p: String) -> Bool {
        var st = stat()
        return stat(p, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    public static func mkdirs(_ p: String, mode: mode_t = 0o755) throws {
        do { try FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true, attributes: [.posixPermissions: Int(mode)]) } catch
        { throw FileError("cannot create directory \(p): \(error.localizedDescription)") }
    }

    /// Removes a file or a whole tree; missing is fine.
    /// `p` with every symbolic link resolved (realpath(3)), nil if it does not exist.
    public static func realPath(_ p: String) -> String? {
        guard let r = realpath(p, nil) else { return nil }
        defer { free(r) }
        return String(cString: r)
    }

    public static func remove(_ p: String) {
        try? FileManager.default.removeItem(atPath: p)
    }
}

/// An advisory lock on a file (flock), released when the value is dropped or `unlock` is called.
public final class FileLock: @unchecked Sendable {
    let fd: Int32
    public enum Mode { case shared, exclusive }

    public init(path: String, mode: Mode, wait: Bool = true) throws {
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw FileError.errno("cannot open lock", path) }
        var op = mode == .shared ? LOCK_SH : LOCK_EX
        if !wait { op |= LOCK_NB }
        while flock(fd, op) != 0 {
            if errno == EINTR { continue }
            let e = errno
            close(fd)
            if e == EWOULDBLOCK { throw FileError("\(path) is locked by another slurm-vm process; try again when it has finished") }
            throw FileError.errno("cannot lock", path, e)
        }
    }

    deinit { close(fd) }
}

/// A process named by pid and start time, so a recycled pid is not mistaken for the original.
public enum ProcessIdentity {
    /// Field 22 of /proc/PID/stat (start time in clock ticks since boot).
    public static func startTime(of pid: Int32) -> Int64? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = s.lastIndex(of: ")")
        else { return nil }
        let fields = s[s.index(after: close)...].split(separator: " ")
        // fields[0] is the state (field 3), so field 22 is fields[19].
        return fields.count > 19 ? Int64(fields[19]) : nil
    }

    public static func isAlive(pid: Int32, start: Int64) -> Bool {
        guard pid > 0, kill(pid, 0) == 0 || errno == EPERM else { return false }
        guard let now = startTime(of: pid) else { return false }
        return start == 0 || now == start
    }
}
