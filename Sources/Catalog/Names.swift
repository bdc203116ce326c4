// Names users and admins type: image names, versions, tags, library and OS names. They end up in
// paths, ClassAd strings and Slurm environment variables, so only a safe alphabet is accepted.

public enum Names {
    static let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-")

    /// Throws unless `s` is 1–64 characters of [A-Za-z0-9._+-], not starting with '.' or '-'.
    public static func check(_ s: String, what: String) throws(CatalogError) {
        if s.isEmpty { throw .invalidName(s, reason: "\(what) is empty") }
        if s.count > 64 { throw .invalidName(s, reason: "\(what) is longer than 64 characters") }
        if let bad = s.first(where: { !allowed.contains($0) }) {
            throw .invalidName(s, reason: "\(what) may contain only letters, digits and . _ + - (found '\(bad)')")
        }
        if s.hasPrefix(".") || s.hasPrefix("-") {
            throw .invalidName(s, reason: "\(what) must not start with '.' or '-'")
        }
    }
}

/// How an image is named on the command line: NAME (newest version), NAME:VERSION, NAME:TAG,
/// or a digest (sha256:HEX or a unique prefix of at least 8 hex digits).
public enum ImageReference: Equatable, Sendable, CustomStringConvertible {
    case name(String)
    case nameVersion(String, String)  // the second part is a version or a tag
    case digest(String)  // hex digits, possibly a prefix

    public init(_ text: String) throws(CatalogError) {
        if text.hasPrefix("sha256:") {
            let hex = String(text.dropFirst(7))
            guard hex.count >= 8, hex.count <= 64, hex.allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else {
                throw .invalidName(text, reason: "a digest is sha256: followed by 8 to 64 lowercase hex digits")
            }
            self = .digest(hex)
            return
        }
        let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        try Names.check(parts[0], what: "the image name")
        if parts.count == 2 {
            try Names.check(parts[1], what: "the version or tag")
            self = .nameVersion(parts[0], parts[1])
        } else {
            self = .name(parts[0])
        }
    }

    public var description: String {
        switch self {
        case .name(let n): return n
        case .nameVersion(let n, let v): return "\(n):\(v)"
        case .digest(let h): return "sha256:\(h)"
        }
    }
}
