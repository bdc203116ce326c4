// TransferMachine driven by a small discrete-event network: every rank's upload and download carry one
// chunk per time unit (a rank's rate can be lowered), messages take 0.01 units. Deterministic, so each
// fault path is checked exactly: a rank killed mid-transfer, a corrupted chunk, a slow rank, a stalled
// one.

import Testing
import Support
@testable import Broadcast

final class Network {
    struct Pending { var at: Double; var seq: Int; var to: Int; var event: TransferMachine.Event }
    var machines: [TransferMachine]
    var queue: [Pending] = []
    var seq = 0
    var now = 0.0
    var rate: [Double]
    var dead = Set<Int>()
    var stalled = Set<Int>()
    var corrupt: Set<Int> = []  // chunk indices whose first delivery is corrupted
    var corruptedOnce = Set<Int>()
    var doneAt: [Double?]
    var failed: [String?]
    var downloadFree: [Double]
    var killAt: (rank: Int, time: Double)?
    /// Announcements go to neighbors in rank order, or in an order shuffled by this seed: a real network
    /// delivers them in any order, and a Set's own order changes with each process's hash seed.
    var orderSeed: UInt64?

    init(_ kind: ScheduleKind, ranks n: Int, chunks k: Int, rate: [Double]? = nil) {
        let plan = Plan(kind: kind, ranks: n, chunks: k)
        // One time unit is one chunk time (about 40 ms for 1 MiB at 200 Mbit/s): the real timeouts, scaled.
        var o = TransferMachine.Options(plan: plan)
        o.stallSeconds = 25
        o.wantTimeout = 75
        o.giveUpSeconds = 1500
        machines = (0..<n).map { TransferMachine(rank: $0, plan: plan, holdsAll: $0 == 0, now: 0, options: o) }
        self.rate = rate ?? Array(repeating: 1, count: n)
        doneAt = Array(repeating: nil, count: n)
        failed = Array(repeating: nil, count: n)
        downloadFree = Array(repeating: 0, count: n)
        doneAt[0] = 0
        for r in 0..<n {
            for p in machines[r].dialed {
                post(0, r, .connected(peer: p, complete: p == 0))
                post(0, p, .connected(peer: r, complete: false))
            }
        }
    }

    func post(_ delay: Double, _ to: Int, _ e: TransferMachine.Event) {
        seq += 1
        queue.append(Pending(at: now + delay, seq: seq, to: to, event: e))
    }

    func run(until limit: Double = 10_000) {
        var nextTick = 1.0
        while !queue.isEmpty || doneAt.enumerated().contains(where: { $0.element == nil && !dead.contains($0.offset) && failed[$0.offset] == nil }) {
            if let (r, t) = killAt, now >= t {
                killAt = nil
                dead.insert(r)
                for p in machines[r].neighbors.sorted() { post(0.01, p, .disconnected(peer: r)) }
            }
            let i = queue.indices.min { (queue[$0].at, queue[$0].seq) < (queue[$1].at, queue[$1].seq) }
            if let i, queue[i].at <= nextTick {
                let p = queue.remove(at: i)
                now = p.at
                deliver(p.to, p.event)
            } else {
                now = nextTick
                nextTick += 1.0
                for r in machines.indices where !dead.contains(r) { deliver(r, .tick) }
            }
            if now > limit { return }
        }
    }

    func announceOrder(_ r: Int) -> [Int] {
        var order = machines[r].neighbors.sorted()
        if var seed = orderSeed {
            seed &+= UInt64(seq)
            var g = SeededRandom(seed: seed)
            order.shuffle(using: &g)
        }
        return order
    }

