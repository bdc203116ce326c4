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
    public init() {}
}

public enum Processes {
    public static func spawn(_ path: String, _ args: [String], _ o: SpawnOptions) throws -> Int32 {
        let argv = ([path] + args).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let envp: [UnsafeMutablePointer<CChar>?]? = o.env.map { $0.map { strdup($0) } + [nil] }
        defer { envp?.forEach { free($0) } }
        let cpus = o.cpus.map(Int32.init)
        let pathC = strdup(path)
        defer { free(pathC) }
        let pass = o.passFDs
        let cwdC: UnsafeMutablePointer<CChar>? = o.cwd.flatMap { strdup($0) }
        let cgroupsC: [UnsafePointer<CChar>?] = o.cgroups.map { UnsafePointer(strdup($0 + "/cgroup.procs")) }
        defer { cgroupsC.forEach { free(UnsafeMutableRawPointer(mutating: $0)) } }
        defer { free(cwdC) }
        let pid: Int32 = argv.withUnsafeBufferPointer { av in
            cpus.withUnsafeBufferPointer { cp in
                pass.withUnsafeBufferPointer { pf in
                    o.groups.withUnsafeBufferPointer { gr in
                        cgroupsC.withUnsafeBufferPointer { cg in
                            func go(_ ep: UnsafePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
                                var opts = clinux_spawn_opts(
                                    path: pathC, argv: av.baseAddress, envp: ep,
                                    stdin_fd: o.stdin, stdout_fd: o.stdout, stderr_fd: o.stderr,
                                    new_session: o.newSession ? 1 : 0, death_signal: o.dieWithParent ? SIGKILL : 0,
                                    cpus: cp.baseAddress, ncpus: Int32(cp.count), cwd: UnsafePointer(cwdC),
                                    pass_fds: pf.baseAddress, npass_fds: Int32(pf.count),
                                    set_ids: o.identity == nil ? 0 : 1,
                                    uid: (o.namespaceRoot ?? o.identity)?.uid ?? 0, gid: (o.namespaceRoot ?? o.identity)?.gid ?? 0,
                                    userns: o.namespaceRoot == nil ? 0 : 1, file_guard: o.fileGuard ? 1 : 0,
                                    groups: gr.baseAddress, ngroups: Int32(gr.count),
                                    cgroups: cg.baseAddress.map { UnsafePointer($0) }, ncgroups: Int32(cg.count))
                                return clinux_spawn(&opts)
                            }
                            if let envp { return envp.withUnsafeBufferPointer { go($0.baseAddress) } }
                            return go(nil)
                        }
                    }
                }
            }
        }
        if pid < 0 { throw RunnerError.spawn("cannot start \(path): \(String(cString: strerror(-pid)))") }
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
