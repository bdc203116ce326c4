// MUNGE credentials authenticate `slurm-vm image push` to the nodes' slurm-vmd: every Slurm cluster
// already runs munged with one key on all hosts, so a credential minted on the admin's host proves to
// any node which uid asked, and munged refuses to decode one twice (no replay) or after its TTL.
// We drive munge(1)/unmunge(1) rather than link libmunge: two short processes per push and node.

import Foundation
import Support

public enum Munge {
    public struct Decoded: Sendable {
        public var uid: UInt32
        public var gid: UInt32
        public var payload: Data
    }

    static func find(_ tool: String) -> String? {
        for d in ["/usr/bin", "/usr/local/bin", "/bin"] where FileManager.default.isExecutableFile(atPath: "\(d)/\(tool)") { return "\(d)/\(tool)" }
        return nil
    }

    /// Runs a tool with `input` on stdin; returns (status, stdout, stderr).
    static func run(_ path: String, _ args: [String], input: Data) throws -> (Int32, Data, String) {
        let r = try Subprocess.run([path] + args, input: input)
        return (r.status, r.output, r.error)
    }

    /// A credential carrying `payload`, as one line of text.
    public static func encode(_ payload: Data) throws -> String {
        guard let munge = find("munge") else {
            throw DaemonError.munge(
                "munge(1) is not installed: image push authenticates to the nodes with MUNGE (apt-get install munge, and run munged with the cluster's key)"
            )
        }
        let (st, out, err) = try run(munge, [], input: payload)
        guard st == 0 else { throw DaemonError.munge("munge could not make a credential: \(err.isEmpty ? "exit \(st)" : err) (is munged running?)") }
        let cred = String(decoding: out, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard cred.hasPrefix("MUNGE:"), !cred.contains("\n") else { throw DaemonError.munge("munge printed something that is not a credential") }
        return cred
    }

    /// What unmunge's exit status (libmunge's munge_err_t) means.
    static func reason(_ status: Int32) -> String {
        switch status {
        case 6: return "cannot reach munged (is it running?)"
        case 7: return "munged timed out"
        case 8, 9, 10, 11, 12, 13, 14: return "the credential is invalid (mangled, or minted with another key)"
        case 15: return "the credential has expired (clocks apart, or older than its TTL)"
        case 16: return "the credential was minted in the future (clocks apart)"
        case 17: return "the credential was replayed (each is good for one use)"
        case 18: return "the credential is not for this user"
        default: return "unmunge exit \(status)"
        }
    }

    /// Checks a credential with the local munged; throws unless it is valid, unexpired and fresh.
    public static func decode(_ cred: String) throws -> Decoded {
        guard cred.hasPrefix("MUNGE:"), cred.count < 64 << 10 else { throw DaemonError.munge("not a MUNGE credential") }
        guard let unmunge = find("unmunge") else { throw DaemonError.munge("unmunge(1) is not installed on this node") }
        let dir = NSTemporaryDirectory() + "slurm-vm-unmunge-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (st, _, err) = try run(
            unmunge, ["--numeric", "--keys=UID,GID", "--metadata=\(dir)/meta", "--output=\(dir)/payload"], input: Data(cred.utf8))
        guard st == 0 else { throw DaemonError.munge("the credential was refused by munged: \(err.isEmpty ? reason(st) : err)") }
        let meta = (try? String(contentsOfFile: dir + "/meta", encoding: .utf8)) ?? ""
        var fields: [String: String] = [:]
        for line in meta.split(separator: "\n") {
            let kv = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            if kv.count == 2 { fields[kv[0]] = kv[1] }
        }
        guard let uid = fields["UID"].flatMap(UInt32.init), let gid = fields["GID"].flatMap(UInt32.init) else {
            throw DaemonError.munge("unmunge gave no UID/GID for the credential")
        }
        return Decoded(uid: uid, gid: gid, payload: FileManager.default.contents(atPath: dir + "/payload") ?? Data())
    }
}
