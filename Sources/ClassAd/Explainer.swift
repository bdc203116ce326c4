// Why a job matches nothing, in the spirit of `condor_q -better-analyze`: every top-level conjunct of
// both sides' Requirements, how many images it rules out, and the smallest change that would let an
// image match where one can be named.

public struct Explanation: Sendable {
    public struct Clause: Sendable {
        public let side: String  // "job" or "image"
        public let text: String
        public let rulesOut: Int  // images for which this clause is not true
        public let appliesTo: Int  // images that have this clause (all, for job clauses)
    }
    public let clauses: [Clause]
    public let suggestions: [String]
    public let imageCount: Int
    public let matchCount: Int

    public var text: String {
        var s = "Analysis of \(imageCount) image(s): \(matchCount) match.\n"
        s += "The job's Requirements:\n"
        for c in clauses where c.side == "job" {
            s += "  [\(pad(c.rulesOut))] ruled out by  \(c.text)\n"
        }
        let imageClauses = clauses.filter { $0.side == "image" }
        if !imageClauses.isEmpty {
            s += "The images' Requirements (evaluated against this job):\n"
            for c in imageClauses {
                s += "  [\(pad(c.rulesOut)) of \(c.appliesTo)] reject the job by  \(c.text)\n"
            }
        }
        if !suggestions.isEmpty {
            s += "Smallest changes that would let an image match:\n"
            for x in suggestions { s += "  - \(x)\n" }
        }
        return s
    }

    private func pad(_ n: Int) -> String { let t = String(n); return String(repeating: " ", count: max(0, 5 - t.count)) + t }
}

public struct Explainer {
    public let images: [ClassAd]
    public init(images: [ClassAd]) { self.images = images }

    public func explain(_ job: ClassAd) -> Explanation {
        let jobClauses = job.lookup("Requirements").map(\.conjuncts) ?? []
        var jobOut = [Int](repeating: 0, count: jobClauses.count)
        var imageClauseIndex: [String: Int] = [:]
        var imageClauses: [(text: String, out: Int, has: Int)] = []
        var failing: [(image: Int, job: [Int], img: [String])] = []
        var matches = 0
        var hints: [Int: [Int: String]] = [:]  // image → job clause → numeric hint, computed while bound
        for (i, image) in images.enumerated() {
            let ctx = MatchContext(left: job, right: image)
            defer { ctx.release() }
            var jf: [Int] = []
            for (k, c) in jobClauses.enumerated() where !holds(ctx.evaluate(c, in: job)) {
                jobOut[k] += 1
                jf.append(k)
                if let h = numericHint(c, job: job, ctx) { hints[i, default: [:]][k] = h }
            }
            if job.lookup("Requirements") == nil { jf.append(-1) }
            var imf: [String] = []
            for c in image.lookup("Requirements").map(\.conjuncts) ?? [] {
                let t = Unparser.unparse(c)
                let idx =
                    imageClauseIndex[t]
                    ?? {
                        imageClauses.append((t, 0, 0)); imageClauseIndex[t] = imageClauses.count - 1; return imageClauses.count - 1
                    }()
                imageClauses[idx].has += 1
                if !holds(ctx.evaluate(c, in: image)) { imageClauses[idx].out += 1; imf.append(t) }
            }
            if image.lookup("Requirements") == nil { imf.append("(the image has no Requirements)") }
            if jf.isEmpty && imf.isEmpty { matches += 1 } else { failing.append((i, jf, imf)) }
        }
        var clauses = jobClauses.enumerated().map {
            Explanation.Clause(side: "job", text: Unparser.unparse($1), rulesOut: jobOut[$0], appliesTo: images.count)
        }
        clauses += imageClauses.map { Explanation.Clause(side: "image", text: $0.text, rulesOut: $0.out, appliesTo: $0.has) }
        // The nearest misses: images kept out by the fewest clauses (at most three), with what would change.
        var suggestions: [String] = []
        let infos = images.enumerated().map { ImageInfo($1, index: $0) }
        for f in failing.sorted(by: { ($0.job.count + $0.img.count) < ($1.job.count + $1.img.count) }) where f.job.count + f.img.count <= 3 {
            let name = infos[f.image].label
            var changes: [String] = []
            for k in f.job {
                if k < 0 { changes.append("give the job a Requirements expression"); continue }
                let c = jobClauses[k]
                changes.append(hints[f.image]?[k] ?? "drop or relax `\(Unparser.unparse(c))`")
            }
            for t in f.img { changes.append("the image's own rule `\(t)` would have to admit the job (its administrator sets it)") }
            suggestions.append("image \(name): " + changes.joined(separator: "; and "))
            if suggestions.count >= 5 { break }
        }
        return Explanation(clauses: clauses, suggestions: suggestions, imageCount: images.count, matchCount: matches)
    }

    func holds(_ v: Value) -> Bool { v.booleanEquivalent ?? false }

    /// For `TARGET.x OP MY.y` (either order) with numbers on both sides: the value of the job's y that would pass.
    func numericHint(_ c: Expr, job: ClassAd, _ ctx: MatchContext) -> String? {
        var e = c
        while case .paren(let inner) = e { e = inner }
        guard case .binary(let op, let l, let r) = e, op.isComparison, op != .metaEqual, op != .metaNotEqual else { return nil }
        func jobAttr(_ x: Expr) -> String? {
            switch x {
            case .select(.attr(let b, false), let n) where b.key == "my": return job.lookup(n) != nil ? n.spelling : nil
            case .attr(let n, false): return job.lookup(n) != nil ? n.spelling : nil
            default: return nil
            }
        }
        if let name = jobAttr(r), case let v = ctx.evaluate(l, in: job), let num = number(v) {
            return "set the job's \(name) \(relation(op, flipped: true)) \(num)"
        }
        if let name = jobAttr(l), case let v = ctx.evaluate(r, in: job), let num = number(v) {
            return "set the job's \(name) \(relation(op, flipped: false)) \(num)"
        }
        return nil
    }

    func number(_ v: Value) -> String? {
        switch v {
        case .integer(let i): return String(i)
        case .real(let r): return String(r)
        case .string(let s): return "\"\(s)\""
        default: return nil
        }
    }

    /// The relation the job's attribute must have to the image's value (`flipped`: the job's attribute is on the right).
    func relation(_ op: BinaryOp, flipped: Bool) -> String {
        switch (op, flipped) {
        case (.lessThan, false), (.greaterThan, true): return "below"
        case (.lessOrEqual, false), (.greaterOrEqual, true): return "to at most"
        case (.greaterThan, false), (.lessThan, true): return "above"
        case (.greaterOrEqual, false), (.lessOrEqual, true): return "to at least"
        case (.equal, _): return "to"
        default: return "different from"
        }
    }
}
