// Matching many jobs against many images, fast by construction and exact by construction:
//
//  1. Autoclusters. Jobs whose Requirements, Rank and "significant" attributes (every attribute an
//     image ad or the job's own Requirements/Rank can reach) are written identically behave identically
//     against every image, so each cluster is matched once (HTCondor's negotiator does the same).
//  2. Clauses. Each side's Requirements is split into its top-level `&&` conjuncts. A conjunct is
//     specialised on its own ad's literal attributes (MY.VCPUs → 4); if what is left depends only on
//     the other ad, it is interned and shared by every ad that produces the same text.
//  3. Memos. A clause's value is computed once per (clause, partner) with the reference evaluator in
//     the real match context, and kept as one byte. Evaluating a pair is then a fold of a few bytes
//     with HTCondor's three-valued `&&`.
//
// Every value is still produced by the exact evaluator; the batch path only avoids recomputing it.

public struct BatchResult: Sendable {
    /// For each job: its best image (index into the images), or nil.
    public let best: [Int?]
    /// Number of (job, image) pairs that match.
    public let matchingPairs: Int
    public let clusters: Int
    public let jobClauses: Int
    public let imageClauses: Int
    /// Clause evaluations actually run with the evaluator (memo misses).
    public let evaluations: Int
}

public final class BatchMatcher {
    public let images: [ClassAd]
    let mm: Matchmaker

    /// Clause value codes: how a conjunct's value takes part in `&&`.
    enum Code: UInt8 { case f = 0, t = 1, u = 2, e = 3, other = 4, unknown = 255 }

    struct SideClauses {
        var ids: [Int32]  // interned clause ids, in order
        var exprs: [Expr]  // the original conjuncts (evaluated in the real context on a miss)
        var hasRequirements: Bool
    }

    var imageSide: [SideClauses] = []
    var imageRankIds: [Int32?] = []
    var imageClauseTable: [String: Int32] = [:]
    /// Names referenced anywhere in the image ads (the job attributes images can see).
    var imageRefs = Set<String>()
    var imagesNeedWholeJob = false
    /// Names some image binds to a non-literal expression: such an attribute may look back at the job,
    /// so a job clause that reaches it cannot be shared between jobs.
    var imageComputedNames = Set<String>()
    /// For each image, the set of names it mentions anywhere (index into `nameSets`), or -1 when it can
    /// see the whole job. Image-side results depend on the job only through these attributes.
    var imageNameSet: [Int] = []
    var nameSets: [[AttrName]] = []

    public init(images: [ClassAd]) {
        self.images = images
        mm = Matchmaker(images: images)
        var setIndex: [[String]: Int] = [:]
        for (i, ad) in images.enumerated() {
            var side = SideClauses(ids: [], exprs: [], hasRequirements: ad.lookup("Requirements") != nil)
            if let req = ad.lookup("Requirements") {
                for c in req.conjuncts {
                    side.exprs.append(c)
                    side.ids.append(BatchMatcher.intern(c, own: ad, ownIndex: i, table: &imageClauseTable))
                }
            }
            imageSide.append(side)
            imageRankIds.append(ad.lookup("Rank").map { BatchMatcher.intern($0, own: ad, ownIndex: i, table: &imageClauseTable) })
            var mine = Set<String>(), mineWhole = false
            for (n, e) in zip(ad.names, ad.exprs) {
                if !BatchMatcher.isConstant(e) { imageComputedNames.insert(n.key) }
                BatchMatcher.collectRefs(e, into: &mine, whole: &mineWhole)
            }
            imageRefs.formUnion(mine)
            imagesNeedWholeJob = imagesNeedWholeJob || mineWhole
            if mineWhole {
                imageNameSet.append(-1)
            } else {
                let sorted = mine.sorted()
                let idx =
                    setIndex[sorted]
                    ?? {
                        nameSets.append(sorted.map(AttrName.init)); setIndex[sorted] = nameSets.count - 1; return nameSets.count - 1
                    }()
                imageNameSet.append(idx)
            }
        }
    }

    // MARK: analysis

