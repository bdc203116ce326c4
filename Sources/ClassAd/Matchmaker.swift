// Matching a job against image ads the way HTCondor's negotiator matches jobs to machines: both
// Requirements must accept the other ad, then candidates are ordered by the job's Rank, the image's
// Rank, the newest Version and the Name.

import Foundation

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

public final class Matchmaker: @unchecked Sendable {
    public let images: [ClassAd]
    let info: [ImageInfo]
    /// Each image's Requirements and Rank compiled against the job's attributes (nil: exact evaluator).
    let imageRequirements: [CompiledClause?]
    let imageRanks: [CompiledClause?]
    let jobLayout: PartnerLayout
    let imageHasRequirements: [Bool], imageHasRank: [Bool]
    /// Each image's place in the order that breaks rank ties: newest version, then name, then index.
    let tieOrder: [Int]
    static let requirements = AttrName("Requirements"), rank = AttrName("Rank")
    /// The images' attributes that jobs' compiled expressions read, grown as jobs name new ones.
    var imageLayout = PartnerLayout()
    let imageTable: ColumnTable
    let lock = NSLock()

    public init(images: [ClassAd]) {
        self.images = images
        info = images.enumerated().map { ImageInfo($1, index: $0) }
        var layout = PartnerLayout()
        imageRequirements = images.map { CompiledClause(attribute: "Requirements", of: $0, layout: &layout) }
        imageRanks = images.map { CompiledClause(attribute: "Rank", of: $0, layout: &layout) }
        jobLayout = layout
        let info = self.info
        let byTies = images.indices.sorted { a, b in
            let c = Builtins.naturalCompare(info[a].version, info[b].version)
            if c != 0 { return c > 0 }
            if info[a].name != info[b].name { return info[a].name < info[b].name }
            return a < b
        }
        var order = [Int](repeating: 0, count: images.count)
        for (position, i) in byTies.enumerated() { order[i] = position }
        tieOrder = order
        imageHasRequirements = images.map { $0.lookup(Self.requirements) != nil }
        imageHasRank = images.map { $0.lookup(Self.rank) != nil }
        imageTable = ColumnTable(count: images.count)
    }

    /// Every image that accepts `job` and that `job` accepts, best first. Both Requirements and Ranks
    /// are evaluated for every pair, compiled where they can be, by the exact evaluator where not.
    /// `columns: false` evaluates the job's Requirements image by image too (the benchmark's "each pair
    /// alone" figure); the result is the same.
    public func match(_ job: ClassAd, columns byColumn: Bool = true) -> MatchResult {
        lock.lock()
        defer { lock.unlock() }
        guard job.lookup(Self.requirements) != nil else { return MatchResult(matches: []) }
        let jobRequirements = CompiledClause(attribute: "Requirements", of: job, layout: &imageLayout)
        let jobRank = CompiledClause(attribute: "Rank", of: job, layout: &imageLayout)
        imageTable.extend(imageLayout, images)
        let columns = imageTable.columns
        // The job's Requirements run down the images' columns first (Columns.swift); the images that
        // accept come next, pair by pair.
        let codes = byColumn ? jobRequirements.map { imageTable.codes($0.expr) } : nil
        let jobRow = PartnerColumns(row: jobLayout.row(of: job))
        let hasRank = job.lookup(Self.rank) != nil
        var rankMemo = RankMemo(jobRank, imageTable)
        var out: [ImageMatch] = []
        for i in images.indices {
            var pair = Pair(job: job, image: images[i])
            defer { pair.release() }
            let jobAccepts = columns.holds(codes?[i] ?? MatchCode.unknown.rawValue, jobRequirements, i) {
                pair.context.requirementsHold(of: job)
            }
            guard jobAccepts, imageAccepts(i, jobRow, &pair) else { continue }
            let jr =
                hasRank ? columns.rankValue(jobRank, i, memo: &rankMemo) { pair.context.evaluate(attribute: "Rank", of: job).rankValue } : 0
            out.append(ImageMatch(imageIndex: i, imageName: info[i].name, jobRank: jr, imageRank: imageRank(i, jobRow, 0, &pair)))
        }
        return MatchResult(matches: sortMatches(out))
    }

    /// Reads every attribute the images define into the columns ahead of the first job, with each
    /// column's distinct values: what a matchmaker kept between submissions (the catalog's) does once,
    /// so no submission pays for being the first to name an attribute.
    public func prepare() {
        lock.lock()
        defer { lock.unlock() }
        var seen = Set<AttrName>()
        for ad in images { for n in ad.names where CompiledExpr.partnerName(n) && seen.insert(n).inserted { _ = imageLayout.slot(n) } }
        imageTable.extend(imageLayout, images)
        for k in 0..<imageLayout.count { _ = imageTable.distinctValues(k) }
    }

    /// The same, every pair by the exact evaluator in HTCondor's match record: the reference the
    /// compiled paths are checked against.
    public func matchExactly(_ job: ClassAd) -> MatchResult {
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

    /// One (job, image) pair, with its match record made only if the exact evaluator is needed.
    struct Pair {
        // Not counted: a pair lives inside one loop step, while the caller holds both ads.
        unowned(unsafe) let job: ClassAd
        unowned(unsafe) let image: ClassAd
        var made: MatchContext?
        init(job: ClassAd, image: ClassAd) { self.job = job; self.image = image }
        var context: MatchContext {
            mutating get {
                if let made { return made }
                made = MatchContext(left: job, right: image)
                return made!
            }
        }
        func release() { made?.release() }
    }

    /// Whether image `i`'s Requirements accept the job, whose row of the images' slots is `job`.
    func imageAccepts(_ i: Int, _ job: PartnerColumns, _ pair: inout Pair) -> Bool {
        guard imageHasRequirements[i] else { return false }
        return job.holds(MatchCode.unknown.rawValue, imageRequirements[i], 0) { pair.context.requirementsHold(of: images[i]) }
    }

    /// Image `i`'s Rank of the job at position `at` of `jobs` (0 without one).
    func imageRank(_ i: Int, _ jobs: PartnerColumns, _ at: Int, _ pair: inout Pair) -> Double {
        guard imageHasRank[i] else { return 0 }
        return (imageRanks[i].flatMap { jobs.evaluate($0, at) } ?? pair.context.evaluate(attribute: "Rank", of: images[i])).rankValue
    }

    /// "name version" of image `index`.
    public func label(of index: Int) -> String { info[index].label }

    func sortMatches(_ m: [ImageMatch]) -> [ImageMatch] {
        m.sorted { better($0, $1) }
    }

    /// The negotiator's preference: job Rank, then image Rank, then newest version, then name (and index, for a total order).
    func better(_ a: ImageMatch, _ b: ImageMatch) -> Bool {
        better(a.imageIndex, a.jobRank, a.imageRank, than: b.imageIndex, b.jobRank, b.imageRank)
    }

    @inline(__always)
    func better(_ a: Int, _ jobRankA: Double, _ imageRankA: Double, than b: Int, _ jobRankB: Double, _ imageRankB: Double) -> Bool {
        if jobRankA != jobRankB { return Matchmaker.rankGreater(jobRankA, jobRankB) }
        if imageRankA != imageRankB { return Matchmaker.rankGreater(imageRankA, imageRankB) }
        return tieOrder[a] < tieOrder[b]
    }

    /// NaN ranks sort last.
    static func rankGreater(_ x: Double, _ y: Double) -> Bool {
        if x.isNaN { return false }
        if y.isNaN { return true }
        return x > y
    }
}
