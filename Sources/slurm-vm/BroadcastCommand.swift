// `slurm-vm broadcast`: one rank of a transfer, started at once on every node of a testbed (rank 0
// holds the file). Exits 0 once this rank's copy is verified and its neighbors are served; the same
// engine slurm-vmd uses, so measurements with it are measurements of the product.

import ArgumentParser
import Broadcast
import Foundation
import NIOPosix
import Sizes
#if canImport(Glibc)
import Glibc
#endif

struct BroadcastCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "broadcast",
        abstract: "Be one rank of a file broadcast (start it on every node at once; rank 0 holds the file).",
        discussion: """
            Example, on three hosts:
              a$ slurm-vm broadcast --rank 0 --nodes a,b,c --port 17500 --src img.bin
              b$ slurm-vm broadcast --rank 1 --nodes a,b,c --port 17500 --dst /scratch/img.bin
              c$ slurm-vm broadcast --rank 2 --nodes a,b,c --port 17500 --dst /scratch/img.bin
            """)

    @Option(help: "This node's position in --nodes (0 holds the file).") var rank: Int
    @Option(help: ArgumentHelp("Every node's address, rank 0 first: HOST or HOST:PORT, comma-separated.", valueName: "list")) var nodes: String
    @Option(help: "The port for addresses given without one.") var port: Int = 17500
    @Option(help: "Rank 0: the file to send.") var src: String?
    @Option(
        help:
            "Rank 0: keep the file's manifest (chunk hashes) here and reuse it while the file is unchanged, rather than hash the file at every start."
    ) var manifest: String?
    @Option(help: "Other ranks: where the verified copy goes (appears only once verified).") var dst: String?
    @Option(help: "The SHA-256 the file must have (sha256:HEX); a transfer of anything else is refused.") var digest: String?
    @Option(
        help: ArgumentHelp(
            "Chunk size (64K…16M, a multiple of 64 bytes; K and M suffixes), or auto: 1M, halved down to 256K until the file has 256 chunks.",
            valueName: "size")) var chunkSize: String = "auto"
    @Option(
        help: ArgumentHelp(
            "auto (the relay for few nodes and many chunks, the two trees otherwise: docs/broadcast.md), relay (a pipelined chain), twotree (two half-rate trees), pipeline (binomial pipeline), binomial (store-and-forward tree) or central.",
            valueName: "kind")) var schedule: String = "auto"
    @Option(help: "Seconds without progress before giving up.") var timeout: Double = 60
    @Option(help: "Seconds to keep dialing neighbors that are not up yet.") var dialTimeout: Double = 30
    @Flag(help: "Print the result as one JSON line (for harnesses).") var json = false
    @Option(
        help: ArgumentHelp(
            "Begin at this wall-clock time (seconds since 1970), so ranks launched one by one start together; times are counted from it.",
            valueName: "unix-time")) var startAt: Double?
    @Option(help: .hidden) var corrupt: String?

    func run() throws {
        try reporting {
            let kind = ScheduleKind(rawValue: schedule)
            guard kind != nil || schedule == "auto" else {
                throw ValidationError(
                    "--schedule must be auto or one of \(ScheduleKind.allCases.map(\.rawValue).joined(separator: ", ")), not '\(schedule)'")
            }
            let cs: Int
            if chunkSize == "auto" {
                // The root picks by the file's size; the others learn it from the manifest.
                let bytes = (try? FileManager.default.attributesOfItem(atPath: src ?? "")[.size] as? NSNumber)?.int64Value
                cs = rank == 0 && bytes != nil ? Manifest.chunkSize(forBytes: bytes!) : Manifest.defaultChunkSize
            } else {
                guard let c = Self.size(chunkSize) else {
                    throw ValidationError("--chunk-size '\(chunkSize)' is not a size like 1M or 512K, or auto")
                }
                cs = c
            }
            let addrs = nodes.split(separator: ",").map { a -> String in
                let s = String(a).trimmingCharacters(in: .whitespaces)
                return s.contains(":") ? s : "\(s):\(port)"  // IPv6 with a port: [ADDR]:PORT
            }
            guard addrs.count >= 1, rank >= 0, rank < addrs.count else {
                throw ValidationError("--rank \(rank) is not a position in the \(addrs.count) nodes of --nodes")
            }
            if rank == 0 && src == nil { throw ValidationError("rank 0 holds the file: give --src") }
            if rank != 0 && dst == nil { throw ValidationError("rank \(rank) receives the file: give --dst") }
            var c = ParticipantConfig(rank: rank, addresses: addrs)
            c.kind = kind
            c.chunkSize = cs
            c.source = rank == 0 ? src : nil
            c.destination = rank == 0 ? nil : dst
            c.digest = digest
            if rank == 0, let store = manifest, let src { c.manifest = try Manifest.reusing(store, for: src, chunkSize: cs) }
            c.giveUpSeconds = timeout
            c.dialSeconds = dialTimeout
            c.corrupt = Set((corrupt ?? "").split(separator: ",").compactMap { Int($0) })
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            defer { try? group.syncShutdownGracefully() }
            if let t = startAt {
                let wait = t - Date().timeIntervalSince1970
                if wait > 0 { usleep(useconds_t(min(wait, 3600) * 1e6)) }
            }
            let began = Date()
            let report = try Participant(c, group: group).start().wait()
            let s = report.stats
            if json {
                let line: [String: Any] = [
                    "rank": rank, "seconds": report.seconds, "verified_unix": began.timeIntervalSince1970 + report.seconds,
                    "received": s.received, "duplicates": s.duplicates, "corrupted": s.corrupted, "repairs": s.repairs, "sent": s.sent,
                    "served": s.served, "replanned_slow": s.replannedSlow ?? -1, "schedule": report.kind.rawValue, "chunk_size": report.chunkSize,
                    "sent_from_memory": report.sentFromMemory, "uncached": report.bypassedPageCache,
                ]
                print(String(data: try JSONSerialization.data(withJSONObject: line, options: [.sortedKeys]), encoding: .utf8)!)
            } else if rank != 0 {
                print(
                    String(
                        format: "rank %d: verified in %.3f s (%d chunks received, %d repaired, %d duplicates, %d corrupted and fetched again)",
                        rank, report.seconds, s.received, s.repairs, s.duplicates, s.corrupted))
            } else {
                print("rank 0: served \(s.sent) chunks")
            }
        }
    }

    static func size(_ s: String) -> Int? {
        guard let n = try? ByteSize.parse(s, bare: .bytes), n > 0, n <= Int64(Int32.max) else { return nil }
        return Int(n)
    }
}
