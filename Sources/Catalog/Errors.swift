// What can go wrong with the catalog, each with what to do about it.

public enum CatalogError: Error, CustomStringConvertible, Equatable {
    case noSuchImage(String, known: [String])
    case ambiguous(String, candidates: [String])
    case invalidName(String, reason: String)
    case exists(String)
    case versionConflict(name: String, version: String, existing: String, new: String)
    case inUse(String, holders: [String])
    case blobMissing(digest: String, path: String)
    case blobCorrupt(digest: String, path: String, actual: String)
    case invalidAttribute(String, reason: String)
    case protectedAttribute(String)
    case badArtefact(String)

    public var description: String {
        switch self {
        case .noSuchImage(let r, let known):
            let k =
                known.isEmpty
                ? "the catalog is empty (add one with `slurm-vm image build` or `image add`)"
                : "known images: " + known.joined(separator: ", ")
            return "no image '\(r)' in the catalog; \(k)"
        case .ambiguous(let r, let c):
            return "'\(r)' matches several images (\(c.joined(separator: ", "))); give NAME:VERSION or a longer digest"
        case .invalidName(let n, let reason): return "invalid name '\(n)': \(reason)"
        case .exists(let n): return "\(n) is already in the catalog"
        case .versionConflict(let n, let v, let old, let new):
            return
                "image \(n):\(v) already exists with digest \(old), and this one is \(new); bump the version (recipe `version`, or --version) or remove the old one first"
        case .inUse(let n, let holders):
            return "image \(n) is in use by \(holders.joined(separator: ", ")); stop those guests first, or pass --force"
        case .blobMissing(let d, let p): return "blob \(d) is missing (\(p)); the catalog is damaged: re-import the image"
        case .blobCorrupt(let d, let p, let a):
            return
                "blob \(p) no longer matches its digest \(d) (its bytes hash to \(a)); refusing to use it: re-import the image, then run `slurm-vm image gc`"
        case .invalidAttribute(let a, let r): return "attribute \(a): \(r)"
        case .protectedAttribute(let a): return "attribute \(a) is derived from the image's contents and cannot be set"
        case .badArtefact(let r): return r
        }
    }
}
