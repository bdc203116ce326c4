// The unprivileged identity a guest's VMM runs as. Each guest gets a uid of its own (and a gid of the
// same number) from a range no account uses, rather than the job owner's uid: a guest that escapes its
// device emulation then holds an identity that owns nothing on the node — not the owner's files, not
// the owner's other jobs, not the sibling guests — and the owner cannot ptrace or signal the VMM that
// confines their guest. The uid is held by a lock file for the guest's lifetime.

import Foundation
import Support
#if canImport(Glibc)
import Glibc
#endif

/// A uid and gid on the host (a VMM's own, or the owner a file server acts as).
public struct HostIdentity: Sendable, Equatable, Codable {
    public let uid: uid_t
    public let gid: gid_t
    public init(uid: uid_t, gid: gid_t) { self.uid = uid; self.gid = gid }
}

public enum VMMIdentities {
    /// High above any account or container range (systemd's DynamicUser, nspawn and podman use
    /// ranges below 2^31); `SLURM_VM_VMM_UIDS` sets another (`FIRST-LAST`) or turns the drop off (`off`).
    public static let defaultRange: ClosedRange<UInt32> = 4_200_000_000...4_200_099_999

    /// The configured range, nil when VMMs keep the runner's identity: `off`, or the runner is not root
    /// (it could not change identity).
    public static func range(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> ClosedRange<UInt32>? {
        guard getuid() == 0 else { return nil }
        guard let v = environment["SLURM_VM_VMM_UIDS"], !v.trimmingCharacters(in: .whitespaces).isEmpty else { return defaultRange }
        return try parse(v)
    }

    /// `FIRST-LAST`, or `off` (nil).
    public static func parse(_ text: String) throws -> ClosedRange<UInt32>? {
        let v = text.trimmingCharacters(in: .whitespaces)
        if v == "off" { return nil }
        let parts = v.split(separator: "-").map { UInt32($0) }
        guard parts.count == 2, let a = parts[0], let b = parts[1], a > 0, a <= b, b < UInt32.max else {
            throw RunnerError.invalidRequest("VMM uid range '\(v)' is not FIRST-LAST (e.g. 4200000000-4200099999) or off")
        }
        return a...b
    }

    /// The lock directory beside the guests' run directories.
    static func locks(for spec: GuestSpec) -> String {
        URL(fileURLWithPath: spec.runDir).deletingLastPathComponent().appendingPathComponent(".vmm-uids").path
    }

    /// Takes a free uid for `spec`'s guest: a file `<uid>` created exclusively in the lock directory,
    /// holding the guest's run directory. A lock whose run directory is gone (a runner that died) is
    /// stale and taken over.
    public static func take(for spec: GuestSpec, in range: ClosedRange<UInt32>) throws -> HostIdentity {
        let dir = locks(for: spec)
        try Files.mkdirs(dir, mode: 0o700)
        let size = UInt64(range.upperBound - range.lowerBound) + 1
        // Start where the guest's id points, so concurrent boots rarely race for the same file.
        let start = UInt64(truncatingIfNeeded: spec.id.utf8.reduce(UInt64(14_695_981_039_346_656_037)) { ($0 ^ UInt64($1)) &* 1_099_511_628_211 })
        for step in 0..<min(size, 4096) {
            let uid = range.lowerBound + UInt32((start &+ step) % size)
            let path = "\(dir)/\(uid)"
            var fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if fd < 0 && errno == ENOENT {
                // The last guest's release removed the empty directory just now.
                try Files.mkdirs(dir, mode: 0o700)
                fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            }
            if fd < 0 && errno == EEXIST {
                let owner = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
                // A stale lock is taken over (once; a runner that wins the race keeps it). An empty
                // one may be another runner's, being written this moment: left alone.
                if !owner.isEmpty && !Files.exists(owner) && unlink(path) == 0 {
                    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
                }
                if fd < 0 && errno == EEXIST { continue }
            }
            guard fd >= 0 else { throw RunnerError.spawn("cannot take a VMM uid in \(dir): \(String(cString: strerror(errno)))") }
            let text = Array(spec.runDir.utf8)
            _ = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
            return HostIdentity(uid: uid, gid: uid)
        }
        throw RunnerError.spawn("no free VMM uid in \(range) (locks in \(dir)); widen SLURM_VM_VMM_UIDS")
    }

    /// Gives the guest's uid back.
    public static func release(for spec: GuestSpec) {
        let dir = locks(for: spec)
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return }
        for n in names where (try? String(contentsOfFile: "\(dir)/\(n)", encoding: .utf8)) == spec.runDir { unlink("\(dir)/\(n)") }
        rmdir(dir)  // only when no guest holds a uid: the run root is left as it was found
    }
}
