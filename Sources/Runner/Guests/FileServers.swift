// The processes a guest's VMM needs beside it, started the same way for every backend: output to a log
// in the run directory, on the housekeeping CPUs, ending with us unless the guest is kept; and the tap
// every backend gets as an open descriptor. Among the processes
// the file servers: QEMU's virtio-fs daemon, one per shared directory, serving it on a vhost-user
// socket (`fs<i>.sock`) in the run directory that QEMU or slurm-vm-vmm connects to; the guest mounts
// it by the tag `share<i>` at the same path (the agent's slurmvm.share=).

import CLinux
import Foundation
import Support
#if canImport(Glibc)
import Glibc
#endif

public enum FileServers {
    public static let virtiofsd = "/usr/lib/qemu/virtiofsd"

    public static func socket(_ i: Int, of spec: GuestSpec) -> String { "\(spec.runDir)/fs\(i).sock" }
    public static func tag(_ i: Int) -> String { "share\(i)" }

    /// The agent's option naming each share's tag and mount point.
    public static func cmdline(_ spec: GuestSpec) -> String? {
        guard let sh = spec.shares, !sh.isEmpty else { return nil }
        return "slurmvm.share=" + sh.enumerated().map { "\(tag($0.offset)):\($0.element)" }.joined(separator: ",")
    }

    /// A process of the guest's VMM (the VMM itself, a file server), optionally in `cwd` as `identity`.
    public static func spawn(
        _ path: String, _ args: [String], log name: String, for spec: GuestSpec, passFDs: [Int32] = [], cwd: String? = nil,
        identity: VMMIdentity? = nil
    ) throws -> Int32 {
        let log = open(spec.runDir + "/" + name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer { if log >= 0 { close(log) } }
        var o = SpawnOptions()
        o.passFDs = passFDs
        o.cwd = cwd
        o.identity = identity
        o.stdout = log; o.stderr = log
        o.dieWithParent = !spec.keep
        o.cpus = spec.housekeeping
        return try Processes.spawn(path, args, o)
    }

    /// The guest's tap (the job network the node made), opened here and handed to the VMM as
    /// descriptor 3, so the VMM needs no right to open network devices; -1 when the guest has none.
    public static func openTap(for spec: GuestSpec) throws -> Int32 {
        guard let n = spec.network else { return -1 }
        let tap = clinux_open_tap(n.tap)
        guard tap >= 0 else {
            throw RunnerError.bootFailed("cannot open guest \(spec.id)'s tap \(n.tap): \(String(cString: strerror(-tap)))", consoleTail: "")
        }
        return tap
    }

    /// Starts one virtiofsd per shared directory and waits for its socket.
    public static func start(for spec: GuestSpec) throws {
        guard let shares = spec.shares, !shares.isEmpty else { return }
        guard getuid() == 0 else { throw RunnerError.invalidRequest("sharing directories into guests (virtio-fs) needs root") }
        guard FileManager.default.isExecutableFile(atPath: virtiofsd) else {
            throw RunnerError.vmmMissing("\(virtiofsd) is missing; it comes with Debian's qemu-system-common package")
        }
        for (i, dir) in shares.enumerated() {
            let sock = socket(i, of: spec)
            let pid = try spawn(
                virtiofsd,
                [
                    "-f", "--socket-path=\(sock)", "-o", "source=\(dir)", "-o", "cache=auto",
                    "-o", "sandbox=namespace", "-o", "log_level=warn",
                ],
                log: "virtiofsd\(i).log", for: spec)
            try? String(pid).write(toFile: "\(spec.runDir)/virtiofsd\(i).pid", atomically: true, encoding: .utf8)
            let deadline = Date(timeIntervalSinceNow: 5)
            while !Files.exists(sock) {
                if Processes.poll(pid) != nil || Date() > deadline {
                    kill(pid, SIGKILL); _ = Processes.wait(pid, timeout: 1)
                    throw RunnerError.bootFailed(
                        "virtiofsd for \(dir) did not start", consoleTail: Console.tail(spec.runDir + "/virtiofsd\(i).log", lines: 5))
                }
                usleep(5_000)
            }
        }
    }

    /// File servers end when their VMM goes; one that lingers (the VMM never connected) ends here.
    public static func stop(for spec: GuestSpec) {
        for i in 0..<(spec.shares?.count ?? 0) {
            guard let t = try? String(contentsOfFile: "\(spec.runDir)/virtiofsd\(i).pid", encoding: .utf8), let p = Int32(t) else { continue }
            if Processes.isChild(p) {
                kill(p, SIGKILL)  // ours: also reaps it if it already ended
                _ = Processes.wait(p, timeout: 2)
            } else if let cmd = FileManager.default.contents(atPath: "/proc/\(p)/cmdline"),
                String(decoding: cmd, as: UTF8.self).contains(socket(i, of: spec))
            {
                kill(p, SIGKILL)  // an adopted guest's: not ours to reap
                _ = Processes.wait(p, timeout: 2)
            }
        }
    }
}
