// Who sends which chunk to whom, and in what order: the plan every rank of a transfer derives on its
// own from (ranks, chunks, kind), so no schedule travels on the wire.
//
// The binomial pipeline. Ranks sit on a circulant graph: in step t, with j = t mod d and
// d = ⌈log2 N⌉, every rank r sends one chunk to (r + 2^j) mod N and receives one from (r − 2^j) mod N.
// The root (rank 0) sends chunk t in step t; every other rank sends the newest chunk it holds that its
// partner lacks. Each rank thus uploads and downloads at most one chunk per step, new chunks enter at
// one per step and reach everyone in about log2 N further steps: all N ranks hold all k chunks after
// k + d + O(1) steps (Tests/BroadcastTests check the bound for N up to 100), i.e. about size/rate +
// log2 N chunk times, where a store-and-forward binomial tree needs ⌈log2 N⌉ × size/rate. Unlike a
// chain, depth stays logarithmic; unlike the XOR hypercube exchange, any N works.
//
// Executing this plan literally (lock step, or as dataflow with the plan's order) was measured on the
// namespace testbed at 1.5-1.8× of size/rate for 8-16 nodes: any late chunk idles the ranks downstream
// of it, and two senders that meet at one receiver halve each other. So the pipeline runs receiver-
// driven on the same graph (TransferMachine.pull): each rank asks its neighbors for the newest chunks
// they hold, the root for chunks in injection order, keeping several requests open. The graph keeps
// the logarithmic depth; the lock-step plan stays the bound it is checked against, and is what the
// two baselines execute.

/// A fixed-size set of chunk indices.
public struct Bitset: Equatable, Sendable {
    public private(set) var words: [UInt64]
    public let count: Int
    public private(set) var population = 0

    public init(count: Int, full: Bool = false) {
        self.count = count
        words = Array(repeating: full ? ~0 : 0, count: (count + 63) / 64)
        if full {
            if count % 64 != 0 { words[words.count - 1] = (1 << UInt64(count % 64)) - 1 }
            population = count
        }
    }

    public subscript(i: Int) -> Bool { words[i >> 6] & (1 << UInt64(i & 63)) != 0 }

    /// Inserts i; true if it was not there.
    @discardableResult public mutating func insert(_ i: Int) -> Bool {
        let m: UInt64 = 1 << UInt64(i & 63)
        if words[i >> 6] & m != 0 { return false }
        words[i >> 6] |= m
        population += 1
        return true
    }

    public mutating func remove(_ i: Int) {
        let m: UInt64 = 1 << UInt64(i & 63)
        if words[i >> 6] & m != 0 { words[i >> 6] &= ~m; population -= 1 }
    }

    public var isFull: Bool { population == count }

    /// Adds every member of other (of the same count).
    public mutating func formUnion(_ other: Bitset) {
        var n = 0
        for w in words.indices {
            words[w] |= other.words[w]
            n += words[w].nonzeroBitCount
        }
        population = n
    }

    /// How many members self shares with other.
    public func countShared(with other: Bitset) -> Int {
        var n = 0
        for w in words.indices { n += (words[w] & other.words[w]).nonzeroBitCount }
        return n
    }

    /// The chunks c with c % 2 == stripe.
    public static func stripe(_ stripe: Int, count: Int) -> Bitset {
        var b = Bitset(count: count)
        for c in stride(from: stripe, to: count, by: 2) { b.insert(c) }
        return b
    }

    /// The highest index in self and not in other.
    public func newest(notIn other: Bitset) -> Int? {
        for w in stride(from: words.count - 1, through: 0, by: -1) {
            let x = words[w] & ~other.words[w]
            if x != 0 { return w * 64 + 63 - x.leadingZeroBitCount }
        }
        return nil
    }
}

public enum ScheduleKind: String, Sendable, CaseIterable {
    /// The binomial pipeline.
    case pipeline
    /// The store-and-forward binomial tree: a rank forwards only once it holds the whole image.
    case binomial
    /// Every rank receives the whole image from the root.
    case central
    /// Two binary trees over the receivers, each carrying half of the chunks (even ones down the first,
    /// odd ones down the second); a rank inner in one tree is a leaf in the other. Every rank receives
    /// two continuous streams at half the rate each and sends at most two: few flows per port, so the
    /// port's queueing discipline matters little. Receiver-driven like the pipeline. The default for
    /// many ranks or few chunks (`chosen`).
    case twoTree = "twotree"
    /// A pipelined chain: rank r receives every chunk from rank r - 1 and passes it on to r + 1, one
    /// TCP stream per port each way, which a drop-tail port serves at the full rate where two or three
    /// competing streams lose about a tenth of it (docs/broadcast.md). The depth is N chunks, so it
    /// suits few ranks or many chunks. Receiver-driven through the two trees' machinery, with both
    /// stripes from the one parent. The default for few ranks and many chunks (`chosen`).
    case relay

