// `slurm-vm match`: a dry run of submission. Takes the same --vm-* options as sbatch with the plugin,
// builds the same job ad, and prints the image the matchmaker would choose, or why none matches.

import ArgumentParser
import Catalog
import ClassAd
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The --vm-* options, exactly as the SPANK plugin names them.
struct VMOptions: ParsableArguments {
    @Option(name: .customLong("vm-count"), help: "Guests for the whole job.") var count: String?
    @Option(name: .customLong("vm-vcpus"), help: "vCPUs per guest (each on a dedicated core).") var vcpus: String?
    @Option(name: .customLong("vm-mem"), help: "Memory per guest (e.g. 512M, 2G).") var mem: String?
    @Option(name: .customLong("vm-os"), help: "OS: NAME, NAME:VERSION or NAME>=VERSION.") var os: String?
    @Option(name: .customLong("vm-kernel"), help: "Kernel version: VERSION (prefix) or >=VERSION.") var kernel: String?
    @Option(name: .customLong("vm-libs"), help: "Libraries the image must have, comma-separated.") var libs: String?
    @Option(name: .customLong("vm-image"), help: "An image by NAME or NAME:VERSION/TAG.") var image: String?
    @Option(name: .customLong("vm-requirements"), help: "A ClassAd expression over the image (TARGET.*).") var requirements: String?
    @Option(name: .customLong("vm-rank"), help: "A ClassAd expression ranking images (higher is better).") var rank: String?

    func request() throws -> VMRequest {
        let given: [(String, String?)] = [("count", count), ("vcpus", vcpus), ("mem", mem), ("os", os), ("kernel", kernel),
                                           ("libs", libs), ("image", image), ("requirements", requirements), ("rank", rank)]
        return try VMRequest.fromOptions(Dictionary(uniqueKeysWithValues: given.compactMap { k, v in v.map { (k, $0) } }))
    }
}

struct MatchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "match",
        abstract: "Show which image a job with these --vm-* options would get (a dry run of sbatch).")
    @OptionGroup var catalog: CatalogOption
    @OptionGroup var vm: VMOptions
    @Option(help: "Match as this user (default: you).") var user: String?
    @Option(help: "Match as this Slurm account.") var account: String?
    @Option(help: "Match for this partition.") var partition: String?
    @Flag(help: "Explain the match (always done when nothing matches).") var explain = false
    @Flag(help: "Print the job ad built from the options.") var showAd = false
    @Flag(help: "JSON output.") var json = false

    func run() throws {
        try reporting {
            let req = try vm.request()
            let who = try Self.requester(user: user, account: account, partition: partition)
            let cat = try catalog.open()
            if showAd { print(Unparser.unparseOld(try req.jobAd(for: who))); print("") }
            let m = try cat.match(req, for: who, explain: explain)
            if json {
                var o: [String: Any] = ["matches": m.matches.map { ["name": $0.name, "version": $0.version, "digest": $0.digest] }]
                if let b = m.best { o["image"] = "\(b.name):\(b.version)" }
                if let e = m.explanation { o["explanation"] = e }
                print(jsonString(o))
            } else if let best = m.best {
                print("\(best.label)  \(best.digest)")
                if m.matches.count > 1 { print("  (also matching: \(m.matches.dropFirst().map(\.label).joined(separator: ", ")))") }
                if let e = m.explanation { print(""); print(e) }
            } else {
                print("no image matches this request")
                print("")
                print(m.explanation ?? "")
            }
            if m.best == nil { throw ExitCode(1) }
        }
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