    /// Names that denote a whole ad (or the match record) rather than one attribute.
    static let scopeNames: Set<String> = [
        "my", "self", "target", "other", "ad", "left", "right", "lctx", "rctx",
        "root", "toplevel", "parent", "symmetricmatch", "leftmatchesright",
        "rightmatchesleft", "leftrankvalue", "rightrankvalue",
    ]

    /// Every attribute name an expression mentions; `whole` is set when it can see a whole ad (a bare
    /// `TARGET`, eval(), unparse(), a computed subscript, an absolute reference).
    static func collectRefs(_ e: Expr, into s: inout Set<String>, whole: inout Bool) {
        switch e {
        case .literal(.classad), .record, .subscript_: whole = true
        case .attr(let n, let abs):
            if abs || scopeNames.contains(n.key) { whole = true }
            s.insert(n.key)
        case .select(.attr(let bn, false), let n) where scopeNames.contains(bn.key):
            s.insert(n.key)
            s.insert(bn.key)
            return
        case .select(_, let n): s.insert(n.key)
        case .call(let f, _):
            let n = f.name.lowercased()
            if n == "eval" || n == "unparse" { whole = true }
        default: break
        }
        for c in e.children { collectRefs(c, into: &s, whole: &whole) }
    }

    /// A literal, or a list written with only such elements: nothing in it can refer to another ad.
    static func isConstant(_ e: Expr) -> Bool {
        switch e {
        case .literal(let v): return isPlain(v)
        case .list(let items): return items.allSatisfy(isConstant)
        default: return false
        }
    }

    static func isPlain(_ v: Value) -> Bool {
        switch v {
        case .list, .classad: return false;
        default: return true
        }
    }

    /// A plain literal attribute of `ad` (what can be substituted into a clause).
    static func literalAttribute(_ ad: ClassAd, _ n: AttrName) -> Value? {
        guard let e = ad.lookup(n), case .literal(let v) = e, isPlain(v) else { return nil }
        return v
    }

    /// Specialises `e` on `own`'s literal attributes. `shareable` is cleared if the result still depends on `own`.
    static func specialise(_ e: Expr, own: ClassAd, shareable: inout Bool) -> Expr {
        func go(_ e: Expr) -> Expr {
            switch e {
            case .literal(.classad), .record:
                shareable = false
                return e
            case .attr(let n, let abs):
                if abs || scopeNames.contains(n.key) && n.key != "target" && n.key != "other" { shareable = false; return e }
                if own.lookup(n) != nil {
                    if let v = literalAttribute(own, n) { return .literal(v) }
                    shareable = false
                }
                return e
            case .select(.attr(let bn, false), let n) where own.lookup(bn) == nil && (bn.key == "my" || bn.key == "self"):
                if let v = literalAttribute(own, n) { return .literal(v) }
                shareable = false
                return e
            case .select(.attr(let bn, false), _) where own.lookup(bn) == nil && (bn.key == "target" || bn.key == "other"):
                return e
            case .call(let f, _):
                let n = f.name.lowercased()
                if n == "eval" || n == "unparse" { shareable = false }
                return e.mapChildren(go)
            default:
                return e.mapChildren(go)
            }
        }
        return go(e)
    }

    /// The clause id: shared by every ad whose specialised clause reads the same, else private to this ad.
    /// `partnerComputed`: names the partner side binds to computed expressions (nil: the partners are
    /// not known yet, and this side's memo is per partner anyway).
    static func intern(_ e: Expr, own: ClassAd, ownIndex: Int, table: inout [String: Int32], partnerComputed: Set<String>? = nil) -> Int32 {
        var shareable = true
        let residual = specialise(e, own: own, shareable: &shareable)
        if shareable, let computed = partnerComputed {
            var refs = Set<String>(), whole = false
            collectRefs(residual, into: &refs, whole: &whole)
            if (whole && !computed.isEmpty) || !refs.isDisjoint(with: computed) { shareable = false }
        }
        let key = (shareable ? "" : "#\(ownIndex):") + Unparser.unparse(residual)
        if let id = table[key] { return id }
        let id = Int32(table.count)
        table[key] = id
        return id
    }

