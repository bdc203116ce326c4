// A user's VM request — the --vm-* options of sbatch/srun/salloc — and the job ad built from it.
// The SPANK plugin sends exactly this structure (as JSON) to slurm-vmd, and `slurm-vm match` builds it
// from the same options, so a dry run shows what a submission would get.

import ClassAd
import Foundation

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

    public init(count: Int? = nil, vcpus: Int? = nil, memoryMB: Int? = nil, os: String? = nil, kernel: String? = nil,
                libs: [String] = [], image: String? = nil, requirements: String? = nil, rank: String? = nil) {
        self.count = count; self.vcpus = vcpus; self.memoryMB = memoryMB; self.os = os; self.kernel = kernel
        self.libs = libs; self.image = image; self.requirements = requirements; self.rank = rank
    }

    public static let maxCount = 4096
    public static let maxVCPUs = 1024
    public static let maxMemoryMB = 16 << 20   // 16 TiB

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
    /// The option names (without `--vm-`), in the order `--help` lists them.
    public static let optionNames = ["count", "vcpus", "mem", "os", "kernel", "libs", "image", "requirements", "rank"]

    /// Builds and validates a request from raw option strings keyed by option name without `--vm-`
    /// (`count`, `vcpus`, …): what the SPANK plugin sends and what `slurm-vm match` parses. An unknown
    /// key is an error, so a plugin and daemon of different versions never silently drop an option.
    public static func fromOptions(_ o: [String: String]) throws(Invalid) -> VMRequest {
        if let bad = o.keys.sorted().first(where: { !optionNames.contains($0) }) {
            throw Invalid(option: "--vm-\(bad)", reason: "unknown option (known: \(optionNames.map { "--vm-" + $0 }.joined(separator: ", ")))")
        }
        var r = VMRequest()
        if let v = o["count"] { r.count = try parseCount(v, option: "--vm-count", max: maxCount) }
        if let v = o["vcpus"] { r.vcpus = try parseCount(v, option: "--vm-vcpus", max: maxVCPUs) }
        if let v = o["mem"] { r.memoryMB = try parseMemory(v) }
        r.os = o["os"]; r.kernel = o["kernel"]; r.image = o["image"]; r.requirements = o["requirements"]; r.rank = o["rank"]
        r.libs = o["libs"].map(parseList) ?? []
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

    /// Sizes as Slurm writes them: a number of MiB, or with a K/M/G/T suffix (binary units).
    public static func parseMemory(_ s: String, option: String = "--vm-mem") throws(Invalid) -> Int {
        let t = s.trimmingCharacters(in: .whitespaces).uppercased()
        var digits = t
        var mult: Double = 1
        if let last = t.last, "KMGT".contains(last) {
            digits = String(t.dropLast())
            if digits.hasSuffix("I") { digits = String(digits.dropLast()) }
            mult = ["K": 1.0 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024][String(last)]!
        } else if t.hasSuffix("IB") || t.hasSuffix("B") {
            throw Invalid(option: option, reason: "'\(s)' is not a size; write e.g. 512M, 2G or 2048 (MiB)")
        }
        guard let v = Double(digits), v.isFinite, v > 0 else {
            throw Invalid(option: option, reason: "'\(s)' is not a size; write e.g. 512M, 2G or 2048 (MiB)")
        }
        let mb = Int((v * mult).rounded(.up))
        guard mb >= 16 && mb <= maxMemoryMB else {
            throw Invalid(option: option, reason: "\(s) is out of range (16M to 16T per guest)")
        }
        return mb
    }

    public static func parseList(_ s: String) -> [String] {
        s.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
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
        for (opt, text) in [("--vm-requirements", requirements), ("--vm-rank", rank)] {
            guard let text else { continue }
            do { _ = try Parser.parseExpression(text) } catch {
                throw Invalid(option: opt, reason: "not a valid ClassAd expression: \(error)")
            }
        }
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

    /// The job ad: the requester's identity, the request's sizes, and Requirements combining what each
    /// option asks of the image with the user's own expression. Rank is the user's (default 0: the
    /// matchmaker then prefers the image's Rank and the newest version).
    public func jobAd(for who: Requester) throws(Invalid) -> ClassAd {
        try validate()
        var text = "[\n"
        func attr(_ n: String, _ v: String) { text += "  \(n) = \(v);\n" }
        func str(_ s: String) -> String { Unparser.quoteString(Bytes(s), delimiter: UInt8(ascii: "\"")) }
        attr("Owner", str(who.user))
        attr("User", str(who.user))
        attr("UID", String(who.uid))
        attr("GID", String(who.gid))
        if let a = who.account { attr("Account", str(a)); attr("AcctGroup", str(a)) }
        if let p = who.partition { attr("Partition", str(p)) }
        attr("VMCount", String(count ?? 1))
        attr("VCPUs", String(vcpus ?? 1))
        if let m = memoryMB { attr("MemoryMB", String(m)) }
        var clauses = ["TARGET.Arch == \"x86_64\"", "TARGET.MaxVCPUs >= MY.VCPUs"]
        if memoryMB != nil { clauses.append("TARGET.MinMemoryMB <= MY.MemoryMB") }
        if let os {
            let c = try Self.versionConstraint(os, option: "--vm-os", named: true)
            attr("RequestOS", str(c.name!))
            clauses.append("TARGET.OS == MY.RequestOS")
            if let v = c.version {
                attr("RequestOSVersion", str(v))
                clauses.append(Self.versionClause("TARGET.OSVersion", c.op, "MY.RequestOSVersion"))
            }
        }
        if let kernel {
            let c = try Self.versionConstraint(kernel, option: "--vm-kernel", named: false)
            attr("RequestKernel", str(c.version!))
            clauses.append(Self.versionClause("TARGET.KernelVersion", c.op, "MY.RequestKernel"))
        }
        if !libs.isEmpty {
            attr("RequestLibs", "{ " + libs.map(str).joined(separator: ", ") + " }")
            for l in libs { clauses.append("member(\(str(l)), TARGET.Libraries)") }
        }
        if let image {
            let ref = try! ImageReference(image)   // validated above
            switch ref {
            case .name(let n):
                attr("RequestImage", str(n))
                clauses.append("TARGET.Name == MY.RequestImage")
            case .nameVersion(let n, let v):
                attr("RequestImage", str(n)); attr("RequestImageVersion", str(v))
                clauses.append("TARGET.Name == MY.RequestImage")
                clauses.append("(TARGET.Version == MY.RequestImageVersion || member(MY.RequestImageVersion, TARGET.Tags))")
            case .digest(let h):
                attr("RequestImageDigest", str("sha256:" + h))
                clauses.append("substr(TARGET.Digest, 0, size(MY.RequestImageDigest)) == MY.RequestImageDigest")
            }
        }
        if let r = requirements { clauses.append("(\(r))") }
        attr("Requirements", clauses.joined(separator: " && "))
        attr("Rank", rank.map { "(\($0))" } ?? "0")
        text += "]"
        do { return try Parser.parseClassAd(text) } catch {
            throw Invalid(option: "--vm-requirements", reason: "the job ad does not parse: \(error)")
        }
    }

    /// ":" means a version prefix: 12 accepts 12 and 12.5, not 120.
    static func versionClause(_ target: String, _ op: String, _ mine: String) -> String {
        switch op {
        case ">=": return "versionGE(\(target), \(mine))"
        case ">": return "versionGT(\(target), \(mine))"
        case "<=": return "versionLE(\(target), \(mine))"
        case "<": return "versionLT(\(target), \(mine))"
        default: return "(\(target) == \(mine) || substr(\(target), 0, size(\(mine)) + 1) == strcat(\(mine), \".\") || substr(\(target), 0, size(\(mine)) + 1) == strcat(\(mine), \"-\"))"
        }
    }
}
