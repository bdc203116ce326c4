// The plans, executed in lock step: every rank ends with every chunk, no rank sends or receives more
// than one chunk per step, and the binomial pipeline finishes within k + log2 N + O(1) steps.

import Testing
@testable import Broadcast

@Suite struct PlanTests {
    static func lockStep(_ plan: Plan) -> (complete: Bool, maxSends: Int, maxRecvs: Int) {
        var have = (0..<plan.ranks).map { Bitset(count: plan.chunks, full: $0 == 0) }
        var sendsPer: [Int: [Int: Int]] = [:], recvsPer: [Int: [Int: Int]] = [:]
        let all = plan.schedules.enumerated().flatMap { r, s in s.sends.map { (r, $0) } }.sorted { $0.1.step < $1.1.step }
        var i = 0
        while i < all.count {
            let step = all[i].1.step
            var moves: [(Int, Int)] = []
            while i < all.count && all[i].1.step == step {
                let (r, e) = all[i]
                if !have[r][e.chunk] { return (false, 0, 0) }  // sent before it was held
                moves.append((e.to, e.chunk))
                sendsPer[step, default: [:]][r, default: 0] += 1
                recvsPer[step, default: [:]][e.to, default: 0] += 1
                i += 1
            }
            for (p, c) in moves { have[p].insert(c) }
        }
        let ms = sendsPer.values.flatMap(\.values).max() ?? 0
        let mr = recvsPer.values.flatMap(\.values).max() ?? 0
        return (have.allSatisfy(\.isFull), ms, mr)
    }

