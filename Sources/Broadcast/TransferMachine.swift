// One rank's side of a transfer as a pure state machine: events in (a peer connected, a chunk arrived
// or was sent, a peer asked for a chunk, time passed), actions out (send, ask, announce, done, fail).
// The network driver (Participant) only carries these out, so the policy, including every fault path, is
// tested deterministically with simulated time (Tests/BroadcastTests).
//
// Policy for the pipeline: receivers pull (see pull()); senders serve requests as their upload slots
// free up, slow receivers not counting against the slots; the root gives fresh chunks only to receivers
// that are not slow; a rank that hears from nobody for a while and finds no neighbor holding what it
// misses dials the root.
//
// Policy for the baselines (tree, central):
// - Upload: the plan's sends in order, each as soon as this rank holds the chunk and the receiver has no
//   send from us in progress; a later entry goes first when an earlier one is not ready (dataflow, not
//   lock step). Requests from peers (repairs) are served first. A send that takes far longer than usual
//   (the receiver is slow or stalled) stops counting against the upload slots, so one slow receiver
//   never holds up the others.
// - Repair: a chunk is fetched from any neighbor that holds it when its sender is gone, when it arrived
//   corrupted, when the chunks due several steps after it have already arrived (its sender is late),
//   or when nothing has arrived for a while. A request that goes unanswered is asked of someone else.
//   When no neighbor holds what is missing, the rank connects to the root, which holds everything.

import Foundation

public struct TransferMachine: Sendable {
    public struct Options: Sendable {
        /// Steps a chunk may lag behind the ones due after it before it is fetched elsewhere.
        public var lateSlack: Int
        /// Seconds without any arrival after which everything due is fetched elsewhere.
        public var stallSeconds: Double = 1.0
        /// Seconds an unanswered request waits before it is asked of someone else.
        public var wantTimeout: Double = 3.0
        /// Seconds without any arrival after which the transfer fails.
        public var giveUpSeconds: Double = 60
        public var maxWants = 4
        public var maxWantsPerPeer = 2
        /// Requests a rank keeps open at once in the pipeline (each to a different neighbor).
        public var pullDepth = 8
        /// Two-tree: requests a rank keeps open at each stripe's parent: 4 MiB of chunks, so that the
        /// parent's stream never waits for a request whatever the chunk size (and at least 4).
        public var treeWindow: Int
        /// Two-tree: chunks a stripe may trail the other before its parent counts as slow and the
        /// stripe is also pulled from anyone. A rank deep in one tree and shallow in the other trails
        /// by about a chunk per level of difference, so this grows with the depth: a fixed 8 sent ranks
        /// 9 levels deep (N = 512, simulated) pulling from anyone, the root among them, until the
        /// root's upload went to repairs and every rank slowed to 1.34× of size/rate. Over a long
        /// transfer the stripes also drift a little apart: at 16 nodes and 2 GiB, 10 cost 1.20×, 16 1.14×.
        public var treeLag: Int
        /// Two-tree: chunks of each stripe both parents may hold beyond this rank before its own link
        /// counts as slow (16 MiB: a level's lag on a drop-tail port is about 4 MiB). Relay: 4 MiB, as
        /// its one parent is ahead by no more than what is in flight, and every rank behind the slow
        /// one (the spare among them) stays behind by what it lagged when the trade came.
        public var slowLinkLag: Int
        /// Whether lateness and stalls trigger repairs (the baselines only repair after a loss).
        public var repairs = true

        public init(plan: Plan, chunkBytes: Int = 1 << 20) {
            let d = max(1, (plan.ranks - 1).bitWidthNeeded)
            treeWindow = max(4, (4 << 20) / max(1, chunkBytes))
            let lagMiB = plan.kind == .relay ? 4 : 16
            slowLinkLag = max(lagMiB, (lagMiB << 20) / max(1, chunkBytes))
            lateSlack = 2 * d + 2
            treeLag = max(16, 2 * d + 2)
            repairs = plan.kind.pulls
        }
    }

