// The node-local image cache: blobs by SHA-256 under <cache>/blobs/sha256, image records under
// <cache>/images. A missing blob arrives by broadcast: every node of the job joins one transfer planned
// by the catalog role (Broadcast.Coordinator), or, without a job (or from an old catalog), by a plain
// fetch. Either way it is verified against its digest before it is renamed into place, so a partial or
// corrupt transfer is never visible.
//
// The protocol of the catalog's blob service, one request per connection:
//   client: "GET sha256:<hex>\n" (a blob) or "RECORD sha256:<hex> [NAME:VERSION]\n" (an image record, JSON)
//   server: "OK <size>\n" then exactly <size> bytes, or "ERR <message>\n"
//   client: "BROADCAST sha256:<hex> JOB JOB-NODES NODE HOST:PORT\n" (join the job's broadcast; this node
//           listens at HOST:PORT)
//   server: "PLAN TRANSFER RANK CHUNK-SIZE ADDR,ADDR,…\n" once the group is planned, or "ERR <message>\n"

import Broadcast
import Catalog
import Foundation
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

public struct CacheError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

public struct ImageCache: Sendable {
    public let root: String
    public let blobs: BlobStore
    /// host:port of the catalog role's blob service.
    public let source: String
    public let timeout: TimeInterval

    /// Most bytes of blobs the cache may hold (nil: no limit). Least recently used images are evicted
    /// to make room, never one that a job on this node is using.
    public let quota: Int64?
    /// Image digests in use by this node's jobs.
    public let inUse: @Sendable () -> Set<String>

    public init(root: String, source: String, timeout: TimeInterval = 60, quota: Int64? = nil,
                inUse: @escaping @Sendable () -> Set<String> = { [] }) throws {
        self.root = root
        self.source = source
        self.timeout = timeout
        self.quota = quota
        self.inUse = inUse
        blobs = try BlobStore(root: root)
        try Files.mkdirs(root + "/images")
        // Copies a killed broadcast left behind (hidden, never under a digest's name).
        let dir = root + "/blobs/sha256"
        for n in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where n.hasPrefix(".partial-") {
            if let a = try? FileManager.default.attributesOfItem(atPath: dir + "/" + n), let m = a[.modificationDate] as? Date,
               Date().timeIntervalSince(m) > 600 { unlink(dir + "/" + n) }
        }
    }

    // MARK: what is cached, and eviction

    public struct Entry: Sendable {
        public var record: ImageRecord
        public var bytes: Int64
        public var lastUsed: Date?
        public var inUse: Bool
        public var complete: Bool
    }

    /// Every cached image record, least recently used first.
    public func entries() -> [Entry] {
        let used = usage()
        let busy = inUse()
        let dir = root + "/images"
        var seen = Set<String>()
        var out: [Entry] = []
        for n in ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted() where n.hasSuffix(".json") {
            guard let d = FileManager.default.contents(atPath: dir + "/" + n), let r = try? JSONDecoder.iso.decode(ImageRecord.self, from: d) else { continue }
            let key = r.digest + " " + r.name + ":" + r.version
            guard seen.insert(key).inserted else { continue }
            out.append(Entry(record: r, bytes: r.artefacts.reduce(0) { $0 + (blobs.has($1.digest) ? $1.size : 0) },
                             lastUsed: used[r.digest], inUse: busy.contains(r.digest), complete: r.artefacts.allSatisfy { blobs.has($0.digest) }))
        }
        return out.sorted { ($0.lastUsed ?? .distantPast) < ($1.lastUsed ?? .distantPast) }
    }

    /// Bytes of all blobs held.
    public func totalBytes() -> Int64 { blobs.all().reduce(0) { $0 + blobs.size(of: $1) } }

    /// Removes an image record and every blob no other cached record needs; refuses one in use.
    public func remove(image digest: String) throws -> Int64 {
        guard !inUse().contains(digest) else { throw CacheError("image \(digest) is in use by a job on this node; it can be removed once the job ends") }
        let all = entries()
        guard let e = all.first(where: { $0.record.digest == digest }) else { throw CacheError("image \(digest) is not in the node cache at \(root)") }
        let others = Set(all.filter { $0.record.digest != digest }.flatMap { $0.record.artefacts.map(\.digest) })
        var freed: Int64 = 0
        for a in e.record.artefacts where !others.contains(a.digest) && blobs.has(a.digest) {
            freed += blobs.size(of: a.digest)
            blobs.remove(a.digest)
        }
        let dir = root + "/images"
        for n in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where n.hasPrefix(digest.replacingOccurrences(of: ":", with: "-")) {
            unlink(dir + "/" + n)
        }
        var u = usage(); u[digest] = nil; saveUsage(u)
        return freed
    }

