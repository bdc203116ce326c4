// A user's VM request — the --vm-* options of sbatch/srun/salloc — and the job ad built from it.
// The SPANK plugin sends exactly this structure (as JSON) to slurm-vmd, and `slurm-vm match` builds it
// from the same options, so a dry run shows what a submission would get.

import ClassAd
import Foundation
import Sizes

public struct VMRequest: Codable, Sendable, Equatable {
    /// --vm-count: guests for the whole job.
    public var count: Int?
    /// --vm-vcpus: vCPUs per guest (each on its own dedicated core).
    public var vcpus: Int?
    /// --vm-mem: memory per guest, MiB.
    public var memoryMB: Int?
    /// --vm-os: NAME, NAME:VERSION (version prefix), or NAME>=VERSION (also >, <=, <).
    public var os: String?
    /// --vm-kernel: VERSION (prefix), or >=VERSION (also >, <=, <).
    public var kernel: String?
    /// --vm-libs: every one must be in the image's Libraries.
    public var libs: [String]
    /// --vm-image: NAME or NAME:VERSION-or-TAG.
    public var image: String?
    /// --vm-requirements / --vm-rank: ClassAd expressions over the image's attributes (TARGET.*).
    public var requirements: String?
    public var rank: String?

    public init(
        count: Int? = nil, vcpus: Int? = nil, memoryMB: Int? = nil, os: String? = nil, kernel: String? = nil,
        libs: [String] = [], image: String? = nil, requirements: String? = nil, rank: String? = nil
    ) {
        self.count = count; self.vcpus = vcpus; self.memoryMB = memoryMB; self.os = os; self.kernel = kernel
        self.libs = libs; self.image = image; self.requirements = requirements; self.rank = rank
    }

    public static let maxCount = 4096
    /// The most vCPUs a guest can have on every backend: x86 xAPIC ids are 8 bits and 255 is the
    /// broadcast id. The one ceiling of the request; images may set a lower MaxVCPUs.
    public static let maxVCPUs = 254
    public static let maxMemoryMB = 16 << 20  // 16 TiB

    public struct Invalid: Error, CustomStringConvertible, Equatable {
        public let option: String
        public let reason: String
        public var description: String { "\(option): \(reason)" }
    }
}

/// Who asks: the submitting user, as Slurm knows them. Image Requirements see these attributes.
public struct Requester: Codable, Sendable, Equatable {
    public var user: String
    public var uid: Int
    public var gid: Int
    public var account: String?
    public var partition: String?
    public init(user: String, uid: Int, gid: Int, account: String? = nil, partition: String? = nil) {
        self.user = user; self.uid = uid; self.gid = gid; self.account = account; self.partition = partition
    }
}

extension VMRequest {
    /// One --vm-* option: its name without "--vm-", the plugin's environment fallback, the value's
    /// placeholder and the help line. The one list of options: the plugin's C table
    /// (Plugin/src/options.c) and `slurm-vm match` are checked against it by tests.
    public struct Option: Sendable, Equatable {
        public let name: String
        public let env: String
        public let arginfo: String
        public let usage: String
    }

    public static let options: [Option] = [
        Option(name: "count", env: "SLURM_VM_COUNT", arginfo: "N", usage: "Run the job's steps in N guests (VMs) over its nodes."),
        Option(name: "vcpus", env: "SLURM_VM_VCPUS", arginfo: "N", usage: "vCPUs per guest, each pinned to a dedicated core."),
        Option(name: "mem", env: "SLURM_VM_MEM", arginfo: "SIZE", usage: "Memory per guest, preallocated (e.g. 512M, 2G)."),
        Option(name: "os", env: "SLURM_VM_OS", arginfo: "OS", usage: "Guest OS: NAME, NAME:VERSION or NAME>=VERSION."),
        Option(name: "kernel", env: "SLURM_VM_KERNEL", arginfo: "VERSION", usage: "Guest kernel version: VERSION or >=VERSION."),
        Option(name: "libs", env: "SLURM_VM_LIBS", arginfo: "LIST", usage: "Libraries the guest image must have, comma-separated."),
        Option(name: "image", env: "SLURM_VM_IMAGE", arginfo: "NAME", usage: "Guest image by NAME or NAME:VERSION."),
        Option(name: "requirements", env: "SLURM_VM_REQUIREMENTS", arginfo: "EXPR", usage: "ClassAd expression the image must satisfy."),
        Option(name: "rank", env: "SLURM_VM_RANK", arginfo: "EXPR", usage: "ClassAd expression ranking matching images."),
    ]

    /// The option names (without `--vm-`), in the order `--help` lists them.
    public static var optionNames: [String] { options.map(\.name) }