    public enum Event: Sendable, Equatable {
        case connected(peer: Int, complete: Bool)
        case disconnected(peer: Int)
        case peerHas(peer: Int, chunk: Int)
        case received(from: Int, chunk: Int, valid: Bool)
        case sent(to: Int, chunk: Int)
        case wanted(by: Int, chunk: Int)
        /// Two-tree: a peer passed on that this rank's link is slow and it trades places with the spare leaf.
        case replanned(slow: Int)
        case tick
    }

    public enum Action: Sendable, Equatable {
        case send(to: Int, chunk: Int)
        case want(from: Int, chunk: Int)
        /// Tell every connected peer this rank now holds the chunk.
        case announce(chunk: Int)
        /// Open a connection to this rank (the root, as a last resort).
        case connect(Int)
        /// Every chunk is here and verified: check the whole and keep it.
        case complete
        case fail(String)
        /// Pace the stream to this peer at most at this many chunks a second, infinity lifting it (two-tree: a parent
        /// forwards a stripe no faster than it arrives, so each chunk leaves evenly spaced instead of
        /// as one burst that a drop-tail port would cut).
        case pace(to: Int, chunksPerSecond: Double)
        /// Two-tree: tell every connected peer that this slow rank trades places with the spare leaf
        /// (each rank passes it on once, so it floods the graph).
        case replan(slow: Int)
    }

    struct PeerState: Sendable {
        var has: Bitset
        var sending: (chunk: Int, since: Double)?
        var myWants: [Int: Double] = [:]
        var anyAsked: Double?
        var unanswered = 0
        /// How long its answers take (seconds, smoothed).
        var service: Double?
        /// How long our sends to it take (seconds, smoothed): long when its download is slow.
        var sendTook: Double?
        /// What it has announced (has also counts what we sent it): whether it is done.
        var announced: Bitset
    }

    public let rank: Int
    public let plan: Plan
    public let options: Options
    let schedule: RankSchedule
    public private(set) var have: Bitset
    var peers: [Int: PeerState] = [:]
    var entryDone: [Bool]
    var firstOpen = 0
    var wantQueue: [(peer: Int, chunk: Int)] = []
    var wanted: [Int: Int] = [:]  // chunk → peer asked
    var suspect = Set<Int>()
    var lost = Set<Int>()
    var progressStep = -1
    var lastArrival: Double
    /// Relay and two trees: when a parent first held a chunk this rank lacked. Until then the stream
    /// is still filling down to this rank (the n-th rank of a relay waits n chunk times for its first
    /// chunk: at 1 MiB and 200 Mbit/s, rank 24 already a second), which is not a stall.
    var parentOffered: Double?
    /// Ranks this one has asked to be connected to (once each).
    var dialing = Set<Int>()
    let startedAt: Double
    var typicalSend: Double?
    var typicalReceive: Double?
    var pullRotation = 0
    /// Two-tree: per stripe, the lowest chunk of it not yet held, and how many of it are held.
    var treeCursor = [0, 1]
    var stripeHeld = [0, 0]
    let stripeMasks: [Bitset]
    /// Two-tree: per stripe, when its last `pacingWindow` chunks arrived, and the highest rate (chunks a
    /// second) seen over such a window.
    var stripeArrivals: [[Double]] = [[], []]
    var stripePeak: [Double] = [0, 0]
    var paced: [Int: Double] = [:]
    static let pacingWindow = 8
    var askedForRoot = false
    /// Two-tree: each rank's parent per stripe, the plan's until a slow rank trades places with the
    /// spare leaf (`replan`); at most once, since the plan has one spare.
    public private(set) var treeParents: [[Int]]
    var replanned = false
    var hasTreeChildren = false
    public private(set) var finished = false
    let outNeighbors: [Int]
    var rotation = 0
    var injected = 0
    public private(set) var stats = Stats()

    public struct Stats: Sendable, Equatable {
        public var received = 0, duplicates = 0, corrupted = 0, repairs = 0, sent = 0, served = 0
        /// Requests lost with a neighbor that left or went unanswered, and asked again elsewhere.
        public var reasked = 0
        /// Two-tree: the slow rank the trees were re-planned around, if any.
        public var replannedSlow: Int?
    }

