// Child processes for VMMs: started through CLinux (death signal, own session, initial affinity), then
// watched and ended by pid.

import CLinux
import Foundation
import Support
#if canImport(Glibc)
import Glibc
#endif

public struct SpawnOptions: Sendable {
    public var stdin: Int32 = -1, stdout: Int32 = -1, stderr: Int32 = -1
    /// Own session: the child is not hit by the terminal's Ctrl-C (we decide how it ends).
    public var newSession = true
    /// Kill the child if we die (guests that must not outlive their runner); off for kept guests.
    public var dieWithParent = true
    public var cpus: [Int] = []
    public var env: [String]? = nil
    /// Descriptors the child gets as 3, 4, … (a tap for QEMU's `-netdev tap,fd=3`).
    public var passFDs: [Int32] = []
    /// The child's working directory, entered before it takes `identity`.
    public var cwd: String? = nil
    /// The uid and gid the child runs as (no supplementary groups, no_new_privs, no capabilities);
    /// nil: ours.
    public var identity: HostIdentity? = nil
    /// With `identity`: its supplementary groups (none by default).
    public var groups: [gid_t] = []
    /// Control group directories the child joins before anything else (a job's, JobCgroup).
    public var cgroups: [String] = []
    /// Instead of `identity`: the child is root of a user namespace of its own that maps only to these
    /// ids (with its own mount, network and IPC namespaces): a file server acting as a job's owner.
    public var namespaceRoot: HostIdentity? = nil
    /// The file guard seccomp filter (CLinux's clinux_seccomp_file_guard) goes on the child before exec.
    public var fileGuard = false
    /// A file system of its own in which the child sees only these paths (needs root; Jail).
    public var jail: Jail? = nil
    public init() {}
}

/// What a jailed child sees of the node's files (CLinux's `jail`): its mount, network and IPC
/// namespaces; a read-only tmpfs root holding `paths` at their own paths, `links`, /dev/null, /dev/fd
/// and a /proc showing only its own uid's processes. Its executable need not be inside.
public struct Jail: Sendable, Equatable {
    public struct Path: Sendable, Equatable {
        public let path: String
        public let writable: Bool
        public init(_ path: String, writable: Bool = false) { self.path = path; self.writable = writable }
    }
    public struct Link: Sendable, Equatable {
        public let path: String
        public let target: String
    }
    public var paths: [Path]
    public var links: [Link]
    public init(paths: [Path], links: [Link] = []) { self.paths = paths; self.links = links }

    /// What a dynamically linked program from the distribution needs besides its own files: /usr (read
    /// only; programs, libraries, data such as QEMU's firmware), the loader's cache, and the top-level
    /// directories a merged /usr makes links (bound themselves where they are not links).
    public static func system(_ paths: [Path]) -> Jail {
        var j = distribution
        j.paths += paths
        return j
    }

    /// The distribution's part of `system`, read from the node's root once.
    static let distribution: Jail = {
        var j = Jail(paths: [Path("/usr"), Path("/etc/ld.so.cache")])
        for top in ["/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"] {
            if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: top) {
                j.links.append(Link(path: top, target: target))
            } else if FileManager.default.fileExists(atPath: top) {
                j.paths.append(Path(top))
            }
        }
        return j
    }()
}

extension Jail {
    /// Whether the ELF executable at `path` names a program interpreter (the dynamic loader), so
    /// that it needs the distribution's libraries in its jail; false for a static one, or not ELF.
    public static func isDynamicallyLinked(_ path: String) -> Bool {
        guard let h = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? h.close() }
        let head = [UInt8](h.readData(ofLength: 64))
        // 64-bit little-endian ELF: e_phoff at 32, e_phentsize at 54, e_phnum at 56.
        guard head.count == 64, head[0...3] == [0x7f, 0x45, 0x4c, 0x46], head[4] == 2, head[5] == 1 else { return false }
        func le(_ d: [UInt8], _ at: Int, _ n: Int) -> Int { (0..<n).reduce(0) { $0 | Int(d[at + $1]) << (8 * $1) } }
        let (off, size, count) = (le(head, 32, 8), le(head, 54, 2), le(head, 56, 2))
        guard size >= 4, count < 256, (try? h.seek(toOffset: UInt64(off))) != nil else { return false }
        let table = [UInt8](h.readData(ofLength: size * count))
        guard table.count == size * count else { return false }
        return (0..<count).contains { le(table, $0 * size, 4) == 3 }  // PT_INTERP
    }
}

