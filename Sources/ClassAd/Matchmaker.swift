// Matching a job against image ads the way HTCondor's negotiator matches jobs to machines: both
// Requirements must accept the other ad, then candidates are ordered by the job's Rank, the image's
// Rank, the newest Version and the Name.

public struct ImageMatch: Sendable {
    public let imageIndex: Int
    public let imageName: String
    public let jobRank: Double
    public let imageRank: Double
}

public struct MatchResult: Sendable {
    /// Every image that matches, best first.
    public let matches: [ImageMatch]
    public var best: ImageMatch? { matches.first }
}

/// Identity of an image ad for ordering and messages.
struct ImageInfo {
    let name: String
    let version: [UInt8]
    /// "name version", as people are shown an image.
    var label: String { version.isEmpty ? name : name + " " + String(decoding: version, as: UTF8.self) }

    init(_ ad: ClassAd, index: Int) {
        if case .string(let s) = ad.evaluate("Name") { name = s.description } else { name = "image #\(index + 1)" }
        switch ad.evaluate("Version") {
        case .string(let s): version = s.cString
        case .integer(let i): version = Array(String(i).utf8)
        case .real(let r): version = Array(String(r).utf8)
        default: version = []
        }
    }
}

public final class Matchmaker {
    public let images: [ClassAd]
    let info: [ImageInfo]

    public init(images: [ClassAd]) {
        self.images = images
        info = images.enumerated().map { ImageInfo($1, index: $0) }
    }

    /// The exact, pair-by-pair evaluation (the reference the batch matcher is checked against).
    public func match(_ job: ClassAd) -> MatchResult {
        var out: [ImageMatch] = []
        for (i, image) in images.enumerated() {
            let ctx = MatchContext(left: job, right: image)
            defer { ctx.release() }
            guard ctx.requirementsHold(of: job), ctx.requirementsHold(of: image) else { continue }
            let jr = job.lookup("Rank") == nil ? 0 : ctx.evaluate(attribute: "Rank", of: job).rankValue
            let ir = image.lookup("Rank") == nil ? 0 : ctx.evaluate(attribute: "Rank", of: image).rankValue
            out.append(ImageMatch(imageIndex: i, imageName: info[i].name, jobRank: jr, imageRank: ir))
        }
        return MatchResult(matches: sortMatches(out))
    }

    /// "name version" of image `index`.
    public func label(of index: Int) -> String { info[index].label }

    func sortMatches(_ m: [ImageMatch]) -> [ImageMatch] {
        m.sorted { better($0, $1) }
    }

    /// The negotiator's preference: job Rank, then image Rank, then newest version, then name (and index, for a total order).
    func better(_ a: ImageMatch, _ b: ImageMatch) -> Bool {
        if a.jobRank != b.jobRank { return Matchmaker.rankGreater(a.jobRank, b.jobRank) }
        if a.imageRank != b.imageRank { return Matchmaker.rankGreater(a.imageRank, b.imageRank) }
        let c = Builtins.naturalCompare(info[a.imageIndex].version, info[b.imageIndex].version)
        if c != 0 { return c > 0 }
        let na = info[a.imageIndex].name, nb = info[b.imageIndex].name
        if na != nb { return na < nb }
        return a.imageIndex < b.imageIndex
    }

    /// NaN ranks sort last.
    static func rankGreater(_ x: Double, _ y: Double) -> Bool {
        if x.isNaN { return false }
        if y.isNaN { return true }
        return x > y
    }
}
