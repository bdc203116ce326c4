// `slurm-vm bench …`: performance measurements, reported as rates and ratios.

import ArgumentParser
import Catalog
import ClassAd
import Foundation

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "Benchmarks.", subcommands: [MatchBench.self, GuestBench.self, BroadcastSimBench.self])
}

/// CPU seconds used by this thread (the matchmaker runs on one core).
func threadCPUSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

struct MatchBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "match",
        abstract: "Matchmaking throughput: job × image pair evaluations per second per core.",
        discussion: """
            Give --jobs and --images (one new-syntax ad per line), or --generate JOBS IMAGES for a synthetic workload \
            whose Requirements use member, regexp, versioncmp and stringListMember over OS, kernel version, \
            libraries, vCPUs, memory and owner, with Rank on both sides. Prints the rate of the batch matcher \
            (autoclusters, clauses compiled and run down the images' columns), the rate of matching pair by pair \
            with compiled expressions (what one submission runs) and of the exact evaluator on a sample (the \
            reference), the number of matching pairs and a digest of every job's best image. On the sampled jobs \
            the batch matcher, the pair-by-pair matcher and the exact evaluator must agree.
            """)
    @Option(help: "Job ads, one per line.") var jobs: String?
    @Option(help: "Image ads, one per line.") var images: String?
    @Option(parsing: .upToNextOption, help: "Generate JOBS IMAGES synthetic ads instead.") var generate: [Int] = []
    @Option(help: "Seed for --generate.") var seed: UInt64 = 1
    @Option(
        help:
            "With --generate: the share of jobs and images, 0 to 1, that carry constants of their own (0: few distinct clauses, which autoclustering folds; 1: every job different)."
    ) var distinct: Double = 0
    @Option(help: "Jobs evaluated pair by pair for the baseline and the cross-check.") var sample = 200
    @Option(help: "Also write the workload to DIR/jobs.ads and DIR/images.ads (one ad per line).") var dump: String?
    @Option(
        help:
            "Also time this many single submissions, each matched alone against every image as a submission is (a new Matchmaker, then match), and print the median and the 95th percentile."
    ) var latency = 0

    @Option(
        help: """
            Also time sbatch's own path: a scratch catalog of this many synthetic images (one shared kernel and initrd), \
            then Catalog.match for --latency submissions built from --vm-* options (the first after a change prepares the images).
            """)
    var catalogImages = 0

    @Option(help: "Exit 1 if the batch matcher's rate is below this many million pairs/s/core (a target: issue 22 asks 10).")
    var requireBatch: Double?
    @Option(help: "Exit 1 if matching one job at a time is below this many million pairs/s/core (issue 22 asks 1).")
    var requireOneJob: Double?
    @Option(
        help: """
            Exit 1 if the 95th percentile of a submission's latency through the catalog (--catalog-images, \
            sbatch's own path) is above this many milliseconds (issue 22 asks 5).
            """)
    var requireLatencyMs: Double?

    func run() throws {
        // Targets that were not met, printed at the end (after every figure) and then exit 1.
        var missed: [String] = []
        func require(_ what: String, _ measured: Double, atLeast target: Double?, unit: String) {
            guard let target, measured < target else { return }
            missed.append("\(what) " + String(format: "%.2f", measured) + " \(unit), below the required \(target)")
        }
        func require(_ what: String, _ measured: Double, atMost target: Double?) {
            guard let target, measured > target else { return }
            missed.append("\(what) " + String(format: "%.2f", measured) + " ms, above the required \(target) ms")
        }
        defer {
            for m in missed { print("target missed:       \(m)") }
        }
        if catalogImages > 0 {
            let p95 = try catalogLatency()
            require("a submission through the catalog (95th percentile)", p95, atMost: requireLatencyMs)
        }
        var jobAds: [ClassAd], imageAds: [ClassAd]
        if generate.count == 2 {
            guard (0...1).contains(distinct) else { throw ValidationError("--distinct \(distinct): give a share from 0 to 1") }
            var g = SyntheticWorkload(seed: seed, distinct: distinct)
            imageAds = (0..<generate[1]).map { g.image($0) }
            jobAds = (0..<generate[0]).map { g.job($0) }
        } else if let jobs, let images {
            jobAds = try loadAds(jobs)
            imageAds = try loadAds(images)
        } else {
            throw ValidationError("give --jobs FILE --images FILE, or --generate JOBS IMAGES")
        }
        guard !jobAds.isEmpty, !imageAds.isEmpty else { throw ValidationError("need at least one job and one image") }
        if let dump {
            try FileManager.default.createDirectory(atPath: dump, withIntermediateDirectories: true)
            for (name, ads) in [("jobs.ads", jobAds), ("images.ads", imageAds)] {
                let text = ads.map { Unparser.unparse($0, style: .canonical) }.joined(separator: "\n") + "\n"
                try text.write(toFile: dump + "/" + name, atomically: true, encoding: .utf8)
            }
        }
        let pairs = Double(jobAds.count) * Double(imageAds.count)

        // batch matcher (best of 5 runs, against a noisy neighbour's moments; each run starts cold: new
        // matcher, empty memos)
        var best = Double.infinity
        var result: BatchResult! = nil
        for _ in 0..<5 {
            let t0 = threadCPUSeconds()
            let bm = BatchMatcher(images: imageAds)
            let r = bm.matchAll(jobAds)
            let t = threadCPUSeconds() - t0
            if t < best { best = t; result = r }
        }
        // pair by pair, compiled (what a single submission runs), and the exact evaluator (the reference
        // both are checked against), on a sample of jobs
        let mm = Matchmaker(images: imageAds)
        let step = max(1, jobAds.count / max(1, sample))
        let sampled = Array(stride(from: 0, to: jobAds.count, by: step))
        var mismatches = 0
        var compiledBest: [Int?] = []
        let t0 = threadCPUSeconds()
        for j in sampled { compiledBest.append(mm.match(jobAds[j]).best?.imageIndex) }
        let tPair = threadCPUSeconds() - t0
        let t2 = threadCPUSeconds()
        for (n, j) in sampled.enumerated() where mm.match(jobAds[j], columns: false).best?.imageIndex != compiledBest[n] { mismatches += 1 }
        let tAlone = threadCPUSeconds() - t2
        let t1 = threadCPUSeconds()
        for (n, j) in sampled.enumerated() {
            let exact = mm.matchExactly(jobAds[j]).best?.imageIndex
            if exact != result.best[j] || exact != compiledBest[n] { mismatches += 1 }
        }
        let tBase = threadCPUSeconds() - t1
        let pairRate = Double(sampled.count) * Double(imageAds.count) / tPair
        let baseRate = Double(sampled.count) * Double(imageAds.count) / tBase
        let rate = pairs / best

        var digest: UInt64 = 0xcbf29ce484222325
        for (j, b) in result.best.enumerated() {
            let s =
                "\(j):" + (b.map { mm.images[$0].evaluate("Name").description + "@" + mm.images[$0].evaluate("Version").description } ?? "-") + "\n"
            for c in s.utf8 { digest = (digest ^ UInt64(c)) &* 0x100000001b3 }
        }
        print("workload:            \(jobAds.count) jobs x \(imageAds.count) images = \(Int(pairs)) pairs")
        print(
            "autoclusters:        \(result.clusters) (distinct job clauses \(result.jobClauses), \(result.compiledClauses) compiled; exact evaluations \(result.evaluations))"
        )
        print(String(format: "batch matcher:       %.3f s CPU, %.1f million pair evaluations/s/core", best, rate / 1e6))
        print(
            String(
                format:
                    "one job at a time:   %.3f s CPU for %d jobs, %.2f million pair evaluations/s/core (its Requirements down the images' columns)",
                tPair, sampled.count, pairRate / 1e6))
        print(
            String(
                format: "each pair alone:     %.3f s CPU for %d jobs, %.2f million pair evaluations/s/core (compiled, no columns)", tAlone,
                sampled.count,
                Double(sampled.count) * Double(imageAds.count) / tAlone / 1e6))
        print(
            String(format: "exact (reference):   %.3f s CPU for %d jobs, %.3f million pair evaluations/s/core", tBase, sampled.count, baseRate / 1e6))
        print(
            String(
                format: "speed-up:            batch %.0fx, one job at a time %.0fx, each pair alone %.0fx the exact evaluator", rate / baseRate,
                pairRate / baseRate,
                Double(sampled.count) * Double(imageAds.count) / tAlone / baseRate))
        print("matching pairs:      \(result.matchingPairs)")
        print("jobs with a match:   \(result.best.filter { $0 != nil }.count)")
        print("best-image digest:   \(String(format: "%016llx", digest))")
        print(
            "cross-check:         \(sampled.count - mismatches)/\(sampled.count) sampled jobs: batch, one at a time, each pair alone and the exact evaluator agree"
        )
        require("the batch matcher", rate / 1e6, atLeast: requireBatch, unit: "M pairs/s/core")
        require("one job at a time", pairRate / 1e6, atLeast: requireOneJob, unit: "M pairs/s/core")
        if latency > 0 {
            // One submission at a time, wall clock: what a job waits for between sbatch and its answer.
            // Cold: the images' ads prepared for this submission alone. Warm: prepared once (compiled,
            // their attributes in columns), as the catalog keeps them between submissions
            // (Catalog.preparedImages); only the job is new.
            func time(_ body: (ClassAd) -> Void) -> [Double] {
                var ms: [Double] = []
                let stride = max(1, jobAds.count / latency)
                for j in Swift.stride(from: 0, to: jobAds.count, by: stride).prefix(latency) {
                    let t = DispatchTime.now().uptimeNanoseconds
                    body(jobAds[j])
                    ms.append(Double(DispatchTime.now().uptimeNanoseconds - t) / 1e6)
                }
                return ms.sorted()
            }
            let warm = Matchmaker(images: imageAds)
            warm.prepare()
            for (name, ms) in [("cold", time { _ = Matchmaker(images: imageAds).match($0) }), ("warm", time { _ = warm.match($0) })] {
                let p95 = ms[min(ms.count - 1, ms.count * 95 / 100)]
                print(
                    "one submission, \(name): "
                        + String(
                            format: "median %.2f ms, 95th percentile %.2f ms against %d images (%d submissions)", ms[ms.count / 2], p95,
                            imageAds.count, ms.count))
            }
        }
        if mismatches > 0 || !missed.isEmpty { throw ExitCode(1) }
    }

    /// One submission through the catalog, as slurm-vmd answers sbatch: the job ad from --vm-* options,
    /// then Catalog.match against every image.
    /// Returns the 95th percentile, in milliseconds.
    func catalogLatency() throws -> Double {
        let root = NSTemporaryDirectory() + "slurm-vm-bench-catalog-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let catalog = try Catalog(root: root)
        let kernel = root + "/kernel", initrd = root + "/initrd"
        try Data("bench kernel".utf8).write(to: URL(fileURLWithPath: kernel))
        try Data("bench initrd".utf8).write(to: URL(fileURLWithPath: initrd))
        let k = try catalog.blobs.ingest(kernel), i = try catalog.blobs.ingest(initrd)
        var g = SyntheticWorkload(seed: seed, distinct: distinct)
        let t0 = DispatchTime.now().uptimeNanoseconds
        var records: [ImageRecord] = []
        for n in 0..<catalogImages {
            let ad = g.image(n)
            let own = zip(ad.names, ad.exprs).filter { !["name", "version", "requirements", "rank"].contains($0.0.key) }
            let record = ImageRecord(
                name: "img\(n)", version: ad.evaluate("Version").description.replacingOccurrences(of: "\"", with: ""),
                artefacts: [Artefact(role: "kernel", digest: k.digest, size: k.size), Artefact(role: "initrd", digest: i.digest, size: i.size)],
                cmdline: "quiet", derived: own.map { Attribute($0.0.spelling, Unparser.unparse($0.1)) },
                admin: try ["Requirements", "Rank"].compactMap { a in try ad.lookup(a).map { try ImageRecord.adminAttribute(a, Unparser.unparse($0)) }
                },
                source: "bench")
            records.append(record)
        }
        try catalog.add(records)
        print(
            String(format: "catalog:             %d images added in %.1f s", catalogImages, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9))
        let who = Requester(user: "user3", uid: 1003, gid: 1003, account: "physics")
        var rng = SyntheticWorkload(seed: seed &+ 1)
        func submission() -> Submission {
            let os = rng.pick(["debian", "ubuntu", "rocky"])
            let libs = rng.int(0, 2) == 0 ? [] : [rng.pick(["mpich", "openmpi", "libfftw3", "python3"])]
            return Submission(
                request: VMRequest(
                    vcpus: rng.int(1, 16), memoryMB: rng.int(256, 4096), os: os, libs: libs,
                    requirements: "TARGET.SizeMB <= \(rng.int(100, 400))"),
                requester: who)
        }
        var first = 0.0, ms: [Double] = [], matched = 0
        for n in 0...max(1, latency) {
            let s = submission()
            let t = DispatchTime.now().uptimeNanoseconds
            let m = try catalog.match(s)
            let took = Double(DispatchTime.now().uptimeNanoseconds - t) / 1e6
            if n == 0 { first = took } else { ms.append(took) }
            if n > 0 && m.accepted != nil { matched += 1 }
        }
        ms.sort()
        print(
            String(
                format:
                    "through the catalog: median %.2f ms, 95th percentile %.2f ms per submission against %d images (%d submissions, %d matched); the first after a change %.0f ms",
                ms[ms.count / 2], ms[min(ms.count - 1, ms.count * 95 / 100)], catalogImages, ms.count, matched, first))
        return ms[min(ms.count - 1, ms.count * 95 / 100)]
    }
}
