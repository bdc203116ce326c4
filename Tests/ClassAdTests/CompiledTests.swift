// The compiled matcher against the exact evaluator (which the differential tests hold to HTCondor):
// random clauses over partners whose attributes take every type, and every pair of synthetic workloads.

import Testing
import Support
@testable import ClassAd

@Suite struct CompiledMatching {
    /// A random expression over the job's own literals (m0…m2), its computed attribute (m3), the image's
    /// attributes (n0…n5, each of a random type per image, some bound to expressions, some missing), and
    /// the scope names and functions that must stay with the exact evaluator.
    struct Generator {
        var rng: SeededRandom
        static let functions: [(String, Int)] = [
            ("member", 2), ("identicalMember", 2), ("size", 1), ("strcat", 2), ("substr", 2), ("toUpper", 1), ("int", 1), ("real", 1),
            ("string", 1), ("isUndefined", 1), ("isError", 1), ("ifThenElse", 3), ("versioncmp", 2), ("versionGE", 2), ("regexp", 2),
            ("stringListMember", 2), ("sum", 1), ("floor", 1), ("pow", 2), ("strcmp", 2), ("toLower", 1), ("anyCompare", 3),
            ("splitUserName", 1), ("bool", 1), ("nosuchfunction", 1), ("eval", 1), ("unparse", 1),
        ]
        static let leaves = [
            "0", "1", "7", "-3", "2.5", "\"x\"", "\"X\"", "\"1.10\"", "\"a,b\"", "true", "false", "undefined", "error", "{\"x\", \"y\"}",
            "{1, 2.5}", "{}", "\"^x\"", "\"AnyCase\"", "\"<\"", "\"\"",
        ]
        static let names = [
            "TARGET.n0", "TARGET.n1", "TARGET.n2", "n3", "n4", "OTHER.n5", "TARGET.missing", "m0", "MY.m1", "m2", "m3", "MY.m3", "TARGET.m0",
            "MY.n0", "CurrentTime", "TARGET.CurrentTime", "TARGET", "MY", "PARENT.n0", ".n0", "TARGET.Requirements",
        ]
        static let binary = ["+", "-", "*", "/", "%", "<", "<=", "==", "!=", ">=", ">", "=?=", "=!=", "&&", "||", "&", "|", "^", "<<", ">>"]

        mutating func pick<T>(_ a: [T]) -> T { a[Int.random(in: 0..<a.count, using: &rng)] }

        mutating func expr(_ depth: Int) -> String {
            let r = Int.random(in: 0..<10, using: &rng)
            if depth == 0 || r < 3 { return Bool.random(using: &rng) ? pick(Self.leaves) : pick(Self.names) }
            switch r {
            case 3, 4: return "(\(expr(depth - 1)) \(pick(Self.binary)) \(expr(depth - 1)))"
            case 5: return "(\(pick(["-", "!", "~"]))\(expr(depth - 1)))"
            case 6: return "(\(expr(depth - 1)) ? \(expr(depth - 1)) : \(expr(depth - 1)))"
            case 7: return "(\(expr(depth - 1)) ?: \(expr(depth - 1)))"
            default:
                let (f, n) = pick(Self.functions)
                return "\(f)(\((0..<n).map { _ in expr(depth - 1) }.joined(separator: ", ")))"
            }
        }

        mutating func value() -> String {
            pick([
                "\(Int.random(in: -5...20, using: &rng))", "\(Double(Int.random(in: -8...40, using: &rng)) / 4)", "\"x\"", "\"X\"", "\"1.9\"",
                "\"a,b,x\"", "true", "false", "undefined", "error", "{\"x\", \"z\"}", "{1, 2, 3}", "n0 + 1", "TARGET.m0", "[a = 1]",
            ])
        }

        mutating func image(_ i: Int) throws -> ClassAd {
            var attrs = ["Name = \"img\(i)\""]
            for k in 0..<6 where Int.random(in: 0..<6, using: &rng) > 0 { attrs.append("n\(k) = \(value())") }
            attrs.append("Requirements = \(expr(3))")
            if Bool.random(using: &rng) { attrs.append("Rank = \(expr(2))") }
            return try Parser.parseClassAd("[" + attrs.joined(separator: "; ") + "]")
        }