    // MARK: matching

    @inline(__always)
    static func fold(_ acc: Code, _ b: Code) -> Code {
        switch acc {
        case .f: return .f
        case .t: return b == .other ? .e : b
        case .u:
            switch b {
            case .t, .u: return .u;
            case .f: return .f;
            default: return .e
            }
        default: return .e
        }
    }

    static func code(_ v: Value) -> Code {
        switch v {
        case .undefined: return .u
        case .error: return .e
        default:
            if let b = v.booleanEquivalent { return b ? .t : .f }
            return .other
        }
    }

    /// Evaluates one conjunct of `ad`'s Requirements, as evaluating Requirements would (`ad` must be bound
    /// in a match context).
    static func evalClause(_ e: Expr, of ad: ClassAd) -> Value {
        var st = EvalState(scope: ad)
        if let slot = ad.slot(AttrName("Requirements")) {
            st.inProgress.append((ObjectIdentifier(ad), slot))
            st.depthRemaining -= 1
        }
        do { return try Evaluator.eval(e, &st) } catch { return .error }
    }

    static func evalRank(_ ad: ClassAd, _ ctx: MatchContext) -> Double {
        ctx.evaluate(attribute: "Rank", of: ad).rankValue
    }

    /// Matches every job; returns each job's best image.
    public func matchAll(_ jobs: [ClassAd]) -> BatchResult {
        // 1. autoclusters
        var clusterOf = [Int](repeating: 0, count: jobs.count)
        var signatures: [String: Int] = [:]
        var reps: [Int] = []
        for (j, job) in jobs.enumerated() {
            let sig = signature(job)
            if let c = signatures[sig] { clusterOf[j] = c; continue }
            signatures[sig] = reps.count
            clusterOf[j] = reps.count
            reps.append(j)
        }
        // 2. job-side clauses per cluster
        var jobClauseTable: [String: Int32] = [:]
        var jobSide: [SideClauses] = []
        var jobRankIds: [Int32?] = []
        for (c, j) in reps.enumerated() {
            let job = jobs[j]
            var side = SideClauses(ids: [], exprs: [], hasRequirements: job.lookup("Requirements") != nil)
            if let req = job.lookup("Requirements") {
                for e in req.conjuncts {
                    side.exprs.append(e)
                    side.ids.append(BatchMatcher.intern(e, own: job, ownIndex: c, table: &jobClauseTable, partnerComputed: imageComputedNames))
                }
            }
            jobSide.append(side)
            jobRankIds.append(
                job.lookup("Rank").map { BatchMatcher.intern($0, own: job, ownIndex: c, table: &jobClauseTable, partnerComputed: imageComputedNames) }
            )
        }
        let nImages = images.count
        let nClusters = reps.count
        let nJobClauses = jobClauseTable.count
        let nImageClauses = imageClauseTable.count
        // Which cluster's conjunct each job clause id stands for (any one: shared ids read the same).
        var jobClauseOwner = [(cluster: Int, k: Int)](repeating: (0, 0), count: nJobClauses)
        for c in (0..<nClusters).reversed() { for (k, id) in jobSide[c].ids.enumerated() { jobClauseOwner[Int(id)] = (c, k) } }

        // Memos. Job clauses: one row of codes over all images per clause, computed on first use.
        var jobRows = [UInt8](repeating: Code.unknown.rawValue, count: nJobClauses * nImages)
        var jobRowDone = [Bool](repeating: false, count: nJobClauses)
        var imageMemo = [UInt8](repeating: Code.unknown.rawValue, count: nImageClauses * nClusters)
        var jobRankMemo = [Double](repeating: .nan, count: nJobClauses * nImages)
        var jobRankKnown = [Bool](repeating: false, count: nJobClauses * nImages)
        var imageRankMemo = [Double](repeating: .nan, count: nImageClauses * nClusters)
        var imageRankKnown = [Bool](repeating: false, count: nImageClauses * nClusters)
        var evaluations = 0
        var clusterBest = [Int?](repeating: nil, count: nClusters)
        var clusterMatches = [Int](repeating: 0, count: nClusters)
        // HTCondor's three-valued && on clause codes (f, t, u, e, other), as a table: andTable[acc * 8 + next].
        var andTable = [UInt8](repeating: Code.e.rawValue, count: 64)
        for x in 0..<5 { for y in 0..<5 { andTable[x * 8 + y] = BatchMatcher.fold(Code(rawValue: UInt8(x))!, Code(rawValue: UInt8(y))!).rawValue } }
        var acc = [UInt8](repeating: 0, count: nImages)
        // Projections: a cluster's values of the attributes one image name set mentions, interned.
        struct ProjectedKey: Hashable { let clause: Int32; let set: Int32; let projection: Int32 }
        let nSets = nameSets.count
        var projIds = [Int32](repeating: -2, count: nClusters * max(1, nSets))
        var projTables = [[String: Int32]](repeating: [:], count: nSets)
        var projected: [ProjectedKey: UInt8] = [:]
        var projectedRank: [ProjectedKey: Double] = [:]
        func projection(_ c: Int, _ set: Int) -> Int32 {
            let slot = c * nSets + set
            if projIds[slot] != -2 { return projIds[slot] }
            let job = jobs[reps[c]]
            var key = ""
            var ok = true
            for n in nameSets[set] {
                guard let e = job.lookup(n) else { key += "\u{1}"; continue }
                guard BatchMatcher.isConstant(e) else { ok = false; break }
                key += Unparser.unparse(e) + "\u{1}"
            }
            var id: Int32 = -1
            if ok {
                if let x = projTables[set][key] { id = x } else { id = Int32(projTables[set].count); projTables[set][key] = id }
            }
            projIds[slot] = id
            return id
        }
        func projectedKey(_ clause: Int32, image i: Int, cluster c: Int) -> ProjectedKey? {
            let set = imageNameSet[i]
            guard set >= 0 else { return nil }
            let p = projection(c, set)
            return p >= 0 ? ProjectedKey(clause: clause, set: Int32(set), projection: p) : nil
        }
        // One match record, rebound to each pair that needs an evaluation.
        let shared = MatchContext(left: jobs[reps.first ?? 0], right: images[0])
        defer { shared.release() }
        @discardableResult
        func bind(_ job: ClassAd, _ image: ClassAd) -> MatchContext {
            if shared.left !== job || shared.right !== image { shared.rebind(left: job, right: image) }
            return shared
        }

        func fillJobRow(_ id: Int) {
            let (c, k) = jobClauseOwner[id]
            let job = jobs[reps[c]]
            let e = jobSide[c].exprs[k]
            for i in 0..<nImages {
                bind(job, images[i])
                jobRows[id * nImages + i] = BatchMatcher.code(BatchMatcher.evalClause(e, of: job)).rawValue
            }
            evaluations += nImages
            jobRowDone[id] = true
        }

        for c in 0..<nClusters {
            let js = jobSide[c]
            guard js.hasRequirements, !js.ids.isEmpty else { continue }
            for id in js.ids where !jobRowDone[Int(id)] { fillJobRow(Int(id)) }
            // fold the job's clause rows over all images
            jobRows.withUnsafeBufferPointer { rows in
                andTable.withUnsafeBufferPointer { tbl in
                    acc.withUnsafeMutableBufferPointer { a in
                        let first = Int(js.ids[0]) * nImages
                        for i in 0..<nImages { let v = rows[first + i]; a[i] = v == Code.other.rawValue ? Code.other.rawValue : v }
                        for k in 1..<js.ids.count {
                            let base = Int(js.ids[k]) * nImages
                            for i in 0..<nImages { a[i] = tbl[Int(a[i]) &* 8 &+ Int(rows[base + i])] }
                        }
                    }
                }
            }
            let job = jobs[reps[c]]
            var best: ImageMatch? = nil
            for i in 0..<nImages where acc[i] == Code.t.rawValue {
                let isd = imageSide[i]
                guard isd.hasRequirements else { continue }
                var ctx: MatchContext? = nil
                var a = Code.t.rawValue
                for (k, id) in isd.ids.enumerated() {
                    let slot = Int(id) * nClusters + c
                    var v = imageMemo[slot]
                    if v == Code.unknown.rawValue {
                        let pk = projectedKey(id, image: i, cluster: c)
                        if let pk, let known = projected[pk] {
                            v = known
                        } else {
                            if ctx == nil { ctx = bind(job, images[i]) }
                            v = BatchMatcher.code(BatchMatcher.evalClause(isd.exprs[k], of: images[i])).rawValue
                            evaluations += 1
                            if let pk { projected[pk] = v }
                        }
                        imageMemo[slot] = v
                    }
                    a = k == 0 ? (v == Code.other.rawValue ? Code.other.rawValue : v) : andTable[Int(a) * 8 + Int(v)]
                    if a == Code.f.rawValue { break }
                }
                guard a == Code.t.rawValue else { continue }
                clusterMatches[c] += 1
                var jr = 0.0, ir = 0.0
                if let rid = jobRankIds[c] {
                    let slot = Int(rid) * nImages + i
                    if !jobRankKnown[slot] {
                        if ctx == nil { ctx = bind(job, images[i]) }
                        jobRankMemo[slot] = BatchMatcher.evalRank(job, ctx!); jobRankKnown[slot] = true; evaluations += 1
                    }
                    jr = jobRankMemo[slot]
                }
                if let rid = imageRankIds[i] {
                    let slot = Int(rid) * nClusters + c
                    if !imageRankKnown[slot] {
                        let pk = projectedKey(rid, image: i, cluster: c)
                        if let pk, let known = projectedRank[pk] {
                            imageRankMemo[slot] = known
                        } else {
                            if ctx == nil { ctx = bind(job, images[i]) }
                            imageRankMemo[slot] = BatchMatcher.evalRank(images[i], ctx!); evaluations += 1
                            if let pk { projectedRank[pk] = imageRankMemo[slot] }
                        }
                        imageRankKnown[slot] = true
                    }
                    ir = imageRankMemo[slot]
                }
                let candidate = ImageMatch(imageIndex: i, imageName: mm.info[i].name, jobRank: jr, imageRank: ir)
                if best == nil || mm.better(candidate, best!) { best = candidate }
            }
            clusterBest[c] = best?.imageIndex
        }
        var bestPerJob = [Int?](repeating: nil, count: jobs.count)
        var pairs = 0
        for j in 0..<jobs.count {
            bestPerJob[j] = clusterBest[clusterOf[j]]
            pairs += clusterMatches[clusterOf[j]]
        }
        return BatchResult(
            best: bestPerJob, matchingPairs: pairs, clusters: nClusters, jobClauses: nJobClauses,
            imageClauses: nImageClauses, evaluations: evaluations)
    }

    /// The autocluster key: every job attribute that any evaluation of this job against these images can reach.
    func signature(_ job: ClassAd) -> String {
        var names = imageRefs
        var whole = imagesNeedWholeJob
        for a in ["Requirements", "Rank"] {
            if let e = job.lookup(a) { BatchMatcher.collectRefs(e, into: &names, whole: &whole) }
        }
        if whole { return Unparser.unparse(job) }
        // close over the job's own attributes that the referenced ones refer to
        var frontier = Array(names)
        while let n = frontier.popLast() {
            guard let e = job.lookup(AttrName(n)) else { continue }
            var more = Set<String>()
            BatchMatcher.collectRefs(e, into: &more, whole: &whole)
            if whole { return Unparser.unparse(job) }
            for m in more where !names.contains(m) { names.insert(m); frontier.append(m) }
        }
        names.remove("requirements"); names.remove("rank")
        var parts: [String] = []
        for n in ["requirements", "rank"] + names.sorted() {
            parts.append(n + "=" + (job.lookup(AttrName(n)).map { Unparser.unparse($0) } ?? "∅"))
        }
        return parts.joined(separator: "\u{1}")
    }
}