    /// Builds and validates a request from raw option strings keyed by option name without `--vm-`
    /// (`count`, `vcpus`, …): what the SPANK plugin sends and what `slurm-vm match` parses. An unknown
    /// key is an error, so a plugin and daemon of different versions never silently drop an option.
    public static func fromOptions(_ o: [String: String]) throws(Invalid) -> VMRequest {
        if let bad = o.keys.sorted().first(where: { !optionNames.contains($0) }) {
            throw Invalid(option: "--vm-\(bad)", reason: "unknown option (known: \(optionNames.map { "--vm-" + $0 }.joined(separator: ", ")))")
        }
        if let empty = optionNames.first(where: { o[$0].map { $0.allSatisfy(\.isWhitespace) } ?? false }) {
            throw Invalid(option: "--vm-\(empty)", reason: "is empty; give a value or leave the option out")
        }
        var r = VMRequest()
        if let v = o["count"] { r.count = try parseCount(v, option: "--vm-count", max: maxCount) }
        if let v = o["vcpus"] { r.vcpus = try parseCount(v, option: "--vm-vcpus", max: maxVCPUs) }
        if let v = o["mem"] { r.memoryMB = try parseMemory(v) }
        r.os = o["os"]; r.kernel = o["kernel"]; r.image = o["image"]; r.requirements = o["requirements"]; r.rank = o["rank"]
        if let v = o["libs"] { r.libs = try parseList(v, option: "--vm-libs") }
        try r.validate()
        return r
    }
}

extension VMRequest {
    /// Option-value parsers shared by every front end (CLI, plugin via the daemon).
    public static func parseCount(_ s: String, option: String, max: Int) throws(Invalid) -> Int {
        guard let n = Int(s.trimmingCharacters(in: .whitespaces)) else {
            throw Invalid(option: option, reason: "'\(s)' is not a whole number")
        }
        guard n >= 1 && n <= max else { throw Invalid(option: option, reason: "\(n) is out of range (1 to \(max))") }
        return n
    }

    /// Memory per guest as Slurm writes it (a plain number is MiB), parsed by the one size parser.
    public static func parseMemory(_ s: String, option: String = "--vm-mem") throws(Invalid) -> Int {
        let bytes: Int64
        do { bytes = try ByteSize.parse(s, bare: .mebibytes) } catch { throw Invalid(option: option, reason: error.description) }
        let mb = ByteSize.mebibytes(bytes)
        guard mb >= 16 && mb <= Int64(maxMemoryMB) else {
            throw Invalid(option: option, reason: "\(s) is out of range (16M to 16T per guest)")
        }
        return Int(mb)
    }

    /// A comma-separated list; an empty item (`a,,b`, a trailing comma) is a mistake, not nothing.
    public static func parseList(_ s: String, option: String) throws(Invalid) -> [String] {
        let items = s.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        guard !items.contains(where: \.isEmpty) else {
            throw Invalid(option: option, reason: "'\(s)' has an empty item; write names separated by single commas (e.g. mpich,fftw3)")
        }
        return items
    }

    /// Checks every field; the error names the option and what to write instead.
    public func validate() throws(Invalid) {
        if let c = count, c < 1 || c > Self.maxCount { throw Invalid(option: "--vm-count", reason: "\(c) is out of range (1 to \(Self.maxCount))") }
        if let v = vcpus, v < 1 || v > Self.maxVCPUs { throw Invalid(option: "--vm-vcpus", reason: "\(v) is out of range (1 to \(Self.maxVCPUs))") }
        if let m = memoryMB, m < 16 || m > Self.maxMemoryMB { throw Invalid(option: "--vm-mem", reason: "\(m) MiB is out of range (16M to 16T)") }
        if let os { _ = try Self.versionConstraint(os, option: "--vm-os", named: true) }
        if let kernel { _ = try Self.versionConstraint(kernel, option: "--vm-kernel", named: false) }
        for l in libs { try check(l, "--vm-libs", "a library name") }
        if let image {
            do { _ = try ImageReference(image) } catch { throw Invalid(option: "--vm-image", reason: error.description) }
        }
        if let requirements { _ = try Self.expression(requirements, option: "--vm-requirements") }
        if let rank { _ = try Self.expression(rank, option: "--vm-rank") }
    }

    func check(_ s: String, _ option: String, _ what: String) throws(Invalid) {
        do { try Names.check(s, what: what) } catch { throw Invalid(option: option, reason: error.description) }
    }

    /// "debian", "debian:12", "debian>=12", ">=6.1", "6.1" → (name, operator, version).
    static func versionConstraint(_ s: String, option: String, named: Bool) throws(Invalid) -> (name: String?, op: String, version: String?) {
        let ops = [">=", "<=", ">", "<", ":", "="]
        var name: String? = nil, op = "", version: String? = nil
        if let (i, o) = ops.compactMap({ o in s.range(of: o).map { ($0, o) } }).min(by: { $0.0.lowerBound < $1.0.lowerBound }) {
            name = String(s[..<i.lowerBound]); op = o; version = String(s[i.upperBound...])
        } else if named {
            name = s
        } else {
            op = ":"; version = s
        }
        if named {
            guard let n = name, !n.isEmpty else { throw Invalid(option: option, reason: "'\(s)' names no OS; write e.g. debian or debian:12") }
            do { try Names.check(n, what: "the OS name") } catch { throw Invalid(option: option, reason: error.description) }
        } else if let n = name, !n.isEmpty {
            throw Invalid(option: option, reason: "'\(s)' is not a version constraint; write e.g. 6.1 or >=6.1")
        }
        if let v = version {
            do { try Names.check(v, what: "the version") } catch { throw Invalid(option: option, reason: error.description) }
        }
        return (name, op == "=" ? ":" : op, version)
    }

