// Matching many jobs against many images, fast by construction and exact by construction:
//
//  1. Autoclusters. Jobs whose Requirements, Rank and "significant" attributes (every attribute an
//     image ad or the job's own Requirements/Rank can reach) are written identically behave identically
//     against every image, so each cluster is matched once (HTCondor's negotiator does the same).
//  2. Clauses. Each job's Requirements is split into its top-level `&&` conjuncts. A conjunct is
//     specialised on its own ad's literal attributes (MY.VCPUs → 4); if what is left depends only on
//     the image, it is interned and shared by every job whose residue is written the same (WrittenForm).
//  3. Columns. Each distinct clause is compiled once (Compiled.swift) and run down the images' columns
//     of plain attribute values, giving a bitset of the images it holds for; a clause of the commonest
//     shape, an integer attribute against a constant, is a loop over the column's integers. A cluster's
//     candidates are the AND of its clauses' bitsets: HTCondor's three-valued `&&` is true exactly
//     when every operand is.
//  4. Images' side. Each image's compiled Requirements runs down the columns of its candidate jobs
//     (a row of plain values per cluster) the same way; then both Ranks of each pair that matched (a
//     Rank of one attribute once per distinct value of it).
//
// Whatever does not compile, or meets a value that is not plain (an attribute bound to an expression),
// goes to the exact evaluator in HTCondor's match record, for that clause and image only.

public struct BatchResult: Sendable {
    /// For each job: its best image (index into the images), or nil.
    public let best: [Int?]
    /// Number of (job, image) pairs that match.
    public let matchingPairs: Int
    public let clusters: Int
    /// Distinct job clauses, and how many of them compiled.
    public let jobClauses: Int
    public let compiledClauses: Int
    /// Evaluations the exact evaluator ran (what did not compile or met a value that is not plain).
    public let evaluations: Int
}

public final class BatchMatcher {
    public let images: [ClassAd]
    let mm: Matchmaker

    /// Names referenced anywhere in the image ads (the job attributes images can see).
    var imageRefs = Set<AttrKey>()
    var imagesNeedWholeJob = false
    /// Names some image binds to a non-literal expression: such an attribute may look back at the job,
    /// so a job clause that reaches it cannot be shared between jobs.
    var imageComputedNames = Set<AttrKey>()
    /// The images' attributes job clauses read, and their values.
    var layout = PartnerLayout()
    let imageTable: ColumnTable

    public init(images: [ClassAd]) {
        self.images = images
        mm = Matchmaker(images: images)
        imageTable = ColumnTable(count: images.count)
        for ad in images {
            var mine = Set<AttrKey>(), mineWhole = false
            for (n, e) in zip(ad.names, ad.exprs) {
                if !e.isConstant { imageComputedNames.insert(n.k) }
                BatchMatcher.collectRefs(e, into: &mine, whole: &mineWhole)
            }
            imageRefs.formUnion(mine)
            imagesNeedWholeJob = imagesNeedWholeJob || mineWhole
        }
    }

    // MARK: analysis

    /// Every attribute name an expression mentions; `whole` is set when it can see a whole ad (a bare
    /// `TARGET`, eval(), unparse(), a computed subscript, an absolute reference).
    static func collectRefs(_ e: Expr, into s: inout Set<AttrKey>, whole: inout Bool) {
        switch e {
        case .literal(.classad), .record, .subscript_: whole = true
        case .attr(let n, let abs):
            if abs || n.namesScope { whole = true }
            s.insert(n.k)
        case .select(.attr(let bn, false), let n) where bn.namesScope:
            s.insert(n.k)
            s.insert(bn.k)
            return
        case .select(_, let n): s.insert(n.k)
        case .call(let f, _):
            let n = f.lowercasedName
            if n == "eval" || n == "unparse" { whole = true }
        default: break
        }
        e.forEachChild { collectRefs($0, into: &s, whole: &whole) }
    }