    public init(rank: Int, plan: Plan, holdsAll: Bool, now: Double, options: Options? = nil) {
        self.rank = rank
        self.plan = plan
        self.options = options ?? Options(plan: plan)
        schedule = plan.schedules[rank]
        have = Bitset(count: plan.chunks, full: holdsAll)
        entryDone = Array(repeating: false, count: schedule.sends.count)
        let d = max(1, (plan.ranks - 1).bitWidthNeeded)
        var outs: [Int] = []
        for j in 0..<d where (1 << j) < plan.ranks {
            let p = (rank + (1 << j)) % plan.ranks
            if p != rank && !outs.contains(p) { outs.append(p) }
        }
        outNeighbors = outs
        treeParents = plan.treeParents
        hasTreeChildren = plan.treeParents.contains { $0.contains(rank) }
        stripeMasks = plan.kind.streamsFromParents ? [Bitset.stripe(0, count: plan.chunks), Bitset.stripe(1, count: plan.chunks)] : []
        if holdsAll { stripeHeld = [(plan.chunks + 1) / 2, plan.chunks / 2] }  // even and odd chunks
        lastArrival = now
        startedAt = now
    }

    public var complete: Bool { have.isFull }

    /// What "nothing arrived for stallSeconds" is measured from: the last arrival, or for a relay or
    /// tree rank that has received nothing yet, the moment its parent had something for it.
    var stallClock: Double {
        plan.kind.streamsFromParents && stats.received == 0 && !have.isFull ? (parentOffered ?? .infinity) : lastArrival
    }

    mutating func noteOffer(from p: Int, chunk c: Int?, _ now: Double) {
        guard parentOffered == nil, plan.kind.streamsFromParents, treeParents[rank].contains(p) else { return }
        if let c, have[c] { return }
        parentOffered = now
    }

    /// Peers this rank opens connections to (higher ranks connect to lower ones, one link per pair).
    public var dialed: [Int] { schedule.neighbors.filter { $0 < rank }.sorted() }
    public var neighbors: Set<Int> { schedule.neighbors }

    /// Whether every neighbor still connected holds everything (so this rank may leave).
    /// Every neighbor of the plan (and any rank that dialed us) either holds everything or is gone;
    /// one that never showed up keeps us waiting (until the linger time runs out).
    public var neighborsDone: Bool {
        peers.values.allSatisfy { $0.announced.isFull } && schedule.neighbors.allSatisfy { peers[$0] != nil || lost.contains($0) }
    }

