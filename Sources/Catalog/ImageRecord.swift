// One image in the catalog: its artefacts (content-addressed blobs), the attributes the builder
// derived from its contents, the attributes an admin set, and its tags. Its ad is the union.

import ClassAd
import Foundation
import Support

public struct Artefact: Codable, Sendable, Equatable {
    /// kernel (a bzImage or vmlinux), initrd (a cpio archive, possibly LZ4), or disk (a raw root disk).
    public var role: String
    public var digest: String
    public var size: Int64
    public init(role: String, digest: String, size: Int64) { self.role = role; self.digest = digest; self.size = size }

    public static let roles = ["kernel", "initrd", "disk"]
}

/// An attribute as ClassAd source text, kept in order so an ad prints the same every time.
public struct Attribute: Codable, Sendable, Equatable {
    public var name: String
    public var expr: String
    public init(_ name: String, _ expr: String) { self.name = name; self.expr = expr }
}

public struct ImageRecord: Codable, Sendable, Equatable {
    public var name: String
    public var version: String
    /// sha256 over the manifest (artefact digests and the kernel command line): equal digests, equal guests.
    public var digest: String
    public var artefacts: [Artefact]
    /// The image's kernel command line (the runner adds its own console and channel options).
    public var cmdline: String
    public var derived: [Attribute]
    public var admin: [Attribute]
    public var tags: [String]
    public var created: Date
    public var source: String

    public init(
        name: String, version: String, artefacts: [Artefact], cmdline: String, derived: [Attribute],
        admin: [Attribute] = [], tags: [String] = [], created: Date = Date(), source: String
    ) {
        self.name = name; self.version = version
        self.artefacts = artefacts.sorted { $0.role < $1.role }
        self.cmdline = cmdline
        self.digest = ImageRecord.manifestDigest(self.artefacts, cmdline: cmdline)
        self.derived = derived; self.admin = admin; self.tags = tags; self.created = created; self.source = source
    }

    public static func manifestDigest(_ artefacts: [Artefact], cmdline: String) -> String {
        var m = "slurm-vm image manifest 1\n"
        for a in artefacts.sorted(by: { $0.role < $1.role }) { m += "\(a.role) \(a.digest) \(a.size)\n" }
        m += "cmdline \(cmdline)\n"
        return "sha256:" + Files.sha256(Data(m.utf8))
    }

    public func artefact(_ role: String) -> Artefact? { artefacts.first { $0.role == role } }

    public var label: String { "\(name):\(version)" }
    public var shortDigest: String { String(digest.dropFirst(7).prefix(12)) }
    public var totalSize: Int64 { artefacts.reduce(0) { $0 + $1.size } }

    /// Attributes that describe the contents; an admin cannot change them.
    public static let protected: Set<String> = [
        "name", "version", "digest", "sizemb", "arch", "os", "osversion",
        "kernelversion", "kernelrelease", "libraries", "packages", "tags",
    ]

    /// The image's ClassAd: identity, derived attributes, admin attributes (which override), tags, and
    /// Requirements/Rank defaulting to true/0.
    public func ad() throws -> ClassAd {
        let ad = ClassAd()
        ad.insert("Name", .string(name))
        ad.insert("Version", .string(version))
        ad.insert("Digest", .string(digest))
        ad.insert("SizeMB", .integer(Int64((totalSize + (1 << 20) - 1) >> 20)))
        ad.insert("Requirements", .boolean(true))
        ad.insert("Rank", .integer(0))
        for a in derived + admin {
            do { ad.insert(a.name, try Parser.parseExpression(a.expr)) } catch {
                throw CatalogError.invalidAttribute(a.name, reason: "stored expression does not parse: \(error)")
            }
        }
        ad.insert("Tags", .list(ListValue(values: tags.map { Value.string($0) })))
        return ad
    }

    /// The guest sizes the image allows, read from its ad (admin attributes override derived ones);
    /// an image that does not say gets these defaults. The one place they are read: from an ad already
    /// built (matching has every image's), or from the record, which builds it.
    public static let defaultMinMemoryMB = 256
    public static func minMemoryMB(in ad: ClassAd) -> Int { integer("MinMemoryMB", in: ad) ?? defaultMinMemoryMB }
    /// At most the request's own ceiling (VMRequest.maxVCPUs).
    public static func maxVCPUs(in ad: ClassAd) -> Int { min(integer("MaxVCPUs", in: ad) ?? VMRequest.maxVCPUs, VMRequest.maxVCPUs) }
    public var minMemoryMB: Int { (try? ad()).map(Self.minMemoryMB(in:)) ?? Self.defaultMinMemoryMB }
    public var maxVCPUs: Int { (try? ad()).map(Self.maxVCPUs(in:)) ?? VMRequest.maxVCPUs }

    static func integer(_ name: String, in ad: ClassAd) -> Int? {
        guard case .integer(let i) = ad.evaluate(name) else { return nil }
        return Int(clamping: i)
    }

    /// Validates `name = expr` as an admin attribute.
    public static func adminAttribute(_ name: String, _ expr: String) throws(CatalogError) -> Attribute {
        guard let f = name.first, f.isLetter || f == "_",
            name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }), name.count <= 64
        else {
            throw .invalidAttribute(name, reason: "an attribute name is a letter or _ followed by letters, digits or _")
        }
        if protected.contains(name.lowercased()) { throw .protectedAttribute(name) }
        do { _ = try Parser.parseExpression(expr) } catch { throw .invalidAttribute(name, reason: "not a valid ClassAd expression: \(error)") }
        return Attribute(name, expr)
    }
}
