// How the node cache gets what it lacks from the catalog role's blob service (BlobService/): an image's
// record, checked against its digest; each missing blob by the job's broadcast (every node of the job
// joins one transfer planned by Broadcast.Coordinator) or, without a job, by a plain fetch.

import Broadcast
import Catalog
import Foundation
import NIOPosix
import Support
#if canImport(Glibc)
import Glibc
#endif

extension ImageCache {
    /// Joins the job's broadcast of one blob (or, holding it, just tells the coordinator so).
    func broadcastBlob(_ digest: String, job: JobKey, held: Bool, progress: (@Sendable (Int, Int) -> Void)? = nil) throws {
        let fd = try BlobWire.connect(source, timeout: timeout)
        defer { close(fd) }
        // The address this node reaches the catalog from is the one the other nodes can reach it at.
        guard let ip = BlobWire.localAddress(fd) else { throw NodeError.catalog("cannot tell this node's address towards \(source)") }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        var c = ParticipantConfig(rank: 1, addresses: [])
        c.destination = blobs.path(of: digest)
        c.digest = digest
        c.giveUpSeconds = timeout
        c.progress = progress
        let rank = held ? nil : Participant(c, group: group)
        let listen = try rank.map { "\(ip):\(try $0.listen(on: "\(ip):0"))" }
        let request = BlobRequest.broadcast(digest: digest, job: job.job, jobNodes: job.nodes, node: job.node, address: listen)
        guard BlobWire.writeAll(fd, request.line + "\n") else {
            throw NodeError.catalog("cannot send to the catalog at \(source): \(String(cString: strerror(errno)))")
        }
        guard let line = BlobWire.readLine(fd) else {
            throw NodeError.catalog("the catalog at \(source) closed the connection or timed out planning the broadcast of \(digest)")
        }
        switch try BlobReply.parse(line) {
        case .error(let e) where e.hasPrefix("unknown request") && !held: return try fetchBlob(digest, size: -1)  // an older catalog
        case .error(let e): throw NodeError.catalog("the catalog at \(source): \(e)")
        case .held: return
        case .ok: throw NodeError.protocolViolation("the catalog at \(source) sent '\(line.prefix(80))', not a broadcast plan")
        case .plan(let transfer, let r, let chunkSize, let addresses):
            guard let rank else { throw NodeError.protocolViolation("the catalog at \(source) sent a plan to a node that holds \(digest)") }
            do {
                _ = try rank.begin(addresses: addresses, rank: r, transfer: transfer, chunkSize: chunkSize).wait()
            } catch {
                throw NodeError.catalog("the broadcast of \(digest) to this node failed: \(error)")
            }
        }
        guard blobs.has(digest) else { throw NodeError.catalog("the broadcast of \(digest) ended without a copy") }
    }

    func record(_ digest: String, label: String?) throws -> ImageRecord {
        let name = digest.replacingOccurrences(of: ":", with: "-") + (label.map { "-" + $0.replacingOccurrences(of: ":", with: "-") } ?? "")
        let path = root + "/images/" + name + ".json"
        if let d = FileManager.default.contents(atPath: path), let r = try? JSONDecoder.iso.decode(ImageRecord.self, from: d), r.digest == digest {
            return r
        }
        let data = try BlobWire.fetch(.record(digest: digest, label: label), from: source, timeout: timeout)
        let r: ImageRecord
        do { r = try JSONDecoder.iso.decode(ImageRecord.self, from: data) } catch {
            throw NodeError.protocolViolation("the catalog at \(source) sent an unreadable record for \(digest): \(error)")
        }
        // The record's digest is a hash of its artefacts and command line: check it, as for blobs.
        guard r.digest == digest, ImageRecord.manifestDigest(r.artefacts, cmdline: r.cmdline) == digest else {
            throw NodeError.corrupt("the catalog at \(source) sent a record that does not match \(digest)")
        }
        try Files.writeAtomically(data, to: path)
        return r
    }

    func fetchBlob(_ digest: String, size: Int64) throws {
        let staged = "\(root)/tmp/fetch-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        defer { unlink(staged) }
        try BlobWire.fetch(.get(digest: digest), from: source, timeout: timeout, into: staged, expect: size)
        let (got, _) = try blobs.ingest(staged, move: true)
        guard got == digest else {
            blobs.remove(got)
            throw NodeError.corrupt("blob \(digest) from \(source) arrived corrupted (its bytes hash to \(got)); nothing was cached")
        }
    }
}
