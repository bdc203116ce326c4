// One rank of a transfer on the network: listens on its address, dials the neighbors the plan gives it,
// and carries out what its TransferMachine decides. Every channel and all state live on one event
// loop, so there is no locking; hashing and writing a 1 MiB chunk take well under a millisecond.

import Foundation
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

public struct ParticipantConfig: Sendable {
    public var rank: Int
    /// host:port of every rank, rank 0 first.
    public var addresses: [String]
    /// The schedule; nil: `ScheduleKind.chosen` for the ranks and the manifest's chunks.
    public var kind: ScheduleKind?
    public var chunkSize = Manifest.defaultChunkSize
    /// Rank 0 (or any rank that holds the image): the file to send, and its manifest if known.
    public var source: String?
    public var manifest: Manifest?
    /// Every other rank: where the verified copy goes.
    public var destination: String?
    /// The digest the copy must have (the catalog's); a manifest for anything else is refused.
    public var digest: String?
    /// Names the transfer, so a connection from another transfer is refused.
    public var transfer = "broadcast"
    /// Seconds to keep dialing a neighbor that is not up yet.
    public var dialSeconds: Double = 30
    /// Seconds without progress before giving up.
    public var giveUpSeconds: Double = 60
    /// Seconds a finished rank keeps serving neighbors that still miss chunks, counted from the last
    /// request it served.
    public var lingerSeconds: Double = 30
    /// Bytes of the newest verified chunks kept in memory, where the copy is written around the page
    /// cache: neighbors ask mostly for those. Measured at 16 nodes with 1 MiB chunks: 16 MiB served
    /// every send of a receiving rank but a handful from memory, 8 MiB 85%; 32 MiB served no more, and
    /// its buffers, fresh pages all touched in the first seconds, saturated the testbed's CPU then.
    public var keepInMemory = 16 << 20
    /// Test hook: chunks this rank corrupts (one byte flipped) the first time it sends them.
    public var corrupt: Set<Int> = []
    /// Called on the event loop as chunks arrive: (held, total).
    public var progress: (@Sendable (Int, Int) -> Void)?

    public init(rank: Int, addresses: [String]) {
        self.rank = rank
        self.addresses = addresses
    }
}

public struct ParticipantReport: Sendable {
    public var rank: Int
    /// Seconds from start until this rank's copy was verified (0 for the source).
    public var seconds: Double
    public var stats: TransferMachine.Stats
    /// The schedule the transfer ran (the one chosen from the manifest when none was named).
    public var kind: ScheduleKind
    /// The transfer's chunk size (the manifest's).
    public var chunkSize: Int
    /// Chunks sent from memory (the newest of a copy written around the page cache); the rest went by
    /// sendfile.
    public var sentFromMemory = 0
    /// Whether the copy was written around the page cache (O_DIRECT).
    public var bypassedPageCache = false
}

public final class Participant: @unchecked Sendable {
    var config: ParticipantConfig
    var begun = false
    /// Hellos from ranks that learned our address before we learned theirs.
    var beforeBegin: [(Frame, Channel, Inbound)] = []
    let group: EventLoopGroup
    let loop: EventLoop
    let started = Date()
    var machine: TransferMachine?
    var manifest: Manifest?
    var file: ChunkFile?
    var channels: [Int: Channel] = [:]
    /// Peers seen before the manifest arrived: (rank, holds everything, chunks announced).
    var early: [Int: (complete: Bool, haves: [Int])] = [:]
    /// A replan heard before the manifest, applied once the machine exists.
    var earlyReplan: Int?
    var server: Channel?
    var ticker: RepeatedTask?
    var verifiedAt: Double?
    var result: EventLoopPromise<ParticipantReport>
    var corrupted = Set<Int>()
    /// Chunks sent from memory rather than from the file.
    var sentFromMemory = 0
    var sendBuffers: [ByteBuffer] = []
    var lastActivity = 0.0
    /// The copy's descriptor (a dup) for sendfile; NIO's handle owns it.
    var handle: NIOFileHandle?
    var ended = false