    /// The job ad: the requester's identity, the decided sizes, and Requirements combining what each
    /// option asks of the image with the user's own expression. Rank is the user's (default 0: the
    /// matchmaker then prefers the image's Rank and the newest version). Built as expressions: user
    /// values are literals in the ad and never pass through ClassAd source text.
    public func jobAd(for who: Requester, sizing: Sizing) throws(Invalid) -> ClassAd {
        let ad = ClassAd()
        func str(_ s: String) -> Expr { .literal(.string(Bytes(s))) }
        func int(_ i: Int) -> Expr { .literal(.integer(Int64(i))) }
        ad.insert("Owner", str(who.user))
        ad.insert("User", str(who.user))
        ad.insert("UID", int(who.uid))
        ad.insert("GID", int(who.gid))
        if let a = who.account { ad.insert("Account", str(a)); ad.insert("AcctGroup", str(a)) }
        if let p = who.partition { ad.insert("Partition", str(p)) }
        ad.insert("VMCount", int(sizing.guests))
        ad.insert("VCPUs", int(sizing.vcpus))
        if let m = memoryMB { ad.insert("MemoryMB", int(m)) }
        var clauses = [Self.clause("TARGET.Arch == \"x86_64\""), Self.clause("TARGET.MaxVCPUs >= MY.VCPUs")]
        if memoryMB != nil { clauses.append(Self.clause("TARGET.MinMemoryMB <= MY.MemoryMB")) }
        if let os {
            let c = try Self.versionConstraint(os, option: "--vm-os", named: true)
            ad.insert("RequestOS", str(c.name!))
            clauses.append(Self.clause("TARGET.OS == MY.RequestOS"))
            if let v = c.version {
                ad.insert("RequestOSVersion", str(v))
                clauses.append(Self.clause(Self.versionClause("TARGET.OSVersion", c.op, "MY.RequestOSVersion")))
            }
        }
        if let kernel {
            let c = try Self.versionConstraint(kernel, option: "--vm-kernel", named: false)
            ad.insert("RequestKernel", str(c.version!))
            clauses.append(Self.clause(Self.versionClause("TARGET.KernelVersion", c.op, "MY.RequestKernel")))
        }
        if !libs.isEmpty {
            ad.insert("RequestLibs", .list(libs.map(str)))
            for l in libs { clauses.append(.call(Function(name: "member"), [str(l), Self.clause("TARGET.Libraries")])) }
        }
        if let image {
            let ref: ImageReference
            do { ref = try ImageReference(image) } catch { throw Invalid(option: "--vm-image", reason: error.description) }
            switch ref {
            case .name(let n):
                ad.insert("RequestImage", str(n))
                clauses.append(Self.clause("TARGET.Name == MY.RequestImage"))
            case .nameVersion(let n, let v):
                ad.insert("RequestImage", str(n)); ad.insert("RequestImageVersion", str(v))
                clauses.append(Self.clause("TARGET.Name == MY.RequestImage"))
                clauses.append(Self.clause("(TARGET.Version == MY.RequestImageVersion || member(MY.RequestImageVersion, TARGET.Tags))"))
            case .digest(let h):
                ad.insert("RequestImageDigest", str("sha256:" + h))
                clauses.append(Self.clause("substr(TARGET.Digest, 0, size(MY.RequestImageDigest)) == MY.RequestImageDigest"))
            }
        }
        if let r = requirements { clauses.append(.paren(try Self.expression(r, option: "--vm-requirements"))) }
        ad.insert("Requirements", clauses.dropFirst().reduce(clauses[0]) { .binary(.logicalAnd, $0, $1) })
        if let rank { ad.insert("Rank", .paren(try Self.expression(rank, option: "--vm-rank"))) } else { ad.insert("Rank", int(0)) }
        return ad
    }

    /// A fixed clause of the job ad: our own source text, naming the ad's attributes, never a user value.
    static func clause(_ text: String) -> Expr {
        do { return try Parser.parseExpression(text) } catch { fatalError("job ad clause '\(text)' does not parse: \(error)") }
    }

    static func expression(_ text: String, option: String) throws(Invalid) -> Expr {
        do { return try Parser.parseExpression(text) } catch {
            throw Invalid(option: option, reason: "not a valid ClassAd expression: \(error)")
        }
    }

    /// ":" means a version prefix: 12 accepts 12 and 12.5, not 120.
    static func versionClause(_ target: String, _ op: String, _ mine: String) -> String {
        switch op {
        case ">=": return "versionGE(\(target), \(mine))"
        case ">": return "versionGT(\(target), \(mine))"
        case "<=": return "versionLE(\(target), \(mine))"
        case "<": return "versionLT(\(target), \(mine))"
        default:
            return
                "(\(target) == \(mine) || substr(\(target), 0, size(\(mine)) + 1) == strcat(\(mine), \".\") || substr(\(target), 0, size(\(mine)) + 1) == strcat(\(mine), \"-\"))"
        }
    }
}