/// C strings and arrays for one call into C, freed together.
final class CArrays {
    private var blocks: [UnsafeMutableRawPointer] = []
    deinit { blocks.forEach { free($0) } }

    func string(_ s: String) -> UnsafePointer<CChar> {
        let p = strdup(s)!
        blocks.append(UnsafeMutableRawPointer(p))
        return UnsafePointer(p)
    }

    /// A NULL-terminated array of C strings (`char *const *`).
    func strings(_ list: [String]) -> UnsafePointer<UnsafeMutablePointer<CChar>?> {
        let a = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: list.count + 1)
        blocks.append(UnsafeMutableRawPointer(a))
        for (i, s) in list.enumerated() { a[i] = UnsafeMutablePointer(mutating: string(s)) }
        a[list.count] = nil
        return UnsafePointer(a)
    }

    /// The same as `const char *const *`.
    func constStrings(_ list: [String]) -> UnsafePointer<UnsafePointer<CChar>?> {
        UnsafeRawPointer(strings(list)).assumingMemoryBound(to: UnsafePointer<CChar>?.self)
    }

    /// A C array of values and its length (nil when empty).
    func values<T>(_ list: [T]) -> (UnsafePointer<T>?, Int32) {
        guard !list.isEmpty else { return (nil, 0) }
        let a = UnsafeMutablePointer<T>.allocate(capacity: list.count)
        blocks.append(UnsafeMutableRawPointer(a))
        a.initialize(from: list, count: list.count)
        return (UnsafePointer(a), Int32(list.count))
    }
}

public enum Processes {
    public static func spawn(_ path: String, _ args: [String], _ o: SpawnOptions) throws -> Int32 {
        // Every C array the options point into lives until clinux_spawn returns.
        let arrays = CArrays()
        var opts = clinux_spawn_opts()
        opts.path = arrays.string(path)
        opts.argv = arrays.strings([path] + args)
        opts.envp = o.env.map { arrays.strings($0) }
        opts.stdin_fd = o.stdin; opts.stdout_fd = o.stdout; opts.stderr_fd = o.stderr
        opts.new_session = o.newSession ? 1 : 0
        opts.death_signal = o.dieWithParent ? SIGKILL : 0
        (opts.cpus, opts.ncpus) = arrays.values(o.cpus.map(Int32.init))
        opts.cwd = o.cwd.map { arrays.string($0) }
        (opts.pass_fds, opts.npass_fds) = arrays.values(o.passFDs)
        let ids = o.namespaceRoot ?? o.identity
        opts.set_ids = o.identity == nil ? 0 : 1
        opts.uid = ids?.uid ?? 0; opts.gid = ids?.gid ?? 0
        opts.userns = o.namespaceRoot == nil ? 0 : 1
        opts.file_guard = o.fileGuard ? 1 : 0
        (opts.groups, opts.ngroups) = arrays.values(o.groups)
        opts.cgroups = arrays.constStrings(o.cgroups.map { $0 + "/cgroup.procs" })
        opts.ncgroups = Int32(o.cgroups.count)
        if let jail = o.jail {
            opts.jail = 1
            // Bound from where they really are (a link in the way would resolve inside the jail), at
            // the path the child is told.
            opts.jail_binds = arrays.constStrings(jail.paths.flatMap { [Files.realPath($0.path) ?? $0.path, $0.path] })
            (opts.jail_writable, opts.njail_binds) = arrays.values(jail.paths.map { $0.writable ? Int32(1) : 0 })
            opts.jail_links = arrays.constStrings(jail.links.flatMap { [$0.path, $0.target] })
            opts.njail_links = Int32(jail.links.count)
        }
        let pid = clinux_spawn(&opts)
        if pid < 0 {
            var doing = clinux_spawn_step_name(opts.failed_step).map { " (" + String(cString: $0) + ")" } ?? ""
            if let jail = o.jail, opts.failed_index >= 0 {
                let i = Int(opts.failed_index)
                doing = doing.dropLast() + ": " + (doing.contains("link") ? jail.links[i].path : jail.paths[i].path) + ")"
            }
            throw RunnerError.spawn("cannot start \(path)\(doing): \(String(cString: strerror(-pid)))")
        }
        return pid
    }

