// The catalog role's side of image distribution. Node daemons that lack a blob ask to join a broadcast
// of it ("BROADCAST" on the blob service); requests for the same blob that arrive while a group is
// gathering -- every node of one job, or of several jobs starting at once -- become one transfer,
// planned over the nodes that lack it and rooted at the catalog's copy (rank 0, run here). A group
// starts once every job it serves has all its nodes in (each request says how many nodes its job
// has), after a short gathering window, or when the wait runs out (late nodes then get a transfer of
// their own).

import Foundation
import NIOCore
import NIOPosix

public final class Coordinator: @unchecked Sendable {
    public struct Assignment: Sendable, Equatable {
        public let transfer: String
        public let rank: Int
        public let addresses: [String]
        public let chunkSize: Int
    }

    struct Group {
        let id: String
        let digest: String
        let opened: Date
        var members: [(node: String, address: String)] = []
        var expected: [String: Int] = [:]
        var joined: [String: Set<String>] = [:]
        var plan: Result<[String], BroadcastError>?
        /// The chunk size rank 0 serves, once planned (every member is told the same).
        var chunkSize = 0
    }

    let lock = NSCondition()
    var groups: [String: Group] = [:]  // by id
    var gathering: [String: String] = [:]  // digest → id of the group still taking members
    var held: [String: Set<String>] = [:]  // "job digest" → nodes that hold it, seen before a group
    let group: EventLoopGroup
    let source: @Sendable (String) -> String?
    public var gatherSeconds: Double = 0.3
    public var waitSeconds: Double = 10
    /// nil: each blob's own (Manifest.chunkSize(forBytes:)).
    public var chunkSize: Int?
    public private(set) var transfers = 0
    /// Manifests of the catalog's blobs by "digest chunk-size": a blob never changes, so each is
    /// computed once (a pass over the image every receiver would wait for) and reused.
    var manifests: [String: Manifest] = [:]
    let log: @Sendable (String) -> Void

    /// `source` gives the catalog's path of a blob by digest.
    public init(group: EventLoopGroup, source: @escaping @Sendable (String) -> String?, log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.group = group
        self.source = source
        self.log = log
    }

    /// Blocks until the request's group is planned. `host` is the address the requester reached us
    /// at: rank 0 listens there. A node that already holds the blob (address nil) only counts towards
    /// its job's nodes and returns nil at once.
    public func join(digest: String, job: String, jobNodes: Int, node: String, address: String?, host: String) throws -> Assignment? {
        guard let path = source(digest) else { throw BroadcastError.noSuchBlob("no blob \(digest) in the catalog") }
        guard jobNodes >= 1 && jobNodes <= 100_000 else { throw BroadcastError.config("a job of \(jobNodes) nodes cannot be right") }
        lock.lock()
        defer { lock.unlock() }
        guard let address else {
            if let g = gathering[digest] {
                groups[g]!.joined[job, default: []].insert(node); groups[g]!.expected[job] = max(groups[g]!.expected[job] ?? 0, jobNodes);
                lock.broadcast()
            } else {
                held[job + " " + digest, default: []].insert(node)
            }
            return nil
        }
        let id: String
        if let g = gathering[digest], groups[g]?.members.contains(where: { $0.node == node }) == false {
            id = g
        } else {
            id = "\(digest.dropFirst(7).prefix(12))-\(UInt32.random(in: 0...UInt32.max))"
            groups[id] = Group(id: id, digest: digest, opened: Date())
            gathering[digest] = id
        }
        groups[id]!.members.append((node, address))
        groups[id]!.expected[job] = max(groups[id]!.expected[job] ?? 0, jobNodes)
        groups[id]!.joined[job, default: []].insert(node)
        // Nodes of this job that said they hold the blob before any group was gathering.
        if let h = held.removeValue(forKey: job + " " + digest) { groups[id]!.joined[job]!.formUnion(h) }
        lock.broadcast()
        while let g = groups[id], g.plan == nil {
            let full = g.expected.allSatisfy { g.joined[$0.key]?.count ?? 0 >= $0.value }
            let age = Date().timeIntervalSince(g.opened)
            if (full && age >= gatherSeconds) || age >= waitSeconds {
                if gathering[digest] == id { gathering[digest] = nil }
                do { groups[id]!.plan = .success(try startRoot(id: id, path: path, host: host, members: g.members.map(\.address))) } catch {
                    groups[id]!.plan = .failure(error as? BroadcastError ?? BroadcastError.failed("\(error)"))
                }
                lock.broadcast()
                break
            }
            _ = lock.wait(until: Date().addingTimeInterval(full ? max(0.01, gatherSeconds - age) : 0.05))
        }
        guard let g = groups[id], let plan = g.plan, let i = g.members.firstIndex(where: { $0.node == node }) else {
            throw BroadcastError.failed("broadcast \(id) ended before it was planned")
        }
        let rank = i + 1
        switch plan {
        case .failure(let e): throw e
        case .success(let addrs): return Assignment(transfer: id, rank: rank, addresses: addrs, chunkSize: g.chunkSize)
        }
    }

    func chunkSize(of path: String) -> Int {
        if let chunkSize { return chunkSize }
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.int64Value ?? 0
        return Manifest.chunkSize(forBytes: size)
    }

    /// Rank 0: the catalog's copy, served until every node has verified its own.
    func startRoot(id: String, path: String, host: String, members: [String]) throws -> [String] {
        var c = ParticipantConfig(rank: 0, addresses: [])
        let chunkSize = chunkSize(of: path)  // the blob's size read once per transfer, not per member
        groups[id]?.chunkSize = chunkSize
        c.source = path
        let key = "\(groups[id]?.digest ?? "") \(chunkSize)"
        if manifests[key] == nil {
            let m = try Manifest.compute(path: path, chunkSize: chunkSize)
            if m.digest == groups[id]?.digest { manifests[key] = m }
        }
        c.manifest = manifests[key]
        c.digest = groups[id]?.digest
        c.transfer = id
        c.chunkSize = chunkSize
        c.lingerSeconds = 60
        let peer = Participant(c, group: group)
        let port = try peer.listen(on: "\(host):0")
        let addrs = ["\(host):\(port)"] + members
        transfers += 1
        log("broadcast \(id): \(members.count) node(s)")
        let f = try peer.begin(addresses: addrs)
        f.whenComplete { r in
            if case .failure(let e) = r { self.log("broadcast \(id) failed at the catalog: \(e)") }
            self.lock.lock()
            self.groups[id] = nil
            self.lock.unlock()
        }
        return addrs
    }
}