        mutating func job() throws -> ClassAd {
            let own = (0..<3).map { "m\($0) = \(pick(["1", "2.5", "\"x\"", "undefined", "{\"x\"}", "true"]))" }
            return try Parser.parseClassAd(
                "[" + (own + ["m3 = m0 + 1", "Requirements = \(expr(3)) && \(expr(2))", "Rank = \(expr(2))"]).joined(separator: "; ") + "]")
        }
    }

    static func same(_ a: ImageMatch, _ b: ImageMatch) -> Bool {
        func eq(_ x: Double, _ y: Double) -> Bool { x == y || (x.isNaN && y.isNaN) }
        return a.imageIndex == b.imageIndex && eq(a.jobRank, b.jobRank) && eq(a.imageRank, b.imageRank)
    }

    func agreeOnEveryPair(_ jobs: [ClassAd], _ images: [ClassAd]) {
        let mm = Matchmaker(images: images)
        let batch = BatchMatcher(images: images).matchAll(jobs)
        for (j, job) in jobs.enumerated() {
            let exact = mm.matchExactly(job).matches
            let compiled = mm.match(job).matches
            #expect(
                compiled.count == exact.count && zip(compiled, exact).allSatisfy(Self.same),
                "job \(j): compiled \(compiled.map { ($0.imageIndex, $0.jobRank, $0.imageRank) }) exact \(exact.map { ($0.imageIndex, $0.jobRank, $0.imageRank) })\n\(job)"
            )
            #expect(batch.best[j] == exact.first?.imageIndex, "job \(j): batch \(String(describing: batch.best[j]))\n\(job)")
        }
    }

    /// Each random clause, compiled, gives the exact evaluator's value for every image (or declines).
    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func randomClausesGiveTheExactValues(seed: UInt64) throws {
        var g = Generator(rng: SeededRandom(seed: seed))
        let images = try (0..<40).map { try g.image($0) }
        var compiledCount = 0, checked = 0
        for _ in 0..<150 {
            let job = try g.job()
            var layout = PartnerLayout()
            for e in job.lookup("Requirements")!.conjuncts {
                guard let c = CompiledClause(e, of: job, layout: &layout) else { continue }
                compiledCount += 1
                var columns = PartnerColumns(count: images.count)
                columns.extend(layout, images)
                for (i, image) in images.enumerated() {
                    guard let fast = columns.evaluate(c, i) else { continue }
                    let ctx = MatchContext(left: job, right: image)
                    let exact = BatchMatcher.evalClause(e, of: job)
                    ctx.release()
                    checked += 1
                    #expect(
                        Unparser.unparse(fast) == Unparser.unparse(exact) && fast.typeName == exact.typeName,
                        "\(Unparser.unparse(e)) against \(Unparser.unparse(image)): compiled \(fast), exact \(exact)")
                }
            }
        }
        #expect(compiledCount > 100 && checked > 2000, "compiled \(compiledCount) clauses, \(checked) values checked")
    }

    @Test(arguments: [5, 6] as [UInt64])
    func randomAdsMatchAsTheExactEvaluatorDoes(seed: UInt64) throws {
        var g = Generator(rng: SeededRandom(seed: seed))
        let images = try (0..<30).map { try g.image($0) }
        let jobs = try (0..<80).map { _ in try g.job() }
        agreeOnEveryPair(jobs, images)
    }

    @Test(arguments: [0, 0.5, 1])
    func syntheticWorkloadsMatchAsTheExactEvaluatorDoes(distinct: Double) {
        var g = SyntheticWorkload(seed: 11, distinct: distinct)
        let images = (0..<80).map { g.image($0) }
        let jobs = (0..<200).map { g.job($0) }
        agreeOnEveryPair(jobs, images)
    }

    /// What must not compile stays with the exact evaluator, and what compiles reads the right ad.
    @Test func scopesResolveAsInAMatch() throws {
        let job = try Parser.parseClassAd("[m = 2; e = m + 1; Requirements = true]")
        var layout = PartnerLayout()
        func compiles(_ text: String) throws -> Bool { CompiledClause(try Parser.parseExpression(text), of: job, layout: &layout) != nil }
        #expect(try compiles("TARGET.n > m"))  // n: the image's; m: the job's literal
        #expect(try compiles("n > MY.m"))  // unscoped n: not in the job, so the image's
        #expect(try !compiles("e > 1"))  // the job's own expression
        #expect(try !compiles("TARGET"))  // a whole ad
        #expect(try !compiles("{TARGET.n}[0]"))  // subscripts
        #expect(try !compiles("eval(\"n\")"))
        #expect(try !compiles("CurrentTime > 0"))
        #expect(try !compiles(".n > 1"))
        #expect(try compiles("nosuch(TARGET.n)"))  // an unknown function is ERROR whatever its arguments
        // The job binds `target` itself: TARGET.n is its own record's n, not the image's.
        let image = try Parser.parseClassAd("[n = 1; Requirements = true]")
        let mm = Matchmaker(images: [image])
        let shadow = try Parser.parseClassAd("[target = [n = 99]; Requirements = TARGET.n > 50]")
        var shadowLayout = PartnerLayout()
        #expect(CompiledClause(attribute: "Requirements", of: shadow, layout: &shadowLayout) == nil)
        #expect(mm.match(shadow).matches.count == mm.matchExactly(shadow).matches.count)
        #expect(mm.match(shadow).matches.count == 1)
    }

    /// Autoclusters and shared clauses are keyed on the written form: two expressions with one key must
    /// unparse alike (the key may tell more apart than the text, never less).
    @Test func theWrittenFormTellsApartWhatTheTextDoes() throws {
        var g = Generator(rng: SeededRandom(seed: 9))
        var textOf: [[UInt8]: String] = [:]
        var texts = (0..<3000).map { _ in g.expr(3) }
        texts += ["0.0", "-0.0", "x", "X", "(x)", "{1, 2}", "{1, 2.0}", "\"a\"", "\"A\"", "strcat(\"a\", \"b\")", "strCat(\"a\", \"b\")", "[a = 1]"]
        for text in texts {
            let e = try Parser.parseExpression(text)
            var w = WrittenForm()
            w.append(e)
            let unparsed = Unparser.unparse(e)
            if let seen = textOf[w.bytes] { #expect(seen == unparsed, "one key for \(seen) and \(unparsed)") } else { textOf[w.bytes] = unparsed }
        }
        #expect(textOf.count > 1000)
    }
}
