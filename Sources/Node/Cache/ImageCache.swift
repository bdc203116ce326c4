// The node-local image cache: blobs by SHA-256 under <cache>/blobs/sha256, image records under
// <cache>/images, a quota with least-recently-used eviction that never touches an image in use. A
// missing blob arrives from the catalog role (ImageCache+Catalog.swift): by the job's broadcast, or by a
// plain fetch. Either way it is verified against its digest before it is renamed into place, so a
// partial or corrupt transfer is never visible.

import Broadcast
import Catalog
import Foundation
import Sizes
import Support
import Telemetry
#if canImport(Glibc)
import Glibc
#endif

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

    public init(
        root: String, source: String, timeout: TimeInterval = 60, quota: Int64? = nil,
        inUse: @escaping @Sendable () -> Set<String> = { [] }
    ) throws {
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
                Date().timeIntervalSince(m) > 600
            {
                unlink(dir + "/" + n)
            }
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
            guard let d = FileManager.default.contents(atPath: dir + "/" + n), let r = try? JSONDecoder.iso.decode(ImageRecord.self, from: d) else {
                continue
            }
            let key = r.digest + " " + r.name + ":" + r.version
            guard seen.insert(key).inserted else { continue }
            out.append(
                Entry(
                    record: r, bytes: r.artefacts.reduce(0) { $0 + (blobs.has($1.digest) ? $1.size : 0) },
                    lastUsed: used[r.digest], inUse: busy.contains(r.digest), complete: r.artefacts.allSatisfy { blobs.has($0.digest) }))
        }
        return out.sorted { ($0.lastUsed ?? .distantPast) < ($1.lastUsed ?? .distantPast) }
    }

    /// Bytes of all blobs held.
    public func totalBytes() -> Int64 { blobs.all().reduce(0) { $0 + blobs.size(of: $1) } }

    /// Removes an image record and every blob no other cached record needs; refuses one in use.
    public func remove(image digest: String) throws -> Int64 {
        guard !inUse().contains(digest) else {
            throw NodeError.cache("image \(digest) is in use by a job on this node; it can be removed once the job ends")
        }
        let all = entries()
        guard let e = all.first(where: { $0.record.digest == digest }) else {
            throw NodeError.cache("image \(digest) is not in the node cache at \(root)")
        }
        let others = Set(all.filter { $0.record.digest != digest }.flatMap { $0.record.artefacts.map(\.digest) })
        var freed: Int64 = 0
        for a in e.record.artefacts where !others.contains(a.digest) && blobs.has(a.digest) {
            freed += blobs.size(of: a.digest)
            blobs.remove(a.digest)
        }
        let dir = root + "/images"
        for n in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where n.hasPrefix(digest.replacingOccurrences(of: ":", with: "-"))
        {
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
            throw NodeError.cache(
                "the node cache at \(root) is limited to \(ByteSize.describe(limit)) and holds \(ByteSize.describe(total)), of which \(ByteSize.describe(total - reclaimable)) belongs to images in use; \(ByteSize.describe(needed)) more do not fit. Raise node.cache_quota, or wait for the jobs using the other images to end"
            )
        }
        var evicted: [String] = []
        for c in candidates where total + needed > limit {
            total -= (try? remove(image: c.record.digest)) ?? 0
            evicted.append("\(c.record.name):\(c.record.version)")
            Telemetry.cacheEvictions.increment()
        }
        return evicted
    }

    func usage() -> [String: Date] {
        guard let d = FileManager.default.contents(atPath: root + "/used.json"),
            let m = try? JSONDecoder.iso.decode([String: Date].self, from: d)
        else { return [:] }
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
    public func obtain(
        image digest: String, label: String? = nil, job: JobKey? = nil,
        progress: (@Sendable (Int64, Int64) -> Void)? = nil
    ) throws -> (record: ImageRecord, received: Bool) {
        var received = false
        let rec = try record(digest, label: label)
        if let quota {
            let missing = rec.artefacts.filter { !blobs.has($0.digest) }.reduce(Int64(0)) { $0 + $1.size }
            if missing > 0 { try makeRoom(missing, limit: quota, keep: [digest]) }
        }
        defer {
            touch(digest)
            // The cache changed only if something came (eviction makes room only for that).
            if received { Telemetry.cacheBytes.set(to: Double(totalBytes())) }
        }
        let total = rec.artefacts.reduce(Int64(0)) { $0 + $1.size }
        var done: Int64 = 0
        for a in rec.artefacts {
            var held = false
            if blobs.has(a.digest) {
                do { try blobs.verify(a.digest); held = true } catch { blobs.remove(a.digest) }  // damaged: fetch again
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
            let arriving = Date()
            do {
                if let job {
                    try broadcastBlob(a.digest, job: job, held: held, progress: chunks)
                } else if !held {
                    try fetchBlob(a.digest, size: a.size)
                }
            } catch {
                Telemetry.failed(.broadcast)
                throw error
            }
            if !held {
                Telemetry.broadcastBytes.increment(by: a.size)
                Telemetry.broadcastRate.record(Double(a.size) / max(Date().timeIntervalSince(arriving), 1e-6))
            }
            done += a.size
            progress?(done, total)
        }
        if received { Telemetry.cacheMisses.increment() } else { Telemetry.cacheHits.increment() }
        return (rec, received)
    }
}
