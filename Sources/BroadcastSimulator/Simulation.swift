// A transfer of one image to N ranks, each rank the real TransferMachine, on a simulated network: the
// curve past what one machine's namespaces can hold (docs/broadcast.md), and the schedules' behaviour
// with slow and failing ranks at that scale.
//
// The network is fluid, at the level of TCP connections, not packets:
// - Each ordered pair of ranks has one connection: a FIFO of the chunks written to it. It moves bytes at
//   a rate set by the two ports it crosses, the sender's upload and the receiver's download.
// - A port divides its rate among the connections active in it max-min fairly, each connection capped
//   by its share at its other port and by its pacing (water-filling, one level deep, so an update only
//   touches the ports near the connection that started or ended).
// - A send is reported done when its last byte is in the socket buffer (as SwiftNIO reports a write),
//   and received when its last byte arrives.
// - Requests and announcements ride the same connections: they wait behind the bytes already written
//   to that connection, and, on a drop-tail port, behind the queue of a busy upload.
// - Two or more flows competing in a drop-tail port keep only part of its rate (LinkModel).
// The constants are calibrated against the namespace testbed at N = 4, 8 and 16 (`slurm-vm bench
// broadcast-sim --calibrate`).

import Broadcast

public struct Scenario: Sendable {
    public struct Failure: Sendable {
        public var rank: Int
        public var at: Double
        public init(rank: Int, at: Double) {
            self.rank = rank
            self.at = at
        }
    }

    public var kind: ScheduleKind
    public var ranks: Int
    public var imageBytes: Int
    public var chunkBytes: Int
    public var link: LinkModel
    /// Ranks whose port runs at this share of the link rate, both directions.
    public var slow: [Int: Double] = [:]
    /// A rank that dies mid-transfer: its connections reset, its neighbors told at once.
    public var failure: Failure?
    /// Seconds of simulated time after which the run stops, whoever is not done yet.
    public var timeLimit = 36_000.0

    public init(kind: ScheduleKind, ranks: Int, imageBytes: Int, chunkBytes: Int, link: LinkModel) {
        self.kind = kind
        self.ranks = ranks
        self.imageBytes = imageBytes
        self.chunkBytes = chunkBytes
        self.link = link
    }

    public var chunks: Int { (imageBytes + chunkBytes - 1) / chunkBytes }

    /// size/rate + ⌈log2 N⌉ chunk times at the payload rate: what a pipelined binomial tree needs at
    /// the least.
    public var bound: Double {
        let rate = link.payloadBytesPerSecond
        return Double(imageBytes) / rate + Double((ranks - 1).bitWidthNeeded) * Double(chunkBytes) / rate
    }

    /// size/rate at the link's rate, as the benchmark's ratios are given.
    public var sizeOverRate: Double { Double(imageBytes) * 8 / link.bitsPerSecond }
}

public struct Outcome: Sendable {
    /// When each rank held every chunk (the root at 0); nil for one that never did.
    public var doneAt: [Double?]
    public var failed: [String?]
    /// Events the simulation handled, for its own cost.
    public var events: Int
    /// Chunks received more than once.
    public var duplicates: Int
    /// Each rank's counters (the root's `sent` over the chunk count: how much of its upload went to
    /// chunks it had already given out).
    public var stats: [TransferMachine.Stats]

    /// The last completion among ranks not in `excluded`; nil if one of them never completed.
    public func lastDone(excluding excluded: Set<Int> = []) -> Double? {
        var last = 0.0
        for (r, t) in doneAt.enumerated() where !excluded.contains(r) {
            guard let t else { return nil }
            last = max(last, t)
        }
        return last
    }
}

public final class Simulation {
    enum Item {
        case milestone(connection: Int, version: UInt32)
        case deliver(rank: Int, event: TransferMachine.Event)
        case tick(rank: Int)
        case kill(rank: Int)
    }

    struct Queued {
        var chunk: Int
        var end: Double
    }

    struct Connection {
        let from: Int, to: Int
        var written = 0.0, delivered = 0.0
        var rate = 0.0, since = 0.0
        var version: UInt32 = 0
        var pace = Double.infinity
        var queued: [Queued] = []
        var received = 0  // queued[..<received] have arrived
        var reported = 0  // queued[..<reported] have been reported sent
        var fillUp = 0.0, fillDown = 0.0
        var active = false
        var lastMessage = 0.0  // arrival of the last small message, which keeps them in order
    }