    public mutating func handle(_ event: Event, now: Double) -> [Action] {
        var out: [Action] = []
        switch event {
        case .connected(let p, let full):
            if peers[p] != nil {
                // A second connection replaced the first (both ends dialed): what either side asked on the
                // old one may be lost with it, and both ask again on the new one.
                wantQueue.removeAll { $0.peer == p }
                for (c, q) in wanted where q == p { wanted[c] = nil; stats.reasked += 1 }
            }
            peers[p] = PeerState(has: Bitset(count: plan.chunks, full: full), announced: Bitset(count: plan.chunks, full: full))
            lost.remove(p)
            if full { noteOffer(from: p, chunk: nil, now) }
        case .disconnected(let p):
            peers[p] = nil
            lost.insert(p)
            wantQueue.removeAll { $0.peer == p }
            for (c, q) in wanted where q == p { wanted[c] = nil; stats.reasked += 1 }
        case .peerHas(let p, let c):
            peers[p]?.has.insert(c)
            peers[p]?.announced.insert(c)
            noteOffer(from: p, chunk: c, now)
        case .received(let p, let c, let valid):
            var asked: Double? = peers[p]?.myWants[c]
            if asked == nil, let t = peers[p]?.anyAsked { asked = t; peers[p]?.anyAsked = nil }
            if let t = asked {
                let took = now - t
                typicalReceive = typicalReceive.map { 0.8 * $0 + 0.2 * took } ?? took
                let prior = peers[p]?.service
                peers[p]?.service = prior.map { 0.7 * $0 + 0.3 * took } ?? took
                peers[p]?.unanswered = 0
            }
            if valid || wanted[c] == p {
                if wanted[c] != nil { wanted[c] = nil }
                for q in peers.keys where peers[q]!.myWants[c] != nil && (valid || q == p) { peers[q]!.myWants[c] = nil }
            }
            if !valid {
                stats.corrupted += 1
                suspect.insert(c)
            } else if have[c] {
                stats.duplicates += 1
            } else {
                have.insert(c)
                stripeHeld[c & 1] += 1
                if plan.kind.streamsFromParents { noteStripeArrival(c & 1, now) }
                stats.received += 1
                suspect.remove(c)
                peers[p]?.has.insert(c)
                lastArrival = now
                if let e = schedule.expected[c] { progressStep = max(progressStep, e.step) }
                out.append(.announce(chunk: c))
            }
        case .sent(let p, let c):
            if let s = peers[p]?.sending, s.chunk == c {
                let took = now - s.since
                typicalSend = typicalSend.map { 0.8 * $0 + 0.2 * took } ?? took
                let prior = peers[p]?.sendTook
                peers[p]?.sendTook = prior.map { 0.7 * $0 + 0.3 * took } ?? took
                peers[p]?.sending = nil
                peers[p]?.has.insert(c)  // it will announce it; sending again would only waste the link
            }
        case .wanted(let p, let c):
            if c >= 0 && c < plan.chunks, peers[p]?.announced[c] == false {
                peers[p]?.has.remove(c)  // it says it lacks it (what we sent arrived corrupted): believe it
            }
            if c == Self.anyChunk || (c >= 0 && c < plan.chunks) { wantQueue.append((p, c)) }
        case .replanned(let s):
            replan(slow: s, &out)
        case .tick:
            // Off the per-event path: it counts both parents' announcements, and 0.1 s is soon enough.
            if plan.kind.streamsFromParents { checkOwnLink(&out) }
        }
        pump(now, &out)
        return out
    }

    func isSlow(_ s: (chunk: Int, since: Double), _ now: Double) -> Bool {
        guard let t = typicalSend else { return now - s.since > 1.0 }
        return now - s.since > max(0.05, 2 * t)
    }

    /// A receiver our sends take far longer to reach than they take to most: against the lower median
    /// of the receivers' own smoothed times, which the slow ones (and a socket buffer that absorbed the
    /// first chunks quickly) do not drag along as an average would.
    /// Or one whose copy lags far behind the others' (what the neighbors have announced): send times
    /// alone can miss a slow receiver when its socket buffer absorbs each send quickly, and a fresh
    /// chunk given to it then sits there for seconds while every rank waits for it.
    func slowReceiver(_ peer: PeerState) -> Bool {
        let counts = peers.values.map(\.announced.population).sorted()
        if counts.count >= 3 {
            let median = counts[counts.count / 2]
            if median >= 16 && Double(peer.announced.population) < 0.6 * Double(median) { return true }
        }
        guard let took = peer.sendTook else { return false }
        let times = peers.values.compactMap(\.sendTook).sorted()
        guard times.count >= 2 else { return false }
        let t = times[(times.count - 1) / 2]
        return took > 2.5 * t && took > 0.05
    }

    /// The newest chunk the root has already injected that `theirs` lacks.
    func newestGivenOut(notIn theirs: Bitset) -> Int? {
        var c = injected - 1
        while c >= 0 { if have[c] && !theirs[c] { return c }; c -= 1 }
        return nil
    }

    mutating func pump(_ now: Double, _ out: inout [Action]) {
        upload(now, &out)
        if !finished {
            if plan.kind.pulls { expireWants(now); pull(now, &out); fallBackToRoot(now, &out) } else { repair(now, &out) }
        }
        if !finished && have.isFull {
            finished = true
            out.append(.complete)
        } else if !finished && now - lastArrival > options.giveUpSeconds {
            finished = true
            let missing = plan.chunks - have.population
            out.append(
                .fail(
                    "no chunk arrived for \(Int(options.giveUpSeconds)) s; \(missing) of \(plan.chunks) chunks still missing; connected neighbors: \(peers.keys.sorted().map(String.init).joined(separator: ",")), lost: \(lost.sorted().map(String.init).joined(separator: ","))"
                ))
        }
    }

