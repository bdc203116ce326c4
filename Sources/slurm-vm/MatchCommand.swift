// `slurm-vm match`: a dry run of submission. Takes the same --vm-* options as sbatch with the plugin,
// builds the same job ad, and prints the image the matchmaker would choose, or why none matches.

import ArgumentParser
import Catalog
import ClassAd
import Foundation
import Support
#if canImport(Glibc)
import Glibc
#endif

/// The --vm-* options, exactly as the SPANK plugin names them; names and help lines come from
/// VMRequest.options (a test checks that this list is that one).
struct VMOptions: ParsableArguments {
    static func help(_ name: String) -> ArgumentHelp {
        let o = VMRequest.options.first { $0.name == name }!
        return ArgumentHelp(o.usage, valueName: o.arginfo)
    }
    @Option(name: .customLong("vm-count"), help: help("count")) var count: String?
    @Option(name: .customLong("vm-vcpus"), help: help("vcpus")) var vcpus: String?
    @Option(name: .customLong("vm-mem"), help: help("mem")) var mem: String?
    @Option(name: .customLong("vm-os"), help: help("os")) var os: String?
    @Option(name: .customLong("vm-kernel"), help: help("kernel")) var kernel: String?
    @Option(name: .customLong("vm-libs"), help: help("libs")) var libs: String?
    @Option(name: .customLong("vm-image"), help: help("image")) var image: String?
    @Option(name: .customLong("vm-requirements"), help: help("requirements")) var requirements: String?
    @Option(name: .customLong("vm-rank"), help: help("rank")) var rank: String?

    /// The given options by name without "--vm-", as the plugin sends them.
    var given: [String: String] {
        let all: [(String, String?)] = [
            ("count", count), ("vcpus", vcpus), ("mem", mem), ("os", os), ("kernel", kernel),
            ("libs", libs), ("image", image), ("requirements", requirements), ("rank", rank),
        ]
        return Dictionary(uniqueKeysWithValues: all.compactMap { k, v in v.map { (k, $0) } })
    }
}

struct MatchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "match",
        abstract: "Show which image a job with these --vm-* options would get (a dry run of sbatch).",
        discussion: """
            Job-size options of sbatch go after "--" (slurm-vm match --vm-image tiny -- -N1 --ntasks-per-node=2):
            without --vm-vcpus they decide each guest's vCPUs, exactly as at submission.
            """)
    @OptionGroup var catalog: CatalogOption
    @OptionGroup var vm: VMOptions
    @Option(help: "Match as this user (default: you).") var user: String?
    @Option(help: "Match as this Slurm account.") var account: String?
    @Option(help: "Match for this partition.") var partition: String?
    @Option(help: "CPUs of the cluster's smallest and largest node, MIN-MAX or N (default: asked of Slurm with sinfo when it answers).")
    var nodeCPUs: String?
    @Flag(help: "Explain the match (always done when nothing matches).") var explain = false
    @Flag(help: "Print the job ad built from the options.") var showAd = false
    @Flag(help: "JSON output.") var json = false
    @Argument(parsing: .postTerminator, help: "sbatch's job-size options (-N, -n, --ntasks-per-node, -c, --exclusive).")
    var jobOptions: [String] = []

    func run() throws {
        try reporting {
            let who = try Self.requester(user: user, account: account, partition: partition)
            let cpus = try nodeCPUs.map(Self.parseNodeCPUs) ?? Self.slurmNodeCPUs()
            let submission = try Submission.parse(
                options: vm.given, command: SubmitCommand(tool: "sbatch", arguments: jobOptions), nodeCPUs: cpus, requester: who)
            let m = try catalog.open().match(submission, explain: explain)
            if showAd, let ad = m.jobAd { print(Unparser.unparseOld(ad)); print("") }
            if json {
                var o: [String: Any] = ["matches": m.matches.map { ["name": $0.name, "version": $0.version, "digest": $0.digest] }]
                if let a = m.accepted {
                    o["image"] = a.imageLabel
                    o["guests"] = a.sizing.guests; o["vcpus"] = a.sizing.vcpus; o["memory_mb"] = a.memoryMB
                }
                if let r = m.refusal { o["refusal"] = r }
                if let e = m.explanation { o["explanation"] = e }
                print(jsonString(o))
            } else if let a = m.accepted {
                print("\(a.imageLabel)  \(a.image)")
                print(
                    "  \(a.sizing.guests) guest\(a.sizing.guests == 1 ? "" : "s"), \(a.sizing.vcpusGiven ? "\(a.sizing.vcpus) vCPU(s) each" : a.sizing.vcpusOrigin), \(a.memoryMB) MiB each"
                )
                if m.matches.count > 1 { print("  (also matching: \(m.matches.dropFirst().map(\.label).joined(separator: ", ")))") }
                if let e = m.explanation { print(""); print(e) }
            } else {
                print(m.refusal ?? "refused")
            }
            if m.accepted == nil { throw ExitCode(1) }
        }
    }

    static func parseNodeCPUs(_ s: String) throws -> NodeCPUs {
        let parts = s.split(separator: "-", omittingEmptySubsequences: false).map { Int($0) }
        guard (1...2).contains(parts.count), parts.allSatisfy({ ($0 ?? 0) >= 1 }), let lo = parts.first!, let hi = parts.last!, lo <= hi else {
            throw ValidationError("--node-cpus '\(s)' is not N or MIN-MAX (e.g. 32 or 16-64)")
        }
        return NodeCPUs(smallest: lo, largest: hi)
    }

    /// The CPU counts of Slurm's nodes, as the plugin reads them at submission; nil when Slurm does not
    /// answer within 10 s or has no configuration here (sinfo would wait a minute for a missing file).
    static func slurmNodeCPUs() -> NodeCPUs? {
        let conf = ProcessInfo.processInfo.environment["SLURM_CONF"] ?? "/etc/slurm/slurm.conf"
        guard FileManager.default.fileExists(atPath: conf) else { return nil }
        guard let r = try? Subprocess.run(["timeout", "10", "sinfo", "-h", "-N", "-o", "%c"]), r.status == 0 else { return nil }
        let out = r.text
        let counts = out.split(whereSeparator: \.isNewline).compactMap { Int($0.filter(\.isNumber)) }.filter { $0 > 0 }
        guard let lo = counts.min(), let hi = counts.max() else { return nil }
        return NodeCPUs(smallest: lo, largest: hi)
    }

    static func requester(user: String?, account: String?, partition: String?) throws -> Requester {
        if let user {
            guard let pw = getpwnam(user) else { throw ValidationError("no such user: \(user)") }
            return Requester(user: user, uid: Int(pw.pointee.pw_uid), gid: Int(pw.pointee.pw_gid), account: account, partition: partition)
        }
        let uid = getuid()
        let name = getpwuid(uid).map { String(cString: $0.pointee.pw_name) } ?? String(uid)
        return Requester(user: name, uid: Int(uid), gid: Int(getgid()), account: account, partition: partition)
    }
}