    static let tickSeconds = 0.1
    let scenario: Scenario
    var machines: [TransferMachine]
    var heap = EventHeap<Item>()
    var now = 0.0
    var connections: [Connection] = []
    var connectionIndex: [Int: Int] = [:]
    var upActive: [[Int]]
    var downActive: [[Int]]
    /// Download rate of each port, and upload rate: less the ACKs' share while the rank still receives.
    var capacity: [Double]
    var upCapacity: [Double]
    var dead: [Bool]
    /// Each rank's connected peers, in the order they connected (a Set's order would change with each
    /// process's hash seed, and the run with it).
    var linked: [[Int]]
    var doneAt: [Double?]
    var failed: [String?]
    var pending: Int  // live ranks neither done nor failed
    var events = 0
    // Scratch marks for refresh(), by generation, so no set is allocated per update.
    var upMark: [UInt32], downMark: [UInt32], connMark: [UInt32] = []
    var generation: UInt32 = 0

    init(_ s: Scenario) {
        scenario = s
        let n = s.ranks
        let plan = Plan(kind: s.kind, ranks: n, chunks: s.chunks)
        let options = TransferMachine.Options(plan: plan, chunkBytes: s.chunkBytes)
        machines = (0..<n).map { TransferMachine(rank: $0, plan: plan, holdsAll: $0 == 0, now: 0, options: options) }
        upActive = Array(repeating: [], count: n)
        downActive = Array(repeating: [], count: n)
        capacity = (0..<n).map { s.link.payloadBytesPerSecond * (s.slow[$0] ?? 1) }
        upCapacity = (0..<n).map { s.link.payloadBytesPerSecond * (s.slow[$0] ?? 1) * ($0 == 0 ? 1 : 1 - s.link.ackShare) }
        dead = Array(repeating: false, count: n)
        linked = Array(repeating: [], count: n)
        doneAt = Array(repeating: nil, count: n)
        doneAt[0] = 0
        failed = Array(repeating: nil, count: n)
        pending = n - 1
        upMark = Array(repeating: 0, count: n)
        downMark = Array(repeating: 0, count: n)
    }

    public static func run(_ s: Scenario) -> Outcome {
        let sim = Simulation(s)
        sim.start()
        sim.loop()
        let dup = sim.machines.map(\.stats.duplicates).reduce(0, +)
        return Outcome(doneAt: sim.doneAt, failed: sim.failed, events: sim.events, duplicates: dup, stats: sim.machines.map(\.stats))
    }

    func start() {
        let handshake = scenario.link.startup + 3 * scenario.link.latency
        for r in machines.indices {
            for p in machines[r].dialed { link(r, p, after: handshake) }
            heap.push(Self.tickSeconds * (1 + Double(r % 10) / 10), .tick(rank: r))
        }
        if let f = scenario.failure { heap.push(f.at, .kill(rank: f.rank)) }
    }

    func link(_ a: Int, _ b: Int, after delay: Double) {
        linked[a].append(b)
        linked[b].append(a)
        heap.push(now + delay, .deliver(rank: a, event: .connected(peer: b, complete: b == 0)))
        heap.push(now + delay, .deliver(rank: b, event: .connected(peer: a, complete: a == 0)))
    }

    func loop() {
        while pending > 0, let (at, item) = heap.pop() {
            if at > scenario.timeLimit { break }
            now = at
            events += 1
            switch item {
            case .milestone(let c, let v):
                if connections[c].version == v { reach(c) }
            case .deliver(let r, let e):
                deliver(r, e)
            case .tick(let r):
                guard !dead[r] else { continue }
                deliver(r, .tick)
                heap.push(now + Self.tickSeconds, .tick(rank: r))
            case .kill(let r):
                kill(r)
            }
        }
    }