    /// The schedule a transfer uses when none is named: the relay while its depth, N − 1 chunks, is at
    /// most a sixteenth of the image, the two trees beyond. The relay's one stream per port keeps a
    /// drop-tail port at its full rate, where the two trees' two or three streams lose about a tenth
    /// (docs/broadcast.md); its depth costs (N − 1)/k of the transfer against the trees' 2⌈log2 N⌉/k.
    /// A sixteenth sits between the two: at 16 nodes, 256 MiB in 1 MiB chunks is a relay, 64 MiB two
    /// trees. Never past `maxRelayRanks`: the simulated curve (docs/broadcast.md) has the relay slow
    /// down in longer chains (1.17× size/rate at 64 ranks and 2 GiB against the trees' 1.05×, and
    /// worse at 128), where a hiccup anywhere stalls every rank below it at once. Every rank derives
    /// the choice from the manifest (ranks, chunks), so nothing travels.
    public static func chosen(ranks n: Int, chunks k: Int) -> ScheduleKind {
        n <= maxRelayRanks && (n - 1) * 16 <= k ? .relay : .twoTree
    }

    /// The longest chain the default makes a relay.
    public static let maxRelayRanks = 32

    /// Whether receivers pull (TransferMachine.pull) rather than senders working through a plan.
    public var pulls: Bool { self == .pipeline || streamsFromParents }
    /// Whether every rank has a fixed parent per stripe (`Plan.treeParents`) that streams to it.
    public var streamsFromParents: Bool { self == .twoTree || self == .relay }
}

/// One rank's share of a plan.
public struct RankSchedule: Sendable, Equatable {
    public struct Send: Sendable, Equatable {
        public let step: Int
        public let to: Int
        public let chunk: Int
    }
    /// What this rank sends, in order.
    public var sends: [Send] = []
    /// For each chunk: the step it is due and the rank due to send it (nil for the root's chunks).
    public var expected: [(step: Int, from: Int)?]
    /// Ranks this rank exchanges with: senders, receivers, and so the holders it may ask for repairs.
    public var neighbors: Set<Int> = []

    public static func == (a: RankSchedule, b: RankSchedule) -> Bool {
        a.sends == b.sends && a.neighbors == b.neighbors
            && a.expected.map { $0.map { [$0.step, $0.from] } } == b.expected.map { $0.map { [$0.step, $0.from] } }
    }
}

public struct Plan: Sendable {
    public let kind: ScheduleKind
    public let ranks: Int
    public let chunks: Int
    /// Indexed by rank.
    public let schedules: [RankSchedule]
    /// Steps until every rank holds every chunk, if executed in lock step.
    public let steps: Int
    /// How many sends a rank runs at once: one for the tree (each send gets the whole upload, as the
    /// step model assumes), all of them for the central server, three for the pipeline, whose ranks
    /// serve requests from several neighbors (measured on the namespace testbed: 1 → 1.60×, 2 → 1.34×,
    /// 3 → 1.18× of size/rate at 8 nodes with 256 MiB, with 8 requests open per rank).
    public let uploadSlots: Int
    /// Whether a rank may forward before it holds the whole image.
    public let forwardsEarly: Bool
    /// Two-tree and relay: for each rank, the rank it receives stripe s (chunks c with c % 2 == s)
    /// from; -1 for the root.
    public let treeParents: [[Int]]
    /// Two-tree and relay: a receiver that is a leaf in both trees (the chain's last rank), so its
    /// upload is idle. A rank whose own link proves slow trades places with it.
    public let treeSpare: Int?