    /// The exit status of a guest's VMM once it has ended, nil while it runs: our child is reaped; an
    /// adopted one (a kept guest another process started) is watched by pid, and ends with 0.
    public static func endStatus(_ pid: Int32) -> Int32? {
        if isChild(pid) { return poll(pid) }
        if kill(pid, 0) == 0 { return nil }
        return poll(pid) ?? 0
    }

    /// Asks `check` every `interval` seconds until it answers or `timeout` passes (nil: forever); asks at
    /// least once, so a zero timeout is a non-blocking check.
    public static func waitFor<T>(timeout: TimeInterval?, interval: TimeInterval, _ check: () -> T?) -> T? {
        let deadline = timeout.map { Date(timeIntervalSinceNow: $0) }
        while true {
            if let v = check() { return v }
            if let deadline, Date() >= deadline { return nil }
            usleep(useconds_t(interval * 1e6))
        }
    }

    /// Non-blocking: the exit status if the child has ended (reaping it).
    public static func poll(_ pid: Int32) -> Int32? {
        var st: Int32 = 0
        let r = waitpid(pid, &st, WNOHANG)
        if r == pid { return st }
        if r < 0 && errno == ECHILD { return -1 }  // not ours, or already reaped
        return nil
    }

    /// Waits up to `timeout` for a process to end; true if it did. Our children are reaped; another
    /// process's (an adopted, kept guest) is watched until it no longer exists.
    public static func wait(_ pid: Int32, timeout: TimeInterval) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        let start = ProcessIdentity.startTime(of: pid)
        while Date() < deadline {
            if isChild(pid) {
                if poll(pid) != nil { return true }
            } else if start == nil || ProcessIdentity.startTime(of: pid) != start || isZombie(pid) {
                return true
            }
            usleep(10_000)
        }
        return false
    }

    static func isZombie(_ pid: Int32) -> Bool {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = s.lastIndex(of: ")") else { return true }
        return s[s.index(after: close)...].split(separator: " ").first == "Z"
    }

    static func isChild(_ pid: Int32) -> Bool {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = s.lastIndex(of: ")")
        else { return false }
        let f = s[s.index(after: close)...].split(separator: " ")
        return f.count > 1 && Int32(f[1]) == getpid()
    }

    /// SIGTERM, then SIGKILL after `grace`.
    public static func terminate(_ pid: Int32, grace: TimeInterval = 3) {
        guard pid > 0 else { return }
        kill(pid, SIGTERM)
        if !wait(pid, timeout: grace) { kill(pid, SIGKILL); _ = wait(pid, timeout: 5) }
    }

    /// Thread ids of a process.
    public static func threads(of pid: Int32) -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []).compactMap { Int32($0) }.sorted()
    }
}

/// A waitpid status in words.
public enum WaitStatus {
    public static func describe(_ status: Int32, what: String) -> String {
        let sig = status & 0x7f
        if status > 0 && sig != 0 && sig != 0x7f {
            let name = strsignal(sig).map { String(cString: $0) } ?? "signal \(sig)"
            return "\(what) killed by signal \(sig) (\(name))"
        }
        return "\(what) exited (status \(status < 0 ? status : (status >> 8) & 0xff))"
    }
}