    func deliver(_ r: Int, _ e: TransferMachine.Event) {
        guard !dead.contains(r) else { return }
        for a in machines[r].handle(e, now: now) {
            switch a {
            case .send(let p, let c):
                guard !dead.contains(p), !stalled.contains(r) else { continue }
                // The sender's upload is one slot at its rate; the receiver's download is serialized.
                let dur = 1 / min(rate[r], rate[p])
                let start = max(now, downloadFree[p] - dur * 0.5)
                downloadFree[p] = start + dur
                let bad = corrupt.contains(c) && corruptedOnce.insert(c).inserted
                post(start + dur - now, r, .sent(to: p, chunk: c))
                post(start + dur - now + 0.01, p, .received(from: r, chunk: c, valid: !bad))
            case .want(let p, let c):
                post(0.01, p, .wanted(by: r, chunk: c))
            case .announce(let c):
                for p in announceOrder(r) where !dead.contains(p) { post(0.01, p, .peerHas(peer: r, chunk: c)) }
            case .connect(let p):
                post(0.01, r, .connected(peer: p, complete: machines[p].complete))
                post(0.01, p, .connected(peer: r, complete: machines[r].complete))
            case .replan(let slow):
                for p in announceOrder(r) where !dead.contains(p) { post(0.01, p, .replanned(slow: slow)) }
            case .complete:
                doneAt[r] = now
            case .fail(let why):
                failed[r] = why
            case .pace:
                break  // this network has no queues for pacing to matter in
            }
        }
    }
}

@Suite struct MachineTests {
    @Test(arguments: [2, 3, 4, 8, 13, 16])
    func pipelineCompletesNearTheLimit(n: Int) {
        let k = 64
        let net = Network(.pipeline, ranks: n, chunks: k)
        net.run()
        #expect(net.failed.allSatisfy { $0 == nil })
        let last = net.doneAt.compactMap { $0 }.max() ?? .infinity
        #expect(net.doneAt.allSatisfy { $0 != nil })
        // About k chunk times plus the pipeline's depth; the slack covers the model's serialization.
        #expect(last <= Double(k) * 1.15 + 2 * Double((n - 1).bitWidthNeeded) + 2, "N=\(n): \(last)")
        let dup = net.machines.map(\.stats.duplicates).reduce(0, +)
        #expect(dup <= n, "N=\(n): \(dup) duplicate chunks")
    }

    /// Announcements reordered as a real network may reorder them: every order completes near the limit
    /// and duplicates stay few (the pipeline's "any" pulls may race once per rank with a push).
    @Test(arguments: [8, 13, 16])
    func anyDeliveryOrderCompletesWithFewDuplicates(n: Int) {
        let k = 64
        var worstDup = 0
        var worstTime = 0.0
        for seed in UInt64(1)...12 {
            let net = Network(.pipeline, ranks: n, chunks: k)
            net.orderSeed = seed
            net.run()
            #expect(net.failed.allSatisfy { $0 == nil } && net.doneAt.allSatisfy { $0 != nil }, "N=\(n) seed \(seed)")
            worstDup = max(worstDup, net.machines.map(\.stats.duplicates).reduce(0, +))
            worstTime = max(worstTime, net.doneAt.compactMap { $0 }.max() ?? .infinity)
        }
        print("N=\(n): worst of 12 orders: \(worstDup) duplicates, done at \(worstTime)")
        #expect(worstTime <= Double(k) * 1.15 + 2 * Double((n - 1).bitWidthNeeded) + 2, "N=\(n): \(worstTime)")
        #expect(worstDup <= 2 * n, "N=\(n): \(worstDup) duplicate chunks")
    }

    @Test(arguments: [ScheduleKind.twoTree, .relay], [2, 3, 4, 8, 13, 16])
    func streamingFromParentsCompletes(kind: ScheduleKind, n: Int) {
        let k = 64
        let net = Network(kind, ranks: n, chunks: k)
        net.run()
        #expect(net.failed.allSatisfy { $0 == nil } && net.doneAt.allSatisfy { $0 != nil })
        // Each stripe flows down a tree of depth about log2 N, or the relay's chain of n - 1 links, one
        // chunk per unit per link.
        let depth = kind == .relay ? 2 * Double(n) : 4 * Double((n - 1).bitWidthNeeded)
        let last = net.doneAt.compactMap { $0 }.max() ?? .infinity
        #expect(last <= Double(k) * 1.15 + depth + 2, "\(kind) N=\(n): \(last)")
        #expect(net.machines.map(\.stats.duplicates).reduce(0, +) <= n)
    }