    mutating func upload(_ now: Double, _ out: inout [Action]) {
        var busy = peers.values.filter { s in s.sending.map { !isSlow($0, now) } ?? false }.count
        // Requests first: they come from ranks that are missing what the plan owed them.
        var i = 0
        while busy < plan.uploadSlots && i < wantQueue.count {
            var (p, c) = wantQueue[i]
            guard let peer = peers[p] else { wantQueue.remove(at: i); continue }
            if peer.sending != nil { i += 1; continue }
            if c == Self.anyChunk {
                // A fresh chunk given to a receiver with a slow download would be held by it alone, and
                // passed on at its slow rate, for several chunk times: every other rank would wait for it.
                // Such a receiver gets the newest chunk already given out instead, which others hold.
                if slowReceiver(peer), let old = newestGivenOut(notIn: peer.has) {
                    c = old
                } else {
                    while injected < plan.chunks && (peer.has[injected] || !have[injected]) { injected += 1 }
                    if injected < plan.chunks {
                        c = injected; injected += 1
                    } else if let n = have.newest(notIn: peer.has) {
                        c = n
                    } else {
                        wantQueue.remove(at: i); continue
                    }
                }
            }
            // A two-tree or relay child asks its parent for chunks before the parent holds them: kept until they come.
            if !have[c] && plan.kind.streamsFromParents && !peer.has[c] { i += 1; continue }
            guard have[c], !peer.has[c] else { wantQueue.remove(at: i); continue }
            wantQueue.remove(at: i)
            start(p, c, now, &out)
            stats.served += 1
            busy += 1
        }
        guard busy < plan.uploadSlots, plan.forwardsEarly || have.isFull else { return }
        if plan.kind.pulls { return }  // receivers pull (see pull)
        var j = firstOpen
        while busy < plan.uploadSlots && j < schedule.sends.count {
            defer { j += 1 }
            if entryDone[j] { continue }
            let e = schedule.sends[j]
            guard let peer = peers[e.to] else {
                if lost.contains(e.to) { entryDone[j] = true }  // gone: it will not need it
                continue
            }
            if peer.has[e.chunk] { entryDone[j] = true; continue }
            if peer.sending != nil || !have[e.chunk] { continue }
            entryDone[j] = true
            start(e.to, e.chunk, now, &out)
            busy += 1
        }
        while firstOpen < entryDone.count && entryDone[firstOpen] { firstOpen += 1 }
    }

    /// The binomial pipeline's exchange, driven by receivers: a rank keeps two requests open, each to a
    /// different neighbor in rotation, for the newest chunk that neighbor holds and it lacks; of the root
    /// it asks for "any", and the root injects chunks in order, each once. Every rank thus downloads from
    /// at most two senders at once and never receives a chunk twice; a late or dead neighbor only costs
    /// the request open at it.
    mutating func pull(_ now: Double, _ out: inout [Action]) {
        let typical = typicalReceive ?? 0.5
        let slow = max(0.05, 3 * typical)
        var mask = have
        var skip = Set<Int>()
        if plan.kind.streamsFromParents {
            // The tree streams first; the rest of this pull only fetches the stripes they fail to bring.
            let fallback = treePull(now, &out)
            if !fallback[0] && !fallback[1] { return }
            for stripe in 0..<2 where !fallback[stripe] { mask.formUnion(stripeMasks[stripe]) }
            skip = Set(treeParents[rank].filter { $0 >= 0 && peers[$0] != nil })
            if now - stallClock <= options.stallSeconds { skip.insert(0) }  // the root's upload feeds the trees
        }
        var active = peers.reduce(0) { n, e in
            skip.contains(e.key)
                ? n : n + e.value.myWants.values.filter { now - $0 < slow }.count + (e.value.anyAsked.map { now - $0 < slow ? 1 : 0 } ?? 0)
        }
        let order = peers.keys.sorted().filter { !skip.contains($0) }
        guard !order.isEmpty else { return }
        // A neighbor that answers far slower than the rest (its link is slow, or it is overloaded) is
        // asked only when nobody else has anything for us; what we asked of it long ago may be asked
        // of someone else (at worst it then arrives twice).
        func sluggish(_ s: PeerState) -> Bool { (s.service ?? 0) > 2.5 * typical && s.service! > 0.05 }
        for (c, q) in wanted { if let t = peers[q]?.myWants[c], now - t < slow { mask.insert(c) } }
        for pass in 0..<2 where active < options.pullDepth {
            if pass == 1 && active > 0 { break }
            var tries = 0
            while active < options.pullDepth && tries < order.count {
                let q = order[(pullRotation + tries) % order.count]
                tries += 1
                guard let s = peers[q], s.myWants.isEmpty, s.anyAsked == nil, pass == 1 || !sluggish(s) else { continue }
                if q == 0 && s.has.isFull && plan.kind == .pipeline && injectable(from: s) {
                    peers[q]?.anyAsked = now
                    out.append(.want(from: q, chunk: Self.anyChunk))
                } else {
                    guard let c = s.has.newest(notIn: mask) else { continue }
                    wanted[c] = q
                    mask.insert(c)
                    peers[q]?.myWants[c] = now
                    out.append(.want(from: q, chunk: c))
                }
                pullRotation = (pullRotation + tries) % order.count
                tries = 0
                active += 1
            }
        }
    }

