import Testing
@testable import ClassAd

@Suite struct Matchmaking {
    @Test func ordersByJobRankThenImageRankThenVersionThenName() throws {
        let job = try Parser.parseClassAd("[VCPUs = 2; Requirements = TARGET.MaxVCPUs >= MY.VCPUs; Rank = TARGET.Speed]")
        let images = try [
            "[Name = \"b\"; Version = \"1.10\"; MaxVCPUs = 4; Speed = 1; Requirements = true]",
            "[Name = \"a\"; Version = \"1.9\"; MaxVCPUs = 4; Speed = 1; Requirements = true]",
            "[Name = \"c\"; Version = \"1.0\"; MaxVCPUs = 4; Speed = 1; Requirements = true; Rank = 5]",
            "[Name = \"d\"; Version = \"9.0\"; MaxVCPUs = 1; Speed = 9; Requirements = true]",
            "[Name = \"e\"; Version = \"0.1\"; MaxVCPUs = 8; Speed = 2; Requirements = TARGET.VCPUs > 4]",
            "[Name = \"f\"; Version = \"0.1\"; MaxVCPUs = 8; Speed = 3]",
        ].map(Parser.parseClassAd)
        let r = Matchmaker(images: images).match(job)
        #expect(r.matches.map(\.imageName) == ["c", "b", "a"])
    }

    @Test func explainsAnUnsatisfiableJob() throws {
        let job = try Parser.parseClassAd("[VCPUs = 128; Requirements = TARGET.MaxVCPUs >= MY.VCPUs && TARGET.OS == \"debian\"]")
        let images = try [
            "[Name = \"a\"; OS = \"debian\"; MaxVCPUs = 64; Requirements = true]",
            "[Name = \"b\"; OS = \"rocky\"; MaxVCPUs = 256; Requirements = true]",
        ].map(Parser.parseClassAd)
        let e = Explainer(images: images).explain(job)
        #expect(e.matchCount == 0)
        #expect(e.clauses.first { $0.text.contains("MaxVCPUs") }?.rulesOut == 1)
        #expect(e.suggestions.contains { $0.contains("VCPUs to at most 64") })
    }

    func agree(_ jobs: [ClassAd], _ images: [ClassAd]) {
        let exact = Matchmaker(images: images)
        let batch = BatchMatcher(images: images).matchAll(jobs)
        var pairs = 0
        for (j, job) in jobs.enumerated() {
            let r = exact.match(job)
            pairs += r.matches.count
            #expect(
                batch.best[j] == r.best?.imageIndex,
                "job \(j): batch \(String(describing: batch.best[j])) exact \(String(describing: r.best?.imageIndex))\n\(job)")
        }
        #expect(batch.matchingPairs == pairs)
    }

    @Test(arguments: [1, 2, 3] as [UInt64])
    func batchMatcherAgreesWithPairByPair(seed: UInt64) {
        var g = SyntheticWorkload(seed: seed)
        let images = (0..<60).map { g.image($0) }
        let jobs = (0..<300).map { g.job($0) }
        agree(jobs, images)
    }

    /// Every job with constants of its own (bench match --distinct 1): the batch matcher still agrees
    /// with the exact evaluator, and the jobs no longer share their clauses.
    @Test func batchMatcherAgreesWhenEveryJobIsDifferent() {
        var g = SyntheticWorkload(seed: 7, distinct: 1)
        let images = (0..<60).map { g.image($0) }
        let jobs = (0..<300).map { g.job($0) }
        agree(jobs, images)
        let alike = SyntheticWorkload(seed: 7)
        var a = alike
        let shared = BatchMatcher(images: (0..<60).map { a.image($0) }).matchAll((0..<300).map { a.job($0) })
        let own = BatchMatcher(images: images).matchAll(jobs)
        #expect(own.jobClauses > 10 * shared.jobClauses, "distinct: \(own.jobClauses) job clauses, alike: \(shared.jobClauses)")
    }

    @Test func batchMatcherAgreesOnTrickyAds() throws {
        // non-literal attributes, references back and forth, whole-ad references, cycles, shadowed scope names
        let jobs = try [
            "[Owner = \"alice\"; N = 2; Need = N * 2; Requirements = TARGET.Cap >= Need && TARGET.Allowed; Rank = TARGET.Cap]",
            "[Owner = \"bob\"; N = 2; Need = N * 2; Requirements = TARGET.Cap >= Need && TARGET.Allowed; Rank = TARGET.Cap]",
            "[Owner = \"alice\"; N = 8; Need = N * 2; Requirements = TARGET.Cap >= Need && TARGET.Allowed]",
            "[Owner = \"carol\"; Requirements = other.Cap > 1 && Cap < 100 && Missing =?= undefined]",
            "[Owner = \"dave\"; target = [Cap = 1000]; Requirements = TARGET.Cap > 500]",
            "[Owner = \"erin\"; Requirements = Requirements && true]",
            "[Owner = \"frank\"; Requirements = size(TARGET) > 2 && TARGET.Cap > 1]",
            "[Owner = \"gina\"; Requirements = eval(\"TARGET.Cap > 3\")]",
            "[Owner = \"hal\"; Requirements = {TARGET.Cap}[0] > 3 && [x = TARGET.Cap].x > 3]",
            "[Owner = \"alice\"; Requirements = \"yes\"]",
            "[Owner = \"alice\"; Requirements = 1]",
            "[Owner = \"alice\"]",
        ].map(Parser.parseClassAd)
        let images = try [
            "[Name = \"i1\"; Cap = 4; Allowed = member(TARGET.Owner, {\"alice\"}); Requirements = TARGET.Owner =!= \"mallory\"; Rank = Cap]",
            "[Name = \"i2\"; Cap = 16; Allowed = TARGET.N > 4 || TARGET.Owner == \"bob\"; Requirements = Allowed]",
            "[Name = \"i3\"; Cap = 1; Allowed = true; Requirements = MY.Cap < TARGET.N || TARGET.Owner == \"carol\"]",
            "[Name = \"i4\"; Cap = 600; Allowed = true; Requirements = size(TARGET) < 100; Rank = TARGET.N ?: 0]",
            "[Name = \"i5\"; Cap = 50; Requirements = regexp(\"^[a-e]\", Owner)]",
            "[Name = \"i6\"; Cap = 7]",
        ].map(Parser.parseClassAd)
        agree(jobs, images)
    }
}