    /// Evicts least recently used images not in use until `needed` more bytes fit under `limit`.
    /// Returns what was evicted; throws, evicting nothing, if even that cannot make room.
    @discardableResult
    public func makeRoom(_ needed: Int64, limit: Int64, keep: Set<String> = []) throws -> [String] {
        var total = totalBytes()
        guard total + needed > limit else { return [] }
        let candidates = entries().filter { !$0.inUse && !keep.contains($0.record.digest) }
        let pinned = Set(entries().filter { $0.inUse || keep.contains($0.record.digest) }.flatMap { $0.record.artefacts.map(\.digest) })
        var reclaimable: Int64 = 0
        for c in candidates { for a in c.record.artefacts where !pinned.contains(a.digest) && blobs.has(a.digest) { reclaimable += a.size } }
        guard total - reclaimable + needed <= limit else {
            throw CacheError("the node cache at \(root) is limited to \(Self.bytes(limit)) and holds \(Self.bytes(total)), of which \(Self.bytes(total - reclaimable)) belongs to images in use; \(Self.bytes(needed)) more do not fit. Raise node.cache_quota, or wait for the jobs using the other images to end")
        }
        var evicted: [String] = []
        for c in candidates where total + needed > limit {
            total -= (try? remove(image: c.record.digest)) ?? 0
            evicted.append("\(c.record.name):\(c.record.version)")
        }
        return evicted
    }

    static func bytes(_ n: Int64) -> String { ImageCacheFormat.bytes(n) }

    func usage() -> [String: Date] {
        guard let d = FileManager.default.contents(atPath: root + "/used.json"),
              let m = try? JSONDecoder.iso.decode([String: Date].self, from: d) else { return [:] }
        return m
    }

    func saveUsage(_ u: [String: Date]) {
        if let d = try? JSONEncoder.iso.encode(u) { try? Files.writeAtomically(d, to: root + "/used.json") }
    }

    func touch(_ digest: String) {
        var u = usage()
        u[digest] = Date()
        saveUsage(u)
    }

    /// Which broadcast a node joins: the job, how many nodes it has (all of them join), this node.
    public struct JobKey: Sendable {
        public var job: String
        public var nodes: Int
        public var node: String
        public init(job: String, nodes: Int, node: String) { self.job = job; self.nodes = nodes; self.node = node }
    }

    /// The image record and every artefact present and verified in the cache. With a job, missing
    /// artefacts come by the job's broadcast; every node of the job must call this (nodes that hold
    /// an artefact still join, so the group is complete, and receive nothing).
    public func ensure(image digest: String, label: String? = nil, job: JobKey? = nil) throws -> ImageRecord {
        try obtain(image: digest, label: label, job: job).record
    }

    /// As `ensure`; `progress` hears (bytes held, bytes of all artefacts) as chunks arrive, and
    /// `received` says whether any artefact had to come over the network.
    public func obtain(image digest: String, label: String? = nil, job: JobKey? = nil,
                       progress: (@Sendable (Int64, Int64) -> Void)? = nil) throws -> (record: ImageRecord, received: Bool) {
        var received = false
        let rec = try record(digest, label: label)
        if let quota {
            let missing = rec.artefacts.filter { !blobs.has($0.digest) }.reduce(Int64(0)) { $0 + $1.size }
            if missing > 0 { try makeRoom(missing, limit: quota, keep: [digest]) }
        }
        defer { touch(digest) }
        let total = rec.artefacts.reduce(Int64(0)) { $0 + $1.size }
        var done: Int64 = 0
        for a in rec.artefacts {
            var held = false
            if blobs.has(a.digest) {
                do { try blobs.verify(a.digest); held = true } catch { blobs.remove(a.digest) }   // damaged: fetch again
            }
            if !held { received = true }
            let before = done
            var chunks: (@Sendable (Int, Int) -> Void)? = nil
            if let progress {
                let size = a.size
                chunks = { have, all in
                    let part: Int64 = all > 0 ? size * Int64(have) / Int64(all) : 0
                    progress(before + part, total)
                }
            }
            if let job {
                try broadcastBlob(a.digest, job: job, held: held, progress: chunks)
            } else if !held {
                try fetchBlob(a.digest, size: a.size)
            }
            done += a.size
            progress?(done, total)
        }
        return (rec, received)
    }