    /// Two-tree: keeps `treeWindow` requests open at each stripe's parent for the lowest chunks of that
    /// stripe this rank lacks, in order, so each parent's stream to it never waits for a request. Returns,
    /// per stripe, whether anyone else should be asked too: its parent is gone, or the stripe trails the
    /// other by more than `treeLag` chunks (the parent, or its own parent, is slow).
    mutating func treePull(_ now: Double, _ out: inout [Action]) -> [Bool] {
        var fallback = [false, false]
        let stalled = now - stallClock > options.stallSeconds
        for stripe in 0..<2 {
            while treeCursor[stripe] < plan.chunks && have[treeCursor[stripe]] { treeCursor[stripe] += 2 }
            var q = treeParents[rank][stripe]
            guard q >= 0, treeCursor[stripe] < plan.chunks else { continue }
            // A parent that is gone or never came (a stall's time after the start: connections come one
            // by one): the stripe falls back to the other neighbors (pull), or, when the only neighbors
            // connected are this rank's parents (three ranks, say, one of them dead), the other stripe's
            // parent streams this stripe too.
            let other = treeParents[rank][1 - stripe]
            if peers[q] == nil, lost.contains(q) || now - startedAt > options.stallSeconds, other >= 0, peers[other] != nil,
                peers.keys.allSatisfy({ treeParents[rank].contains($0) })
            {
                q = other
            }
            // Relay: a dead parent's own parent (the nearest live rank before it in the chain) streams
            // instead, so the chain closes over the gap. Its upload is free, as its child is the dead
            // rank, and in rank order it is a circulant neighbor (r − 2), connected from the start.
            if plan.kind == .relay, peers[q] == nil, lost.contains(q) {
                var a = q
                while a > 0, lost.contains(a) { a = treeParents[a][stripe] }
                if a >= 0, peers[a] != nil {
                    q = a
                } else if a >= 0, dialing.insert(a).inserted {
                    out.append(.connect(a))  // after a trade the chain is out of rank order: not a neighbor yet
                }
            }
            guard let parent = peers[q] else { fallback[stripe] = true; continue }
            let otherLeft = stripeMasks[1 - stripe].population - stripeHeld[1 - stripe]
            if stalled || stripeHeld[stripe] + options.treeLag < stripeHeld[1 - stripe] && otherLeft > 0 { fallback[stripe] = true }
            var open = parent.myWants.keys.filter { $0 & 1 == stripe }.count
            var c = treeCursor[stripe]
            while open < options.treeWindow && c < plan.chunks {
                if !have[c] && wanted[c] == nil {
                    wanted[c] = q
                    peers[q]?.myWants[c] = now
                    out.append(.want(from: q, chunk: c))
                    open += 1
                }
                c += 2
            }
        }
        return fallback
    }

