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

    /// What every process of a guest's VMM shares: on the housekeeping CPUs, ending with us unless kept.
    static func options(for spec: GuestSpec) -> SpawnOptions {
        var o = SpawnOptions()
        o.dieWithParent = !spec.keep
        o.cpus = spec.housekeeping
        o.cgroups = spec.cgroups ?? []
        return o
    }

    static func openLog(_ name: String, for spec: GuestSpec) throws -> Int32 {
        let log = open(spec.runDir + "/" + name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard log >= 0 else { throw RunnerError.spawn("cannot create \(spec.runDir)/\(name): \(String(cString: strerror(errno)))") }
        return log
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

    /// Starts one virtiofsd per shared directory, serving it as the share owner (`GuestSpec.shareOwner`):
    /// it runs as root of a user namespace that maps only to that uid and gid, so whatever a guest
    /// creates there — even as root, even by chown 0 — belongs to the owner; with no capabilities once
    /// it has chrooted into the directory (so it has the owner's access, nothing more); and under the
    /// file guard filter, so a guest's set-uid or set-gid bit is refused (EPERM) and its per-request
    /// identity switches change nothing. We make the vhost-user socket and hand it over listening.
    public static func start(for spec: GuestSpec) throws {
        guard let shares = spec.shares, !shares.isEmpty else { return }
        guard getuid() == 0 else { throw RunnerError.invalidRequest("sharing directories into guests (virtio-fs) needs root") }
        guard FileManager.default.isExecutableFile(atPath: virtiofsd) else {
            throw RunnerError.vmmMissing("\(virtiofsd) is missing; it comes with Debian's qemu-system-common package")
        }
        let owner = spec.shareOwner ?? HostIdentity(uid: getuid(), gid: getgid())
        for (i, dir) in shares.enumerated() {
            let sock = socket(i, of: spec)
            let listener = try UnixSocket.listen(sock)
            defer { close(listener) }
            var o = options(for: spec)
            o.passFDs = [listener]
            o.namespaceRoot = owner
            o.fileGuard = true
            let log = try openLog("virtiofsd\(i).log", for: spec)
            defer { close(log) }
            o.stdout = log; o.stderr = log
            let pid: Int32
            do {
                pid = try Processes.spawn(
                    virtiofsd,
                    [
                        "-f", "--fd=3", "-o", "source=\(dir)", "-o", "cache=auto", "-o", "sandbox=chroot",
                        // Every capability virtiofsd would keep, dropped: it acts with the owner's rights alone.
                        "-o", "modcaps=-chown:-dac_override:-fowner:-fsetid:-setgid:-setuid:-mknod:-setfcap",
                        // Raising the descriptor limit would need a capability on the host.
                        "--rlimit-nofile=0", "-o", "log_level=warn",
                    ], o)
            } catch {
                throw RunnerError.bootFailed(
                    "cannot start the file server for \(dir) (\(error)); it runs in a user namespace of its own (docs/security.md): user namespaces must be enabled (user.max_user_namespaces > 0) and slurm-vmd must not run chrooted",
                    consoleTail: "")
            }
            // The pid and its start time: a server of an adopted guest is recognised by both.
            try? "\(pid)\n\(ProcessIdentity.startTime(of: pid) ?? 0)\n".write(
                toFile: "\(spec.runDir)/virtiofsd\(i).pid", atomically: true, encoding: .utf8)
        }
    }

    /// File servers end when their VMM goes; one that lingers (the VMM never connected) ends here.
    public static func stop(for spec: GuestSpec) {
        for i in 0..<(spec.shares?.count ?? 0) {
            guard let t = try? String(contentsOfFile: "\(spec.runDir)/virtiofsd\(i).pid", encoding: .utf8) else { continue }
            let fields = t.split(separator: "\n")
            guard let p = fields.first.flatMap({ Int32($0) }) else { continue }
            if Processes.isChild(p) {
                kill(p, SIGKILL)  // ours: also reaps it if it already ended
                _ = Processes.wait(p, timeout: 2)
            } else if fields.count > 1, let start = ProcessIdentity.startTime(of: p), String(start) == fields[1] {
                kill(p, SIGKILL)  // an adopted guest's: not ours to reap
                _ = Processes.wait(p, timeout: 2)
            }
        }
    }
}