    /// Joins the job's broadcast of one blob (or, holding it, just tells the coordinator so).
    func broadcastBlob(_ digest: String, job: JobKey, held: Bool, progress: (@Sendable (Int, Int) -> Void)? = nil) throws {
        let fd = try BlobWire.connect(source, timeout: timeout)
        defer { close(fd) }
        // The address this node reaches the catalog from is the one the other nodes can reach it at.
        guard let ip = BlobWire.localAddress(fd) else { throw CacheError("cannot tell this node's address towards \(source)") }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        var c = ParticipantConfig(rank: 1, addresses: [])
        c.destination = blobs.path(of: digest)
        c.digest = digest
        c.giveUpSeconds = timeout
        c.progress = progress
        let rank = held ? nil : Participant(c, group: group)
        let listen = try rank.map { "\(ip):\(try $0.listen(on: "\(ip):0"))" } ?? "HAVE"
        guard BlobWire.writeAll(fd, "BROADCAST \(digest) \(job.job) \(job.nodes) \(job.node) \(listen)\n") else {
            throw CacheError("cannot send to the catalog at \(source): \(String(cString: strerror(errno)))")
        }
        guard let line = BlobWire.readLine(fd) else { throw CacheError("the catalog at \(source) closed the connection or timed out planning the broadcast of \(digest)") }
        if line.hasPrefix("ERR unknown request") && !held { return try fetchBlob(digest, size: -1) }   // an older catalog
        if line.hasPrefix("ERR ") { throw CacheError("the catalog at \(source): \(line.dropFirst(4))") }
        if line == "HELD" { return }
        let f = line.split(separator: " ").map(String.init)
        guard f.count == 5, f[0] == "PLAN", let r = Int(f[2]), let cs = Int(f[3]) else {
            throw CacheError("the catalog at \(source) sent '\(line.prefix(80))', not a broadcast plan")
        }
        guard let rank else { throw CacheError("the catalog at \(source) sent a plan to a node that holds \(digest)") }
        do {
            _ = try rank.begin(addresses: f[4].split(separator: ",").map(String.init), rank: r, transfer: f[1], chunkSize: cs).wait()
        } catch {
            throw CacheError("the broadcast of \(digest) to this node failed: \(error)")
        }
        guard blobs.has(digest) else { throw CacheError("the broadcast of \(digest) ended without a copy") }
    }

    func record(_ digest: String, label: String?) throws -> ImageRecord {
        let name = digest.replacingOccurrences(of: ":", with: "-") + (label.map { "-" + $0.replacingOccurrences(of: ":", with: "-") } ?? "")
        let path = root + "/images/" + name + ".json"
        if let d = FileManager.default.contents(atPath: path), let r = try? JSONDecoder.iso.decode(ImageRecord.self, from: d), r.digest == digest {
            return r
        }
        let data = try BlobWire.fetch("RECORD \(digest)" + (label.map { " " + $0 } ?? ""), from: source, timeout: timeout)
        let r: ImageRecord
        do { r = try JSONDecoder.iso.decode(ImageRecord.self, from: data) } catch {
            throw CacheError("the catalog at \(source) sent an unreadable record for \(digest): \(error)")
        }
        // The record's digest is a hash of its artefacts and command line: check it, as for blobs.
        guard r.digest == digest, ImageRecord.manifestDigest(r.artefacts, cmdline: r.cmdline) == digest else {
            throw CacheError("the catalog at \(source) sent a record that does not match \(digest)")
        }
        try Files.writeAtomically(data, to: path)
        return r
    }

    func fetchBlob(_ digest: String, size: Int64) throws {
        let staged = "\(root)/tmp/fetch-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        defer { unlink(staged) }
        try BlobWire.fetch("GET \(digest)", from: source, timeout: timeout, into: staged, expect: size)
        let (got, _) = try blobs.ingest(staged, move: true)
        guard got == digest else {
            blobs.remove(got)
            throw CacheError("blob \(digest) from \(source) arrived corrupted (its bytes hash to \(got)); nothing was cached")
        }
    }
}

extension JSONDecoder {
    /// Image records travel with ISO 8601 dates (the blob service and the node cache agree on this).
    public static var iso: JSONDecoder { let d = JSONDecoder(); d.dateDecodingStrategy = .iso8601; return d }
}

extension JSONEncoder {
    public static var iso: JSONEncoder { let e = JSONEncoder(); e.dateEncodingStrategy = .iso8601; e.outputFormatting = [.sortedKeys]; return e }
}