    /// Two-tree: whether this rank's own download is what holds it back: both stripes' parents hold
    /// 16 MiB more of their stripe than has reached it. A rank held back by a slow ancestor finds its
    /// parent just as far behind, and an upload that is slow leaves its parent no further ahead; only a
    /// slow download of its own starves it from two unrelated senders at once. Such a rank forwards at
    /// that slow rate to its whole subtree, and the trees leave no spare upload anywhere to route around
    /// it (docs/broadcast.md), so it trades places with the spare leaf: its children get their stripe
    /// at full rate from there, and it receives as a leaf of both trees. In the relay both stripes come
    /// from the one parent, so the test is the lag behind it, and the slow rank moves to the chain's end.
    mutating func checkOwnLink(_ out: inout [Action]) {
        guard !replanned, hasTreeChildren, rank != 0, let spare = plan.treeSpare, spare != rank else { return }
        // The root holds everything from the start, so only a parent that receives too can be ahead by
        // its download's rate: the relay's rank 1, fed by the root alone, cannot tell.
        guard treeParents[rank].contains(where: { $0 > 0 }) else { return }
        for stripe in 0..<2 {
            guard let p = peers[treeParents[rank][stripe]] else { return }
            let ahead = p.announced.countShared(with: stripeMasks[stripe]) - stripeHeld[stripe]
            guard ahead > options.slowLinkLag else { return }
        }
        replan(slow: rank, &out)
    }

    /// The slow rank and the spare leaf trade places in both trees; passed on to every peer once.
    mutating func replan(slow s: Int, _ out: inout [Action]) {
        guard !replanned, let spare = plan.treeSpare, s != spare, s > 0, s < plan.ranks else { return }
        replanned = true
        stats.replannedSlow = s
        let before = treeParents[rank]
        for x in 0..<plan.ranks { for t in 0..<2 where treeParents[x][t] == s { treeParents[x][t] = spare } }
        treeParents.swapAt(s, spare)
        hasTreeChildren = treeParents.contains { $0.contains(rank) }
        out.append(.replan(slow: s))
        for t in 0..<2 where treeParents[rank][t] != before[t] {
            // What was asked of the old parent is asked of the new one (at worst it arrives twice).
            for (c, q) in wanted where q == before[t] && c & 1 == t {
                wanted[c] = nil
                peers[q]?.myWants[c] = nil
            }
            let q = treeParents[rank][t]
            if q >= 0 && peers[q] == nil && dialing.insert(q).inserted { out.append(.connect(q)) }
        }
        if rank == s {
            // No children any more: whatever it still sends (repairs) may use its whole upload.
            for p in paced.keys.sorted() { out.append(.pace(to: p, chunksPerSecond: .infinity)) }
            paced = [:]
        }
    }

    mutating func noteStripeArrival(_ stripe: Int, _ now: Double) {
        stripeArrivals[stripe].append(now)
        if stripeArrivals[stripe].count > Self.pacingWindow { stripeArrivals[stripe].removeFirst() }
        if stripeArrivals[stripe].count == Self.pacingWindow, let first = stripeArrivals[stripe].first, now > first {
            stripePeak[stripe] = max(stripePeak[stripe], Double(Self.pacingWindow - 1) / (now - first))
        }
    }

    /// Whether the root still has something for us that no request is already bringing.
    func injectable(from s: PeerState) -> Bool { have.population + wanted.count < plan.chunks }

    /// A request for whatever the root would inject next.
    public static let anyChunk = -1