    @Test(arguments: [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100])
    func pipelineIsCompleteAndNearOptimal(n: Int) {
        for k in [1, 5, 64, 200] {
            let plan = Plan(kind: .pipeline, ranks: n, chunks: k)
            let r = Self.lockStep(plan)
            #expect(r.complete, "N=\(n) k=\(k)")
            if n > 1 {
                #expect(r.maxSends == 1 && r.maxRecvs == 1, "N=\(n) k=\(k): \(r.maxSends) sends, \(r.maxRecvs) receives in one step")
                let d = (n - 1).bitWidthNeeded
                #expect(plan.steps <= k + d + 3, "N=\(n) k=\(k): \(plan.steps) steps")
                // Every chunk a rank lacks has a due step and sender.
                for r in 1..<n { #expect(plan.schedules[r].expected.allSatisfy { $0 != nil }) }
                // Degree stays logarithmic.
                #expect(plan.schedules.allSatisfy { $0.neighbors.count <= 2 * d })
            }
        }
    }

    @Test func baselinesAreCompleteWithTheirKnownCosts() {
        for n in [2, 4, 8, 16] {
            let k = 10
            let b = Plan(kind: .binomial, ranks: n, chunks: k)
            #expect(Self.lockStep(b).complete)
            #expect(b.steps == (n - 1).bitWidthNeeded * k)
            #expect(!b.forwardsEarly && b.uploadSlots == 1)
            let c = Plan(kind: .central, ranks: n, chunks: k)
            #expect(Self.lockStep(c).complete)
            #expect(c.uploadSlots == n - 1)
            #expect(c.schedules[0].sends.count == (n - 1) * k)
        }
    }

    @Test func bitsetNewestAndPopulation() {
        var a = Bitset(count: 130), b = Bitset(count: 130)
        for i in [0, 64, 129] { a.insert(i) }
        #expect(a.population == 3)
        #expect(a.newest(notIn: b) == 129)
        b.insert(129)
        #expect(a.newest(notIn: b) == 64)
        #expect(Bitset(count: 130, full: true).population == 130)
        #expect(Bitset(count: 128, full: true).newest(notIn: Bitset(count: 128)) == 127)
    }

    /// Two trees over the receivers: every receiver has a parent in each, reaches the root within
    /// ⌈log2 N⌉ + 1 hops in each, and feeds children in at most one of them (so it uploads at most two
    /// half-rate streams).
    @Test(arguments: [2, 3, 4, 7, 16, 100, 1024])
    func twoTreesAreDisjointInTheirInnerRanks(n: Int) {
        let plan = Plan(kind: .twoTree, ranks: n, chunks: 8)
        var children = Array(repeating: [0, 0], count: n)
        for r in 1..<n {
            for stripe in 0..<2 {
                let p = plan.treeParents[r][stripe]
                #expect(p >= 0 && p < n && p != r)
                #expect(plan.schedules[r].neighbors.contains(p), "a tree edge is a connection")
                children[p][stripe] += 1
                var hops = 0
                var q = r
                while q != 0 && hops <= n { q = plan.treeParents[q][stripe]; hops += 1 }
                #expect(q == 0 && hops <= (n - 1).bitWidthNeeded + 1, "N=\(n) rank \(r) stripe \(stripe): \(hops) hops")
            }
        }
        for r in 1..<n {
            #expect(children[r][0] + children[r][1] <= 2 && (children[r][0] == 0 || children[r][1] == 0), "rank \(r): \(children[r])")
        }
        #expect(plan.treeParents[0] == [-1, -1])
    }

    /// A slow inner rank and the spare leaf trade places (TransferMachine.replan): every rank computes
    /// the same new trees, which are still two trees of the same depth, the slow rank is a leaf in both,
    /// and the spare forwards in its place. The spare may sit in the slow rank's own subtree.
    @Test(arguments: [16, 32, 64, 100, 1024])
    func aSlowRankTradesPlacesWithTheSpareLeaf(n: Int) {
        let plan = Plan(kind: .twoTree, ranks: n, chunks: 8)
        guard let spare = plan.treeSpare else {
            Issue.record("N=\(n): no spare leaf")
            return
        }
        #expect(!plan.treeParents.contains { $0.contains(spare) }, "the spare is a leaf in both trees")
        for slow in [1, n / 2 - 1, n - 1] where slow != spare {
            var views: [[[Int]]] = []
            for r in [0, slow, spare, n / 3] {
                var m = TransferMachine(rank: r, plan: plan, holdsAll: r == 0, now: 0)
                let out = m.handle(.replanned(slow: slow), now: 0)
                #expect(out.contains(.replan(slow: slow)), "rank \(r) passes it on")
                #expect(m.handle(.replanned(slow: slow), now: 0).contains(.replan(slow: slow)) == false, "only once")
                views.append(m.treeParents)
            }
            let t = views[0]
            #expect(views.allSatisfy { $0 == t }, "N=\(n): every rank computes the same trees")
            #expect(!t.contains { $0.contains(slow) }, "N=\(n): the slow rank \(slow) has no children")
            #expect(t[spare] == plan.treeParents[slow].map { $0 == slow ? spare : $0 })
            for r in 1..<n {
                for stripe in 0..<2 {
                    var hops = 0
                    var q = r
                    while q != 0 && hops <= n { q = t[q][stripe]; hops += 1 }
                    #expect(q == 0 && hops <= (n - 1).bitWidthNeeded + 1, "N=\(n) rank \(r) stripe \(stripe): \(hops) hops")
                }
            }
        }
    }

    /// The relay is one chain in rank order, both stripes from the rank before; its last rank is the
    /// spare, and a slow rank's trade moves it to the end of the chain, the others keeping their order.
    @Test(arguments: [2, 3, 16, 100])
    func theRelayIsOneChainAndASlowRankMovesToItsEnd(n: Int) {
        let plan = Plan(kind: .relay, ranks: n, chunks: 8)
        #expect(plan.treeParents[0] == [-1, -1])
        for r in 1..<n {
            #expect(plan.treeParents[r] == [r - 1, r - 1])
            #expect(plan.schedules[r].neighbors.contains(r - 1), "a chain edge is a connection")
        }
        #expect(plan.treeSpare == n - 1)
        for slow in Set([1, n / 2, n - 2]) where slow >= 1 && slow != n - 1 {
            var m = TransferMachine(rank: 0, plan: plan, holdsAll: true, now: 0)
            _ = m.handle(.replanned(slow: slow), now: 0)
            // Walk the chain from the root: each rank's unique child.
            var order = [0]
            while let next = (0..<n).first(where: { m.treeParents[$0][0] == order.last! }) {
                #expect(m.treeParents[next][1] == order.last!)
                order.append(next)
            }
            #expect(order.count == n, "N=\(n), slow \(slow): \(order)")
            #expect(order.last == slow, "N=\(n): the slow rank ends the chain: \(order)")
        }
    }

    /// The default: the relay while its depth (N − 1 chunks) is at most a sixteenth of the image, and
    /// the chain at most 32 ranks long.
    @Test func theDefaultIsTheRelayWhileItsDepthIsASixteenthOfTheImage() {
        #expect(ScheduleKind.chosen(ranks: 16, chunks: 256) == .relay)  // 256 MiB in 1 MiB chunks
        #expect(ScheduleKind.chosen(ranks: 16, chunks: 239) == .twoTree)
        #expect(ScheduleKind.chosen(ranks: 16, chunks: 64) == .twoTree)  // 64 MiB
        #expect(ScheduleKind.chosen(ranks: 16, chunks: 256 * 4) == .relay)  // 256 MiB in 256 KiB chunks
        #expect(ScheduleKind.chosen(ranks: 17, chunks: 256) == .relay)
        #expect(ScheduleKind.chosen(ranks: 18, chunks: 256) == .twoTree)
        #expect(ScheduleKind.chosen(ranks: 2, chunks: 16) == .relay)
        #expect(ScheduleKind.chosen(ranks: 1024, chunks: 2048) == .twoTree)
        #expect(ScheduleKind.chosen(ranks: 32, chunks: 2048) == .relay)  // 2 GiB in 1 MiB chunks
        #expect(ScheduleKind.chosen(ranks: 33, chunks: 2048) == .twoTree)  // no longer chains
    }

    /// A rank that does not know the schedule yet dials the relay's neighbors (Participant.initialDials):
    /// every pulling schedule has them, and the relay has no others.
    @Test(arguments: [2, 3, 5, 16, 17, 100])
    func theRelaysNeighborsAreInEveryPullingPlan(n: Int) {
        let relay = Plan(kind: .relay, ranks: n, chunks: 1).schedules
        for kind in ScheduleKind.allCases where kind.pulls {
            let other = Plan(kind: kind, ranks: n, chunks: 1).schedules
            for r in 0..<n { #expect(relay[r].neighbors.isSubset(of: other[r].neighbors), "\(kind), N=\(n), rank \(r)") }
        }
        let pipeline = Plan(kind: .pipeline, ranks: n, chunks: 1).schedules
        for r in 0..<n { #expect(relay[r].neighbors == pipeline[r].neighbors, "N=\(n), rank \(r): the circulant graph") }
    }

    /// Without a named chunk size, an image gets at least 1,024 chunks down to 256 KiB each, so the
    /// relay stays the default at 16 nodes for small images too, and its depth a small share.
    @Test func theDefaultChunkGivesSmallImagesEnoughChunks() {
        #expect(Manifest.chunkSize(forBytes: 2 << 30) == 1 << 20)
        #expect(Manifest.chunkSize(forBytes: 1 << 30) == 1 << 20)
        #expect(Manifest.chunkSize(forBytes: 512 << 20) == 512 << 10)
        #expect(Manifest.chunkSize(forBytes: 256 << 20) == 256 << 10)
        #expect(Manifest.chunkSize(forBytes: 64 << 20) == 256 << 10)
        #expect(Manifest.chunkSize(forBytes: 1 << 20) == 256 << 10)
        #expect(ScheduleKind.chosen(ranks: 16, chunks: (64 << 20) / Manifest.chunkSize(forBytes: 64 << 20)) == .relay)
    }
}