public enum BlobWire {
    /// Connects to host:port with a timeout on every read and write.
    public static func connect(_ address: String, timeout: TimeInterval) throws -> Int32 {
        guard let colon = address.lastIndex(of: ":"), let port = UInt16(address[address.index(after: colon)...]) else {
            throw CacheError("'\(address)' is not HOST:PORT")
        }
        let host = String(address[..<colon])
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &res) == 0, let first = res else {
            throw CacheError("cannot resolve \(host)")
        }
        defer { freeaddrinfo(res) }
        var lastError = ""
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            let fd = socket(a.pointee.ai_family, a.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), a.pointee.ai_protocol)
            if fd >= 0 {
                setTimeouts(fd, timeout)
                if Glibc.connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 { return fd }
                lastError = String(cString: strerror(errno))
                close(fd)
            }
            ai = a.pointee.ai_next
        }
        throw CacheError("cannot connect to the catalog at \(address): \(lastError)")
    }

    /// The local IP address of a connected socket, as text.
    public static func localAddress(_ fd: Int32) -> String? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } } == 0
        guard ok else { return nil }
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        let rc = withUnsafePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            getnameinfo($0, len, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST)
        } }
        guard rc == 0 else { return nil }
        let h = String(cString: host)
        return h.contains(":") ? "[\(h)]" : h
    }

    public static func setTimeouts(_ fd: Int32, _ t: TimeInterval) {
        var tv = timeval(tv_sec: Int(t), tv_usec: Int((t - t.rounded(.down)) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    public static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = send(fd, bytes.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL))
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            off += n
        }
        return true
    }

    public static func writeAll(_ fd: Int32, _ s: String) -> Bool {
        Array(s.utf8).withUnsafeBytes { writeAll(fd, $0) }
    }

    /// Reads one "\n"-terminated line (at most 4 KiB) byte by byte, so nothing after it is consumed.
    public static func readLine(_ fd: Int32) -> String? {
        var line = [UInt8]()
        var c: UInt8 = 0
        while line.count < 4096 {
            let n = read(fd, &c, 1)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return nil }
            if c == 10 { return String(decoding: line, as: UTF8.self) }
            line.append(c)
        }
        return nil
    }

    /// Sends a request and reads the reply's header: the size that follows.
    static func request(_ req: String, _ fd: Int32, from: String) throws -> Int64 {
        guard writeAll(fd, req + "\n") else { throw CacheError("cannot send to the catalog at \(from): \(String(cString: strerror(errno)))") }
        guard let head = readLine(fd) else { throw CacheError("the catalog at \(from) closed the connection or timed out") }
        if head.hasPrefix("ERR ") { throw CacheError("the catalog at \(from): \(head.dropFirst(4))") }
        guard head.hasPrefix("OK "), let size = Int64(head.dropFirst(3)), size >= 0 else {
            throw CacheError("the catalog at \(from) sent '\(head.prefix(80))', not OK SIZE")
        }
        return size
    }

    /// A small reply, in memory.
    public static func fetch(_ req: String, from: String, timeout: TimeInterval) throws -> Data {
        let fd = try connect(from, timeout: timeout)
        defer { close(fd) }
        let size = try request(req, fd, from: from)
        guard size <= 64 << 20 else { throw CacheError("the catalog at \(from) announced \(size) bytes for '\(req)'") }
        var data = Data(count: Int(size))
        var off = 0
        let ok = data.withUnsafeMutableBytes { p -> Bool in
            while off < Int(size) {
                let n = read(fd, p.baseAddress! + off, Int(size) - off)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return false }
                off += n
            }
            return true
        }
        guard ok else { throw CacheError("the catalog at \(from) stopped after \(off) of \(size) bytes") }
        return data
    }

    /// A blob, streamed into a new file `path`; `expect` is the size the record gives.
    public static func fetch(_ req: String, from: String, timeout: TimeInterval, into path: String, expect: Int64) throws {
        let fd = try connect(from, timeout: timeout)
        defer { close(fd) }
        let size = try request(req, fd, from: from)
        guard size == expect || expect < 0 else { throw CacheError("the catalog at \(from) offers \(size) bytes for '\(req)', the record says \(expect)") }
        let out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard out >= 0 else { throw CacheError("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(out) }
        let cap = 1 << 20
        let buf = UnsafeMutableRawPointer.allocate(byteCount: cap, alignment: 16)
        defer { buf.deallocate() }
        var got: Int64 = 0
        while got < size {
            let n = read(fd, buf, Int(min(Int64(cap), size - got)))
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { throw CacheError("the transfer of '\(req)' from \(from) stopped after \(got) of \(size) bytes") }
            var off = 0
            while off < n {
                let w = write(out, buf + off, n - off)
                if w < 0 && errno == EINTR { continue }
                if w <= 0 { throw CacheError("cannot write \(path) (is the node cache's disk full?): \(String(cString: strerror(errno)))") }
                off += w
            }
            got += Int64(n)
        }
        guard fsync(out) == 0 else { throw CacheError("cannot sync \(path): \(String(cString: strerror(errno)))") }
    }
}

public enum ImageCacheFormat {
    /// Sizes as people read them: MiB below a GiB, GiB above.
    public static func bytes(_ n: Int64) -> String {
        n >= 1 << 30 ? String(format: "%.1f GiB", Double(n) / Double(1 << 30)) : String(format: "%.1f MiB", Double(n) / Double(1 << 20))
    }
}