    func deliver(_ r: Int, _ e: TransferMachine.Event) {
        guard !dead[r] else { return }
        for a in machines[r].handle(e, now: now) {
            switch a {
            case .send(let p, let c):
                guard !dead[p] else { continue }
                write(from: r, to: p, chunk: c)
            case .want(let p, let c):
                message(from: r, to: p, .wanted(by: r, chunk: c))
            case .announce(let c):
                for p in linked[r] where !dead[p] { message(from: r, to: p, .peerHas(peer: r, chunk: c)) }
            case .replan(let slow):
                for p in linked[r] where !dead[p] { message(from: r, to: p, .replanned(slow: slow)) }
            case .connect(let p):
                if !dead[p] && !linked[r].contains(p) { link(r, p, after: 3 * scenario.link.latency) }
            case .complete:
                if doneAt[r] == nil {
                    doneAt[r] = now
                    if failed[r] == nil { pending -= 1 }
                    upCapacity[r] = capacity[r]  // nothing more to acknowledge
                    if !upActive[r].isEmpty { refresh(ups: [r], downs: []) }
                }
            case .fail(let why):
                if failed[r] == nil && doneAt[r] == nil { pending -= 1 }
                failed[r] = why
            case .pace(let p, let chunksPerSecond):
                let i = connection(r, p)
                connections[i].pace = chunksPerSecond * Double(scenario.chunkBytes)
                if connections[i].active { refresh(ups: [r], downs: [p]) }
            }
        }
    }

    func kill(_ r: Int) {
        dead[r] = true
        if doneAt[r] == nil && failed[r] == nil { pending -= 1 }
        failed[r] = failed[r] ?? "killed"
        for p in linked[r] {
            for (a, b) in [(r, p), (p, r)] {
                guard let i = connectionIndex[a * scenario.ranks + b], connections[i].active else { continue }
                deactivate(i)
            }
            heap.push(now + scenario.link.latency, .deliver(rank: p, event: .disconnected(peer: r)))
        }
    }

    // MARK: connections

    func connection(_ from: Int, _ to: Int) -> Int {
        let key = from * scenario.ranks + to
        if let i = connectionIndex[key] { return i }
        connections.append(Connection(from: from, to: to))
        connMark.append(0)
        connectionIndex[key] = connections.count - 1
        return connections.count - 1
    }

    func chunkLength(_ c: Int) -> Double {
        Double(min(scenario.chunkBytes, scenario.imageBytes - c * scenario.chunkBytes))
    }

    func write(from r: Int, to p: Int, chunk: Int) {
        let i = connection(r, p)
        progress(i)
        connections[i].written += chunkLength(chunk)
        connections[i].queued.append(Queued(chunk: chunk, end: connections[i].written))
        if !connections[i].active {
            connections[i].active = true
            upActive[r].append(i)
            downActive[p].append(i)
            refresh(ups: [r], downs: [p])
        }
        reach(i)
    }

    /// A small message from r to p: behind what r has written to p and not yet delivered, and behind a
    /// busy drop-tail port's queue; never overtaking the one before it.
    func message(from r: Int, to p: Int, _ e: TransferMachine.Event) {
        let i = connection(r, p)
        var delay = scenario.link.latency
        let c = connections[i]
        if c.active {
            let left = c.written - min(c.written, c.delivered + c.rate * (now - c.since))
            delay += c.rate > 0 ? left / c.rate : left / upCapacity[r]
        }
        if !upActive[r].isEmpty { delay += scenario.link.busyPortDelay }
        let at = max(now + delay, c.lastMessage)
        connections[i].lastMessage = at
        heap.push(at, .deliver(rank: p, event: e))
    }

    func progress(_ i: Int) {
        let dt = now - connections[i].since
        if dt > 0 && connections[i].active {
            connections[i].delivered = min(connections[i].written, connections[i].delivered + connections[i].rate * dt)
        }
        connections[i].since = now
    }