    /// A plain literal attribute of `ad` (what can be substituted into a clause).
    static func literalAttribute(_ ad: ClassAd, _ n: AttrName) -> Value? {
        guard let e = ad.lookup(n), case .literal(let v) = e, v.isPlain else { return nil }
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
                if abs || n.namesScope && n.key != "target" && n.key != "other" { shareable = false; return e }
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
                let n = f.lowercasedName
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
    static func intern(_ e: Expr, own: ClassAd, ownIndex: Int, table: inout [WrittenForm.Key: Int32], partnerComputed: Set<AttrKey>? = nil) -> Int32 {
        var shareable = true
        let residual = specialise(e, own: own, shareable: &shareable)
        if shareable, let computed = partnerComputed {
            var refs = Set<AttrKey>(), whole = false
            collectRefs(residual, into: &refs, whole: &whole)
            if (whole && !computed.isEmpty) || !refs.isDisjoint(with: computed) { shareable = false }
        }
        var written = WrittenForm()
        if !shareable {
            written.append(tag: 0xff)  // no expression starts with this tag
            written.append(Int64(ownIndex))
        }
        written.append(residual)
        let key = written.key
        if let id = table[key] { return id }
        let id = Int32(table.count)
        table[key] = id
        return id
    }

    // MARK: matching

    /// Evaluates one conjunct of `ad`'s Requirements, as evaluating Requirements would (`ad` must be bound
    /// in a match context).
    static func evalClause(_ e: Expr, of ad: ClassAd) -> Value {
        var st = EvalState(scope: ad)
        if let slot = ad.slot(Matchmaker.requirements) {
            st.inProgress.append((ObjectIdentifier(ad), slot))
            st.depthRemaining -= 1
        }
        do { return try Evaluator.eval(e, &st) } catch { return .error }
    }

    /// A set of image indices, 64 to a word.
    typealias ImageSet = [UInt64]

    /// Matches every job; returns each job's best image.
    public func matchAll(_ jobs: [ClassAd]) -> BatchResult {
        // 1. autoclusters
        var clusterOf = [Int](repeating: 0, count: jobs.count)
        var signatures: [WrittenForm.Key: Int] = [:]
        var reps: [Int] = []
        for (j, job) in jobs.enumerated() {
            let sig = signature(job)
            if let c = signatures[sig] { clusterOf[j] = c; continue }
            signatures[sig] = reps.count
            clusterOf[j] = reps.count
            reps.append(j)
        }
        // 2. job-side clauses per cluster, each distinct one compiled once
        var table: [WrittenForm.Key: Int32] = [:]
        var clauseIds: [[Int32]] = []
        var clauses: [(expr: Expr, owner: Int, compiled: CompiledClause?)] = []
        for (c, j) in reps.enumerated() {
            let job = jobs[j]
            var ids: [Int32] = []
            for e in job.lookup(Matchmaker.requirements)?.conjuncts ?? [] {
                let id = BatchMatcher.intern(e, own: job, ownIndex: c, table: &table, partnerComputed: imageComputedNames)
                if Int(id) == clauses.count { clauses.append((e, c, CompiledClause(e, of: job, layout: &layout))) }
                ids.append(id)
            }
            clauseIds.append(ids)
        }
        imageTable.extend(layout, images)
        var imageColumns = imageTable.columns
        let nImages = images.count, words = (nImages + 63) / 64
        var evaluations = 0
        // One match record, rebound to each pair that needs the exact evaluator.
        let shared = MatchContext(left: jobs[reps.first ?? 0], right: images[0])
        defer { shared.release() }
        func bind(_ job: ClassAd, _ image: ClassAd) {
            if shared.left !== job || shared.right !== image { shared.rebind(left: job, right: image) }
        }

        // 3. each clause's images, computed on first use
        var rows = [ImageSet?](repeating: nil, count: clauses.count)
        func row(_ id: Int) -> ImageSet {
            if let r = rows[id] { return r }
            var set = ImageSet(repeating: 0, count: words)
            let (e, owner, compiled) = clauses[id]
            let job = jobs[reps[owner]]
            let codes = compiled.map { imageTable.codes($0.expr) }
            for i in 0..<nImages {
                let holds = imageColumns.holds(codes?[i] ?? MatchCode.unknown.rawValue, compiled, i) {
                    bind(job, images[i])
                    evaluations += 1
                    return BatchMatcher.evalClause(e, of: job).booleanEquivalent == true
                }
                if holds { set[i >> 6] |= 1 << UInt64(i & 63) }
            }
            rows[id] = set
            return set
        }

        // 4. each cluster's candidates: the AND of its clauses' images (none without Requirements)
        var accepted = [ImageSet](repeating: ImageSet(repeating: 0, count: words), count: reps.count)
        for c in reps.indices where !clauseIds[c].isEmpty {
            var set = row(Int(clauseIds[c][0]))
            for id in clauseIds[c].dropFirst() {
                let r = row(Int(id))
                for w in 0..<words { set[w] &= r[w] }
            }
            accepted[c] = set
        }

        // 5. the images' side: each image's Requirements run down the columns of its candidate jobs
        //    (a row per cluster), as the jobs' clauses ran down the images'
        let jobTable = ColumnTable(count: reps.count)
        jobTable.extend(mm.jobLayout, reps.map { jobs[$0] })
        let jobColumns = jobTable.columns
        var candidatesOf = [[Int]](repeating: [], count: nImages)
        for c in reps.indices {
            for w in 0..<words {
                var bits = accepted[c][w]
                while bits != 0 {
                    candidatesOf[w * 64 + bits.trailingZeroBitCount].append(c)
                    bits &= bits - 1
                }
            }
        }
        for i in 0..<nImages where !candidatesOf[i].isEmpty {
            let among = candidatesOf[i]
            let compiled = mm.imageRequirements[i]
            let codes = mm.imageHasRequirements[i] ? compiled.map { jobTable.codes($0.expr, among: among) } : nil
            for (n, c) in among.enumerated() {
                var holds = false  // an image without Requirements accepts no job (as in HTCondor)
                if mm.imageHasRequirements[i] {
                    holds = jobColumns.holds(codes?[n] ?? MatchCode.unknown.rawValue, compiled, c) {
                        bind(jobs[reps[c]], images[i])
                        evaluations += 1
                        return shared.requirementsHold(of: images[i])
                    }
                }
                if !holds { accepted[c][i >> 6] &= ~(1 << UInt64(i & 63)) }
            }
        }

        // 6. per cluster: both Ranks of each image that matched, and the best
        var clusterBest = [Int?](repeating: nil, count: reps.count)
        var clusterMatches = [Int](repeating: 0, count: reps.count)
        var rankTable: [WrittenForm.Key: Int32] = [:]
        var rankClauses: [CompiledClause?] = []
        // A job Rank of one attribute is evaluated once per distinct value of it, for all the jobs whose
        // Rank reads the same (one memo per Rank clause, updated in place).
        var rankMemos: [RankMemo?] = []
        for c in reps.indices where !clauseIds[c].isEmpty {
            let job = jobs[reps[c]]
            var jobRank: CompiledClause? = nil
            var rankId = -1
            let rankExpr = job.lookup(Matchmaker.rank)
            if let e = rankExpr {
                // Compiled once for the jobs whose Rank reads the same once specialised (most of them).
                let id = Int(BatchMatcher.intern(e, own: job, ownIndex: c, table: &rankTable, partnerComputed: imageComputedNames))
                if id == rankClauses.count {
                    let compiled = CompiledClause(e, of: job, layout: &layout)
                    rankClauses.append(compiled)
                    imageTable.extend(layout, images)
                    imageColumns = imageTable.columns
                    rankMemos.append(RankMemo(compiled, imageTable))
                }
                jobRank = rankClauses[id]
                rankId = id
            }
            var best: (index: Int, jobRank: Double, imageRank: Double)? = nil
            for w in 0..<words {
                var bits = accepted[c][w]
                clusterMatches[c] += bits.nonzeroBitCount
                while bits != 0 {
                    let i = w * 64 + bits.trailingZeroBitCount
                    bits &= bits - 1
                    var pair = Matchmaker.Pair(job: job, image: images[i])
                    defer { pair.release() }
                    let jr =
                        rankId < 0
                        ? 0
                        : imageColumns.rankValue(jobRank, i, memo: &rankMemos[rankId]) {
                            evaluations += 1
                            return pair.context.evaluate(attribute: "Rank", of: job).rankValue
                        }
                    let ir = mm.imageRank(i, jobColumns, c, &pair)
                    if best == nil || mm.better(i, jr, ir, than: best!.index, best!.jobRank, best!.imageRank) { best = (i, jr, ir) }
                }
            }
            clusterBest[c] = best?.index
        }
        var bestPerJob = [Int?](repeating: nil, count: jobs.count)
        var pairs = 0
        for j in 0..<jobs.count {
            bestPerJob[j] = clusterBest[clusterOf[j]]
            pairs += clusterMatches[clusterOf[j]]
        }
        return BatchResult(
            best: bestPerJob, matchingPairs: pairs, clusters: reps.count, jobClauses: clauses.count,
            compiledClauses: clauses.filter { $0.compiled != nil }.count, evaluations: evaluations)
    }

    /// The autocluster key: the job's Requirements and Rank, and every job attribute that an evaluation
    /// of this job against these images can reach (what the images name, what Requirements and Rank
    /// name, and what those attributes name in turn), each as written. Two jobs with the same key lack
    /// the same reachable names too (an attribute one has and the other lacks would be in one key only).
    func signature(_ job: ClassAd) -> WrittenForm.Key {
        var refs = Set<AttrKey>()
        var whole = imagesNeedWholeJob
        for n in [Matchmaker.requirements, Matchmaker.rank] {
            if let e = job.lookup(n) { BatchMatcher.collectRefs(e, into: &refs, whole: &whole) }
        }
        if whole { return WrittenForm(wholeAd: job).key }
        var included = job.names.map { $0 == Matchmaker.requirements || $0 == Matchmaker.rank }
        var grew = true
        while grew {
            grew = false
            for (k, n) in job.names.enumerated() where !included[k] && (imageRefs.contains(n.k) || refs.contains(n.k)) {
                included[k] = true
                grew = true
                BatchMatcher.collectRefs(job.exprs[k], into: &refs, whole: &whole)
                if whole { return WrittenForm(wholeAd: job).key }
            }
        }
        // In name order, so that jobs listing the same attributes in another order share a key.
        let parts = job.names.indices.filter { included[$0] }.sorted { job.names[$0].k.bytes.lexicographicallyPrecedes(job.names[$1].k.bytes) }
        var written = WrittenForm()
        written.append(tag: 0xfd)  // not a whole ad's key (WrittenForm(wholeAd:))
        for k in parts {
            written.append(text: job.names[k].k.bytes)
            written.append(job.exprs[k])
        }
        return written.key
    }
}