    /// Rank 2 is inner in the first tree (ranks 4 and 5 lose their even-chunk parent) and the relay's
    /// third link (ranks 3 to 15 lose their way down the chain).
    @Test(arguments: [ScheduleKind.twoTree, .relay])
    func survivesAKilledInnerRankACorruptChunkAndAStalledSender(kind: ScheduleKind) {
        let killed = Network(kind, ranks: 16, chunks: 64)
        killed.killAt = (2, 20)
        killed.run()
        for r in 0..<16 where r != 2 { #expect(killed.doneAt[r] != nil && killed.failed[r] == nil, "\(kind) rank \(r)") }
        let corrupt = Network(kind, ranks: 8, chunks: 32)
        corrupt.corrupt = [3, 17]
        corrupt.run()
        #expect(corrupt.doneAt.allSatisfy { $0 != nil })
        #expect(corrupt.machines.map(\.stats.corrupted).reduce(0, +) == 2)
        let stalled = Network(kind, ranks: 8, chunks: 32)
        stalled.stalled = [2]
        stalled.run()
        for r in 0..<8 { #expect(stalled.doneAt[r] != nil, "\(kind) rank \(r)") }
    }

    @Test func baselinesComplete() {
        for kind in [ScheduleKind.binomial, .central] {
            let net = Network(kind, ranks: 8, chunks: 16)
            net.run()
            #expect(net.doneAt.allSatisfy { $0 != nil }, "\(kind)")
        }
    }

    @Test func aRankKilledMidTransferDoesNotStopTheOthers() {
        let net = Network(.pipeline, ranks: 16, chunks: 64)
        net.killAt = (5, 20)
        net.run()
        for r in 0..<16 where r != 5 { #expect(net.doneAt[r] != nil && net.failed[r] == nil, "rank \(r)") }
        #expect(net.doneAt[5] == nil)
        #expect(net.machines.map(\.stats.reasked).reduce(0, +) > 0, "requests open at the dead rank were asked again elsewhere")
    }

    @Test func aCorruptedChunkIsFetchedAgain() {
        let net = Network(.pipeline, ranks: 8, chunks: 32)
        net.corrupt = [3, 17]
        net.run()
        #expect(net.doneAt.allSatisfy { $0 != nil })
        #expect(net.machines.map(\.stats.corrupted).reduce(0, +) == 2)
    }

    /// Rank 8 of 16 is also the root's neighbor (across the ring, as in the benchmark's slow-node row).
    @Test(arguments: [6, 8]) func aSlowRankFinishesLateWithoutHoldingUpTheRest(slow: Int) {
        let k = 64
        var rate = Array(repeating: 1.0, count: 16)
        rate[slow] = 0.25
        let net = Network(.pipeline, ranks: 16, chunks: k, rate: rate)
        net.run()
        #expect(net.doneAt.allSatisfy { $0 != nil })
        let others = net.doneAt.enumerated().filter { $0.offset != slow }.compactMap { $0.element }.max()!
        #expect(others <= Double(k) * 1.3, "the others took \(others) for \(k) chunks")
        #expect(net.doneAt[slow]! > others, "the slow rank is the last")
    }

    @Test func theRootGivesASlowReceiverAChunkOthersAlreadyHold() {
        let plan = Plan(kind: .pipeline, ranks: 4, chunks: 8)
        var root = TransferMachine(rank: 0, plan: plan, holdsAll: true, now: 0)
        _ = root.handle(.connected(peer: 1, complete: false), now: 0)
        _ = root.handle(.connected(peer: 2, complete: false), now: 0)
        // Rank 1 takes a chunk per time unit, rank 2 one per four.
        var t = 0.0
        for _ in 0..<3 {
            for (p, took) in [(1, 1.0), (2, 4.0)] {
                let sends = root.handle(.wanted(by: p, chunk: TransferMachine.anyChunk), now: t)
                guard case .send(_, let c)? = sends.first else { Issue.record("no send to \(p)"); return }
                _ = root.handle(.sent(to: p, chunk: c), now: t + took)
            }
            t += 5
        }
        let before = root.injected
        let sends = root.handle(.wanted(by: 2, chunk: TransferMachine.anyChunk), now: t)
        guard case .send(2, let c)? = sends.first else { Issue.record("no send: \(sends)"); return }
        #expect(c < before, "chunk \(c) was already given out (the root had injected \(before))")
        #expect(root.injected == before, "nothing fresh went to the slow receiver")
        let fast = root.handle(.wanted(by: 1, chunk: TransferMachine.anyChunk), now: t)
        #expect(fast == [.send(to: 1, chunk: before)], "the fast one gets the next fresh chunk")
    }

    @Test func aStalledSenderIsWorkedAround() {
        let net = Network(.pipeline, ranks: 8, chunks: 32)
        net.stalled = [3]  // connected, but nothing it sends ever arrives
        net.run()
        for r in 0..<8 { #expect(net.doneAt[r] != nil, "rank \(r)") }
    }

    @Test func withNoHolderLeftARankFallsBackToTheRoot() {
        // Rank 3 of 4 loses both of its neighbors other than the root path; it must dial the root.
        let net = Network(.pipeline, ranks: 4, chunks: 16)
        net.killAt = (1, 0.5)
        net.run()
        for r in [0, 2, 3] { #expect(net.doneAt[r] != nil, "rank \(r)") }
    }

    /// Three ranks in two trees: rank 1 gets its odd chunks from rank 2. Rank 2 dead from the start
    /// (a full disk) or midway leaves rank 1 only the root, which then streams that stripe too.
    @Test(arguments: [0.0, 5.0]) func aTreeParentThatDiesLeavesTheOtherParentStreamingBothStripes(at: Double) {
        let net = Network(.twoTree, ranks: 3, chunks: 32)
        #expect(net.machines[1].treeParents[1] == [0, 2])
        net.killAt = (2, at)
        net.run()
        #expect(net.doneAt[1] != nil && net.failed[1] == nil, "\(net.failed[1] ?? "not done")")
    }

    /// Both ends dialed at once (a re-planned parent): the second connection replaces the first, and
    /// requests sent on the first may be lost with it. They are asked again on the second; before,
    /// they stayed "in flight" and the stripe waited until the end of the transfer (CI: 2.4x).
    @Test func requestsAreAskedAgainWhenAConnectionIsReplaced() {
        let plan = Plan(kind: .relay, ranks: 4, chunks: 64)
        var m = TransferMachine(rank: 2, plan: plan, holdsAll: false, now: 0)
        #expect(m.treeParents[2] == [1, 1])
        func wants(_ actions: [TransferMachine.Action]) -> [Int] {
            actions.compactMap { if case .want(1, let c) = $0 { return c } else { return nil } }.sorted()
        }
        let first = wants(m.handle(.connected(peer: 1, complete: false), now: 0))
        #expect(!first.isEmpty)
        let again = wants(m.handle(.connected(peer: 1, complete: false), now: 0.01))
        #expect(again == first)
    }

    @Test func givesUpWhenNothingArrives() {
        let net = Network(.pipeline, ranks: 2, chunks: 4)
        net.killAt = (0, 0)
        net.run(until: 3000)
        #expect(net.failed[1]?.contains("no chunk arrived") == true)
    }
}