    /// Brings a connection up to now: reports what the socket has taken and what has arrived, stops it
    /// when it drains, and schedules its next milestone.
    func reach(_ i: Int) {
        progress(i)
        let slack = 1e-3
        let buffer = scenario.link.sendBuffer
        var c = connections[i]
        while c.reported < c.queued.count && c.queued[c.reported].end - c.delivered <= buffer + slack {
            heap.push(now, .deliver(rank: c.from, event: .sent(to: c.to, chunk: c.queued[c.reported].chunk)))
            c.reported += 1
        }
        while c.received < c.queued.count && c.queued[c.received].end <= c.delivered + slack {
            heap.push(
                now + scenario.link.latency, .deliver(rank: c.to, event: .received(from: c.from, chunk: c.queued[c.received].chunk, valid: true)))
            c.received += 1
        }
        if c.received == c.queued.count {
            c.queued.removeAll(keepingCapacity: true)
            c.received = 0
            c.reported = 0
        }
        connections[i] = c
        if c.active && c.delivered >= c.written - slack {
            connections[i].delivered = c.written
            deactivate(i)
        } else {
            schedule(i)
        }
    }

    func schedule(_ i: Int) {
        connections[i].version &+= 1
        let c = connections[i]
        guard c.active, c.rate > 0, c.received < c.queued.count else { return }
        var target = c.queued[c.received].end
        if c.reported < c.queued.count { target = min(target, c.queued[c.reported].end - scenario.link.sendBuffer) }
        heap.push(now + max(0, target - c.delivered) / c.rate, .milestone(connection: i, version: c.version))
    }

    func deactivate(_ i: Int) {
        let (r, p) = (connections[i].from, connections[i].to)
        connections[i].active = false
        connections[i].rate = 0
        connections[i].written = connections[i].delivered
        connections[i].queued.removeAll()
        connections[i].received = 0
        connections[i].reported = 0
        connections[i].version &+= 1
        upActive[r].removeAll { $0 == i }
        downActive[p].removeAll { $0 == i }
        refresh(ups: [r], downs: [p])
    }

    // MARK: rates

    func efficiency(_ flows: Int) -> Double { flows >= 2 ? scenario.link.sharedEfficiency : 1 }

    func naiveUp(_ r: Int) -> Double {
        let n = upActive[r].count
        return n == 0 ? upCapacity[r] : upCapacity[r] * efficiency(n) / Double(n)
    }

    func naiveDown(_ p: Int) -> Double {
        let n = downActive[p].count
        return n == 0 ? capacity[p] : capacity[p] * efficiency(n) / Double(n)
    }

    /// Max-min shares of one port among its flows, each capped by its share at the other end.
    func fill(_ flows: [Int], capacity cap: Double, limit: (Int) -> Double, set: (Int, Double) -> Void) {
        var left = cap * efficiency(flows.count)
        var order = flows.map { ($0, limit($0)) }
        order.sort { $0.1 < $1.1 }
        for (k, (f, lim)) in order.enumerated() {
            let give = min(lim, left / Double(order.count - k))
            set(f, give)
            left -= give
        }
    }

    /// Recomputes the rates of every connection whose share may have changed after the flows in these
    /// ports changed: the ports themselves and the ports at the other end of their flows.
    func refresh(ups: [Int], downs: [Int]) {
        generation &+= 1
        let g = generation
        var upList: [Int] = [], downList: [Int] = []
        func addUp(_ r: Int) { if upMark[r] != g { upMark[r] = g; upList.append(r) } }
        func addDown(_ p: Int) { if downMark[p] != g { downMark[p] = g; downList.append(p) } }
        for r in ups {
            addUp(r)
            for f in upActive[r] { addDown(connections[f].to) }
        }
        for p in downs {
            addDown(p)
            for f in downActive[p] { addUp(connections[f].from) }
        }
        var touched: [Int] = []
        for r in upList {
            fill(upActive[r], capacity: upCapacity[r], limit: { min(self.naiveDown(self.connections[$0].to), self.connections[$0].pace) }) {
                self.connections[$0].fillUp = $1
            }
            for f in upActive[r] where connMark[f] != g { connMark[f] = g; touched.append(f) }
        }
        for p in downList {
            fill(downActive[p], capacity: capacity[p], limit: { min(self.naiveUp(self.connections[$0].from), self.connections[$0].pace) }) {
                self.connections[$0].fillDown = $1
            }
            for f in downActive[p] where connMark[f] != g { connMark[f] = g; touched.append(f) }
        }
        for f in touched {
            let c = connections[f]
            let rate = min(c.fillUp, c.fillDown, c.pace)
            if rate != c.rate {
                progress(f)
                connections[f].rate = rate
                schedule(f)
            }
        }
    }
}