    mutating func start(_ p: Int, _ c: Int, _ now: Double, _ out: inout [Action]) {
        if plan.kind == .twoTree && rank != 0 && treeParents[p][c & 1] == rank && stripePeak[c & 1] > 0 {
            // A quarter above the fastest the stripe has reached us, so a child catches up after a
            // hiccup. The peak, not the current rate: pacing by the current rate fed on itself when a
            // stripe stalled (a parent killed), each level pacing the next below its own slowed arrival
            // until the tree crawled.
            // Once the child holds all of the other stripe, this one may take its whole download: unpaced,
            // or the stripe that lags at the end would finish at half the rate.
            let other = stripeMasks[1 - (c & 1)]
            let otherDone = peers[p].map { $0.announced.countShared(with: other) == other.population } ?? false
            let rate = otherDone ? Double.infinity : 1.25 * stripePeak[c & 1]
            if paced[p].map({ rate > 1.1 * $0 }) ?? true {
                paced[p] = rate
                out.append(.pace(to: p, chunksPerSecond: rate))
            }
        }
        peers[p]?.sending = (c, now)
        peers[p]?.has.insert(c)  // on its way; a corrupted arrival is asked for again
        stats.sent += 1
        out.append(.send(to: p, chunk: c))
    }

    mutating func repair(_ now: Double, _ out: inout [Action]) {
        // Requests that went unanswered are asked of someone else.
        for (c, q) in wanted {
            if let t = peers[q]?.myWants[c], now - t > options.wantTimeout {
                wanted[c] = nil
                peers[q]?.myWants[c] = nil
                peers[q]?.unanswered += 1
            }
        }
        guard wanted.count < options.maxWants else { return }
        let stalled = now - lastArrival > options.stallSeconds
        var orphan = false
        for c in 0..<plan.chunks where !have[c] && wanted[c] == nil {
            guard wanted.count < options.maxWants else { break }
            let e = schedule.expected[c]
            let due: Bool
            if suspect.contains(c) {
                due = true
            } else if plan.kind == .pipeline {
                due = stalled
            }  // pushes adapt to losses; ask only when they stop
            else if e == nil {
                due = true
            } else if let e, peers[e.from] == nil && (lost.contains(e.from) || stalled) {
                due = true
            } else if options.repairs, let e {
                due = progressStep >= e.step + options.lateSlack || (stalled && e.step <= progressStep + options.lateSlack)
            } else {
                due = false
            }
            guard due else { continue }
            // The least-asked holder, preferring ones that answer and are not the late sender.
            var best: (key: (Int, Int, Int), peer: Int)?
            for (q, s) in peers where s.has[c] && s.myWants.count < options.maxWantsPerPeer {
                let key = (s.unanswered, q == e?.from ? 1 : 0, s.myWants.count)
                if best == nil || key < best!.key || (key == best!.key && (q + c) % plan.ranks < (best!.peer + c) % plan.ranks) { best = (key, q) }
            }
            if let b = best {
                wanted[c] = b.peer
                peers[b.peer]?.myWants[c] = now
                stats.repairs += 1
                out.append(.want(from: b.peer, chunk: c))
            } else if !peers.values.contains(where: { $0.has[c] }) {
                orphan = true
            }
        }
        if orphan && peers[0] == nil && rank != 0 && !askedForRoot && (stalled || !lost.isEmpty) {
            askedForRoot = true
            out.append(.connect(0))
        }
    }

    mutating func expireWants(_ now: Double) {
        for (c, q) in wanted {
            if let t = peers[q]?.myWants[c], now - t > options.wantTimeout {
                stats.reasked += 1
                wanted[c] = nil
                peers[q]?.myWants[c] = nil
                peers[q]?.unanswered += 1
            }
        }
        for (q, s) in peers { if let t = s.anyAsked, now - t > options.wantTimeout { peers[q]?.anyAsked = nil } }
    }

    /// Nothing arrives and no neighbor holds what is missing (they died or left): ask the root.
    mutating func fallBackToRoot(_ now: Double, _ out: inout [Action]) {
        guard rank != 0, peers[0] == nil, !askedForRoot, now - stallClock > options.stallSeconds else { return }
        var held = Bitset(count: plan.chunks)
        for s in peers.values { for c in 0..<plan.chunks where s.announced[c] { held.insert(c) } }
        if have.newest(notIn: held) != nil || (0..<plan.chunks).contains(where: { !have[$0] && !held[$0] }) {
            askedForRoot = true
            out.append(.connect(0))
        }
    }

    /// The root was dialed but could not be reached: allow another attempt later.
    public mutating func rootUnreachable() { askedForRoot = false }
}