    public init(_ config: ParticipantConfig, group: EventLoopGroup) {
        self.config = config
        self.group = group
        loop = group.next()
        result = loop.makePromise()
    }

    var now: Double { Date().timeIntervalSince(started) }

    /// A rank that listened but never joined (its request was refused, it held the blob): nothing waits
    /// on it, and its socket closes.
    deinit {
        if !ended { result.fail(BroadcastError.failed("rank \(config.rank) of transfer '\(config.transfer)' was abandoned")) }
        server?.close(promise: nil)
        // An abandoned rank never ran shutdown(); NIO traps if a handle dies open.
        try? handle?.close()
    }

    /// Starts this rank at its address in config.addresses (blocking until it listens); the future
    /// completes once its copy is verified and its neighbors are served, or fails. Not for async
    /// contexts: see run().
    public func start() throws -> EventLoopFuture<ParticipantReport> {
        guard config.rank >= 0 && config.rank < config.addresses.count else {
            throw BroadcastError.config("rank \(config.rank) is not among the \(config.addresses.count) addresses given")
        }
        _ = try listen(on: config.addresses[config.rank])
        return try begin(addresses: config.addresses)
    }

    /// Binds this rank's socket first (port 0: any free port), for a coordinator that assigns ranks
    /// from the addresses it is told; returns the port.
    public func listen(on address: String) throws -> Int {
        let (host, port) = try Self.split(address, listening: true)
        let boot = ServerBootstrap(group: loop)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socket(SocketOptionLevel(IPPROTO_TCP), SocketOptionName(TCP_NOTSENT_LOWAT)), value: 256 << 10)
            .childChannelOption(ChannelOptions.recvAllocator, value: Self.reads)
            .childChannelInitializer { ch in self.setUp(ch, dialed: nil) }
        let bound: Channel
        do { bound = try boot.bind(host: host, port: port).wait() } catch {
            throw BroadcastError.config("cannot listen on \(host):\(port): \(error)")
        }
        try loop.submit { self.server = bound }.wait()
        return bound.localAddress?.port ?? port
    }

    /// Joins the transfer now that every rank's address is known.
    public func begin(
        addresses: [String], rank: Int? = nil, transfer: String? = nil, chunkSize: Int? = nil
    ) throws -> EventLoopFuture<ParticipantReport> {
        var c = config
        c.addresses = addresses
        if let rank { c.rank = rank }
        if let transfer { c.transfer = transfer }
        if let chunkSize { c.chunkSize = chunkSize }
        try validate(c)
        var prepared: (ChunkFile, Manifest)?
        if let src = c.source {
            let m = try c.manifest ?? Manifest.compute(path: src, chunkSize: c.chunkSize)
            if let d = c.digest, d != m.digest {
                throw BroadcastError.corrupt("\(src) hashes to \(m.digest), not the expected \(d)")
            }
            prepared = (try ChunkFile(source: src, manifest: m), m)
        }
        let p = prepared
        try loop.submit {
            self.config = c
            self.begun = true
            if let (f, m) = p { self.use(f); self.adopt(m) }
            let waiting = self.beforeBegin
            self.beforeBegin = []
            for (f, ch, h) in waiting { self.received(f, on: ch, handler: h) }
            for n in self.initialDials() { self.dial(n, until: self.now + self.config.dialSeconds) }
            self.ticker = self.loop.scheduleRepeatedTask(initialDelay: .milliseconds(100), delay: .milliseconds(100)) { _ in self.tick() }
        }.wait()
        return result.futureResult
    }

    func tick() {
        // Before the manifest there is no machine to time out: no neighbor has offered the image.
        if machine == nil && now > max(config.dialSeconds, config.giveUpSeconds) {
            return fail(
                "no neighbor offered the image within \(Int(max(config.dialSeconds, config.giveUpSeconds))) s (reached: \(channels.keys.sorted().map(String.init).joined(separator: ",")))"
            )
        }
        apply(.tick)
    }

    /// start() for async callers: the blocking setup runs off the cooperative pool.
    public func run() async throws -> ParticipantReport {
        let f: EventLoopFuture<ParticipantReport> = try await withCheckedThrowingContinuation { k in
            Thread.detachNewThread { k.resume(with: Result { try self.start() }) }
        }
        return try await f.get()
    }

    func validate(_ config: ParticipantConfig) throws {
        guard config.rank >= 0 && config.rank < config.addresses.count else {
            throw BroadcastError.config("rank \(config.rank) is not among the \(config.addresses.count) addresses given")
        }
        try Manifest.checkChunkSize(config.chunkSize)
        guard (config.source == nil) != (config.destination == nil) else {
            throw BroadcastError.config("a rank either holds the image (--src) or receives it (--dst), not both or neither")
        }
        for a in config.addresses { _ = try Self.split(a) }
    }

    /// HOST:PORT (port 0 only where listening: any free port).
    static func split(_ a: String, listening: Bool = false) throws -> (String, Int) {
        guard let colon = a.lastIndex(of: ":"), let port = Int(a[a.index(after: colon)...]), port > (listening ? -1 : 0), port < 65536 else {
            throw BroadcastError.config("'\(a)' is not HOST:PORT")
        }
        var host = String(a[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return (host, port)
    }

    /// The neighbors this rank dials before the manifest is known: those of lower rank (one connection
    /// per pair). With the schedule left to the manifest, the circulant graph every pulling schedule
    /// has (the relay's whole graph); `adopt` dials the rest of the plan's, e.g. the two trees' edges.
    func initialDials() -> [Int] {
        let plan = Plan(kind: config.kind ?? .relay, ranks: config.addresses.count, chunks: 1)
        return plan.schedules[config.rank].neighbors.filter { $0 < config.rank }.sorted()
    }

    // MARK: connections

    /// Ranks being dialed, until their hello arrives or the dial gives up: one connection per pair,
    /// as a second one replaces the first and whatever was sent on that is lost.
    var dialsInFlight = Set<Int>()

    func dial(_ p: Int, until deadline: Double, retrying: Bool = false) {
        guard !ended, channels[p] == nil, retrying || dialsInFlight.insert(p).inserted else { return }
        guard let (host, port) = try? Self.split(config.addresses[p]) else { dialsInFlight.remove(p); return }
        ClientBootstrap(group: loop)
            .channelOption(ChannelOptions.socket(SocketOptionLevel(IPPROTO_TCP), SocketOptionName(TCP_NOTSENT_LOWAT)), value: 256 << 10)
            .channelOption(ChannelOptions.recvAllocator, value: Self.reads)
            .connectTimeout(.seconds(5))
            .channelInitializer { ch in self.setUp(ch, dialed: p) }
            .connect(host: host, port: port)
            .whenComplete { r in
                switch r {
                case .success(let ch):
                    self.send(.hello(rank: self.config.rank, complete: self.holdsAll, transfer: self.config.transfer), on: ch)
                case .failure:
                    if self.now < deadline {
                        self.loop.scheduleTask(in: .milliseconds(100)) { self.dial(p, until: deadline, retrying: true) }
                    } else {
                        self.dialsInFlight.remove(p)
                        if p == 0 { self.machine?.rootUnreachable() }
                        self.apply(.disconnected(peer: p))
                    }
                }
            }
    }

    func setUp(_ ch: Channel, dialed: Int?) -> EventLoopFuture<Void> {
        let maxPayload = max(config.chunkSize, manifest?.chunkSize ?? 0, Manifest.chunkSizes.upperBound) + 64
        do {
            try ch.pipeline.syncOperations.addHandler(Inbound(self, dialed: dialed, maxPayload: maxPayload))
            return ch.eventLoop.makeSucceededVoidFuture()
        } catch { return ch.eventLoop.makeFailedFuture(error) }
    }

    /// Reads of up to 1 MiB: a chunk in a few system calls rather than sixteen or more.
    static let reads = AdaptiveRecvByteBufferAllocator(minimum: 64 << 10, initial: 256 << 10, maximum: 1 << 20)

    var holdsAll: Bool { machine?.complete ?? false }

    final class Inbound: ChannelInboundHandler, FrameReader.ChunkSink, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        let peer: Participant
        var rank: Int?
        var reader: FrameReader
        var channel: Channel?
        init(_ p: Participant, dialed: Int?, maxPayload: Int) { peer = p; rank = dialed; reader = FrameReader(maxPayload: maxPayload) }

        /// Reads that arrive while a frame is being handled: a reply written and flushed from inside
        /// the handler can make NIO read this channel again at once, and the reader must not be entered twice.
        var pending: [ByteBuffer] = []
        var reading = false

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            channel = context.channel
            pending.append(unwrapInboundIn(data))
            guard !reading else { return }
            reading = true
            defer { reading = false }
            while !pending.isEmpty {
                var b = pending.removeFirst()
                do { try reader.feed(&b, self) } catch {
                    if let r = rank { peer.note("rank \(r): \(error)") }
                    pending.removeAll()
                    context.close(promise: nil)
                    return
                }
            }
        }

        func begin(chunk index: Int, length: Int) -> ChunkWriter? {
            guard rank != nil, !peer.ended else { return nil }
            return peer.file?.writer(for: index, length: length)
        }

        func frame(_ f: Frame) throws {
            if let channel { peer.received(f, on: channel, handler: self) }
        }

        func ended(chunk index: Int, writer: ChunkWriter?) throws {
            guard let r = rank, let m = peer.machine, index >= 0, index < m.plan.chunks else { return }
            guard let writer else { return peer.apply(.received(from: r, chunk: index, valid: true)) }  // already held: a duplicate
            let ok: Bool
            do { ok = try writer.finish() } catch { return peer.fail("\(error)") }
            peer.chunkArrived(index, from: r, valid: ok)
        }
        func channelInactive(context: ChannelHandlerContext) {
            if let r = rank { peer.dialsInFlight.remove(r) }
            if let r = rank, peer.channels[r] === context.channel { peer.channels[r] = nil; peer.apply(.disconnected(peer: r)) }
        }
        func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
    }

    func received(_ f: Frame, on ch: Channel, handler: Inbound) {
        guard begun else { beforeBegin.append((f, ch, handler)); return }
        switch f {
        case .hello(let r, let complete, let transfer):
            guard transfer == config.transfer, r >= 0, r < config.addresses.count, r != config.rank else {
                send(.abort("this is rank \(config.rank) of transfer '\(config.transfer)'; refused rank \(r) of '\(transfer)'"), on: ch)
                ch.close(promise: nil)
                return
            }
            let accepted = handler.rank == nil
            handler.rank = r
            if let old = channels[r], old !== ch { old.close(promise: nil) }
            channels[r] = ch
            dialsInFlight.remove(r)
            if accepted { send(.hello(rank: config.rank, complete: holdsAll, transfer: config.transfer), on: ch) }
            if let m = manifest { send(.manifest(m), on: ch) }
            if let m = machine {
                if !m.complete { for c in 0..<m.plan.chunks where m.have[c] { send(.have(c), on: ch) } }
                // A peer that connects after the flood (a new tree edge, the root dialed late) learns it here.
                if let s = m.stats.replannedSlow { send(.replan(slow: s), on: ch) }
                apply(.connected(peer: r, complete: complete))
            } else {
                early[r] = (complete, [])
            }
        case .manifest(let m):
            if manifest == nil { adopt(m) }
        case .have(let c):
            guard let r = handler.rank else { return }
            if machine != nil { apply(.peerHas(peer: r, chunk: c)) } else { early[r]?.haves.append(c) }
        case .want(let c):
            guard let r = handler.rank else { return }
            apply(.wanted(by: r, chunk: c == Int(UInt32.max) ? TransferMachine.anyChunk : c))
        case .chunk:
            break  // streamed by the reader, never gathered
        case .replan(let slow):
            guard handler.rank != nil else { return }
            if machine != nil { apply(.replanned(slow: slow)) } else { earlyReplan = slow }
        case .abort(let why):
            if let r = handler.rank { FileHandle.standardError.write(Data("rank \(config.rank): rank \(r) aborted: \(why)\n".utf8)) }
            ch.close(promise: nil)
        }
    }

    func use(_ f: ChunkFile) {
        file = f
        handle = NIOFileHandle(_deprecatedTakingOwnershipOfDescriptor: dup(f.descriptor))
    }

    func chunkArrived(_ c: Int, from r: Int, valid: Bool) {
        if Self.trace { note(String(format: "%.4f recv %d from %d%@", now, c, r, valid ? "" : " CORRUPT")) }
        apply(.received(from: r, chunk: c, valid: valid))
        if valid, let m = machine { config.progress?(m.have.population, m.plan.chunks) }
    }

    func note(_ s: String) { FileHandle.standardError.write(Data("rank \(config.rank): \(s)\n".utf8)) }

    /// The manifest is known: check it, reserve the copy, build the plan, replay who is connected.
    func adopt(_ m: Manifest) {
        guard machine == nil else { return }
        do { try m.validate() } catch { return fail("a peer sent an inconsistent manifest: \(error)") }
        if let d = config.digest, d != m.digest { return fail("the image offered is \(m.digest), not the expected \(d)") }
        if file == nil, let dst = config.destination {
            do { use(try ChunkFile(destination: dst, manifest: m, keepInMemory: config.keepInMemory)) } catch { return fail("\(error)") }
        }
        manifest = m
        let kind = config.kind ?? .chosen(ranks: config.addresses.count, chunks: m.count)
        let plan = Plan(kind: kind, ranks: config.addresses.count, chunks: m.count)
        var opts = TransferMachine.Options(plan: plan, chunkBytes: m.chunkSize)
        opts.giveUpSeconds = config.giveUpSeconds
        machine = TransferMachine(rank: config.rank, plan: plan, holdsAll: config.source != nil, now: now, options: opts)
        for ch in channels.values { send(.manifest(m), on: ch) }
        let seen = early
        early = [:]
        for (r, e) in seen.sorted(by: { $0.key < $1.key }) where channels[r] != nil {
            apply(.connected(peer: r, complete: e.complete))
            for c in e.haves { apply(.peerHas(peer: r, chunk: c)) }
        }
        if let s = earlyReplan { apply(.replanned(slow: s)) }
        if begun {
            let dialed = Set(initialDials())
            for p in plan.schedules[config.rank].neighbors.sorted() where p < config.rank && !dialed.contains(p) {
                dial(p, until: now + config.dialSeconds)
            }
        }
    }

    // MARK: actions

    func apply(_ e: TransferMachine.Event) {
        guard !ended, machine != nil else { return }
        let actions = machine!.handle(e, now: now)
        for a in actions { perform(a) }
        if verifiedAt != nil, let m = machine, m.neighborsDone || now - max(verifiedAt!, lastActivity) > config.lingerSeconds { finish() }
    }

    static let trace = ProcessInfo.processInfo.environment["SLURM_VM_BROADCAST_TRACE"] != nil

    func perform(_ a: TransferMachine.Action) {
        if Self.trace { FileHandle.standardError.write(Data(String(format: "%.4f %d %@\n", now, config.rank, "\(a)").utf8)) }
        switch a {
        case .send(let p, let c):
            lastActivity = now
            guard let ch = channels[p], let file, let handle else { return }
            let (off, len) = file.manifest.range(c)
            var head = ch.allocator.buffer(capacity: 9)
            head.writeInteger(Frame.Kind.chunk.rawValue)
            head.writeInteger(UInt32(4 + len))
            head.writeInteger(UInt32(c))
            ch.write(head, promise: nil)
            let done: EventLoopFuture<Void>
            if config.corrupt.contains(c) && corrupted.insert(c).inserted {
                var body = ch.allocator.buffer(capacity: len)
                do { _ = try file.withChunk(c) { body.writeBytes($0) } } catch { return fail("\(error)") }
                body.setInteger(~body.getInteger(at: len - 1, as: UInt8.self)!, at: len - 1)
                done = ch.writeAndFlush(body)
            } else if let held = file.held(c) {
                // A chunk written around the page cache, still in memory: sent from there, through a
                // reused buffer (a fresh one would be fresh pages, mapped and zeroed, for every send).
                // Should NIO still hold a reused buffer, copy-on-write gives this send its own.
                var body = sendBuffers.popLast() ?? ch.allocator.buffer(capacity: file.manifest.chunkSize)
                body.clear()
                body.writeBytes(held)
                sentFromMemory += 1
                done = ch.writeAndFlush(body)
                done.whenComplete { _ in if self.sendBuffers.count < 8 { self.sendBuffers.append(body) } }
            } else {
                // sendfile from the page cache: the bytes never pass through this process.
                done = ch.writeAndFlush(IOData.fileRegion(FileRegion(fileHandle: handle, readerIndex: Int(off), endIndex: Int(off) + len)))
            }
            done.whenComplete { _ in self.apply(.sent(to: p, chunk: c)) }
        case .want(let p, let c):
            if let ch = channels[p] { send(.want(c == TransferMachine.anyChunk ? Int(UInt32.max) : c), on: ch) }
        case .announce(let c):
            for ch in channels.values { send(.have(c), on: ch) }
        case .connect(let p):
            dial(p, until: now + 10)
        case .replan(let slow):
            for ch in channels.values { send(.replan(slow: slow), on: ch) }
        case .complete:
            do { try file?.finish() } catch { return fail("\(error)") }
            verifiedAt = now
        case .fail(let why):
            fail(why)
        case .pace(let p, let rate):
            guard let ch = channels[p], let file else { return }
            // Bytes a second as a 64-bit value (the kernel takes one when given 8 bytes); all ones is unpaced.
            let bytes = rate * Double(file.manifest.chunkSize)
            _ = ch.setOption(ChannelOptions.socketOption(.init(rawValue: SO_MAX_PACING_RATE)), value: bytes < 1e18 ? Int(bytes) : -1)
        }
    }

    func send(_ f: Frame, on ch: Channel) {
        var b = ch.allocator.buffer(capacity: 64)
        f.encode(into: &b)
        ch.writeAndFlush(b, promise: nil)
    }

    func finish() {
        guard !ended, let m = machine else { return }
        ended = true
        shutdown()
        result.succeed(
            ParticipantReport(
                rank: config.rank, seconds: config.source != nil ? 0 : verifiedAt ?? now, stats: m.stats, kind: m.plan.kind,
                chunkSize: manifest?.chunkSize ?? config.chunkSize,
                sentFromMemory: sentFromMemory, bypassedPageCache: file?.bypassesPageCache ?? false))
    }

    func fail(_ why: String) {
        guard !ended else { return }
        ended = true
        if verifiedAt == nil { file?.discard() }
        for ch in channels.values { send(.abort("rank \(config.rank): \(why)"), on: ch) }
        shutdown()
        result.fail(BroadcastError.failed(why))
    }

    func shutdown() {
        ticker?.cancel()
        let closing = channels.values.map { $0.close() }
        channels = [:]
        server?.close(promise: nil)
        let h = handle
        handle = nil
        EventLoopFuture.andAllComplete(closing, on: loop).whenComplete { _ in try? h?.close() }
    }
}