    public init(kind: ScheduleKind, ranks n: Int, chunks k: Int) {
        precondition(n >= 1 && k >= 1)
        self.kind = kind
        ranks = n
        chunks = k
        var s = (0..<n).map { _ in RankSchedule(expected: Array(repeating: nil, count: k)) }
        func add(_ step: Int, _ from: Int, _ to: Int, _ chunk: Int) {
            s[from].sends.append(.init(step: step, to: to, chunk: chunk))
            if s[to].expected[chunk] == nil { s[to].expected[chunk] = (step, from) }
            s[from].neighbors.insert(to)
            s[to].neighbors.insert(from)
        }
        /// Links r with r ± 2^j mod N for every j < ⌈log2 N⌉: the circulant graph of the pipeline.
        func linkCirculant() {
            let d = max(1, (n - 1).bitWidthNeeded)
            for r in 0..<n {
                for j in 0..<d where (1 << j) < n {
                    let p = (r + (1 << j)) % n
                    if p != r { s[r].neighbors.insert(p); s[p].neighbors.insert(r) }
                }
            }
        }
        var steps = 0
        var parents = Array(repeating: [-1, -1], count: n)
        switch kind {
        case .twoTree:
            // Receivers 1…M in breadth-first order make the first tree (position i feeds 2i+1 and 2i+2);
            // the same shape over the reversed order makes the second. The inner positions are the first
            // ⌊M/2⌋, so a rank inner in one tree is a leaf in the other, and no rank uploads more than
            // two half-rate streams. The root feeds the top of each.
            let m = n - 1
            if m >= 1 {
                for stripe in 0..<2 {
                    let order = stripe == 0 ? Array(1...m) : Array((1...m).reversed())
                    for i in 0..<m {
                        let parent = i == 0 ? 0 : order[(i - 1) / 2]
                        parents[order[i]][stripe] = parent
                        s[order[i]].neighbors.insert(parent)
                        s[parent].neighbors.insert(order[i])
                    }
                }
            }
            linkCirculant()  // repair paths beside the trees
            steps = k + 2 * max(1, m.bitWidthNeeded)
        case .relay:
            for r in 1..<max(n, 1) {
                parents[r] = [r - 1, r - 1]
                s[r].neighbors.insert(r - 1)
                s[r - 1].neighbors.insert(r)
            }
            linkCirculant()  // repair paths beside the chain
            steps = k + n - 1
        case .pipeline:
            let d = max(1, (n - 1).bitWidthNeeded)
            var have = (0..<n).map { Bitset(count: k, full: $0 == 0) }
            var t = 0
            while n > 1 && have.contains(where: { !$0.isFull }) {
                let j = t % d
                var moves: [(Int, Int)] = []
                for r in 0..<n {
                    let p = (r + (1 << j)) % n
                    let c: Int?
                    if r == 0 && t < k { c = have[p][t] ? have[0].newest(notIn: have[p]) : t } else { c = have[r].newest(notIn: have[p]) }
                    if let c { moves.append((p, c)); add(t, r, p, c) }
                }
                for (p, c) in moves { have[p].insert(c) }
                t += 1
            }
            // Every edge of the graph, even one the lock-step plan left unused, is a repair path.
            linkCirculant()
            steps = t
        case .binomial:
            // Round i: every rank r < 2^i holding the image sends all of it to r + 2^i.
            var i = 0
            while (1 << i) < n {
                for r in 0..<(1 << i) where r + (1 << i) < n {
                    for c in 0..<k { add(i * k + c, r, r + (1 << i), c) }
                }
                i += 1
            }
            steps = i * k
        case .central:
            for r in 1..<max(n, 1) { for c in 0..<k { add(c, 0, r, c) } }
            steps = (n - 1) * k
        }
        for r in 0..<n { s[r].sends.sort { ($0.step, $0.to) < ($1.step, $1.to) } }
        schedules = s
        self.steps = steps
        treeParents = parents
        if kind.streamsFromParents {
            var inner = Set<Int>()
            for r in 1..<max(n, 1) { for q in parents[r] where q > 0 { inner.insert(q) } }
            treeSpare = (1..<max(n, 1)).first { !inner.contains($0) }
        } else {
            treeSpare = nil
        }
        switch kind {
        case .central: uploadSlots = max(1, n - 1)
        case .pipeline: uploadSlots = 3
        case .twoTree: uploadSlots = 4  // two children, and repairs beside them
        case .relay: uploadSlots = 3  // the next rank, and repairs beside it
        case .binomial: uploadSlots = 1
        }
        forwardsEarly = kind != .binomial
    }
}

extension Int {
    /// Bits needed to write self (0 for 0): ⌈log2(self + 1)⌉.
    public var bitWidthNeeded: Int { self <= 0 ? 0 : Int.bitWidth - leadingZeroBitCount }
}
