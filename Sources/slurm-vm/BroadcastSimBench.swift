// `slurm-vm bench broadcast-sim`: the broadcast's completion time past what one machine can hold, from
// real TransferMachines on the simulated network (BroadcastSimulator), next to the bound
// size/rate + ⌈log2 N⌉ chunk/rate. With --calibrate, the simulator's error against the namespace
// testbed's measured times (Benchmarks/broadcast.py --json-out).

import ArgumentParser
import Broadcast
import BroadcastSimulator
import Foundation
import Sizes

struct BroadcastSimBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "broadcast-sim",
        abstract: "Simulated image broadcast to up to thousands of nodes (the TransferMachine on a simulated network).",
        discussion: """
            Every rank runs the real TransferMachine; the network is fluid at the level of TCP connections (see
            Sources/BroadcastSimulator). Faults: 'slow' puts rank 8 of every 64 (8, 72, …) at a quarter of the rate,
            'fail' kills rank N/2+1 at half of size/rate; the others' time is reported without them.
            """)

    @Option(help: "Node counts, comma-separated.") var nodes = "16,32,64,128,256,512,1024"
    @Option(help: "Image sizes, comma-separated (256M, 2G).") var sizes = "256M"
    @Option(help: "Chunk size, or auto: what a transfer of each size uses (Manifest.chunkSize(forBytes:)).") var chunk = "auto"
    @Option(help: "Link rate per port and direction, Mbit/s.") var mbit = 200.0
    @Option(help: "Port queues, comma-separated, of prio, bfifo, tbf.") var queues = "prio"
    @Option(help: "Schedules, comma-separated: auto (the default's choice for each cell), relay, twotree, pipeline, binomial, central.")
    var schedules = "auto"
    @Option(help: "Fault cases, comma-separated, of none, slow, fail, both.") var faults = "none"
    @Option(
        help: "Measured rows to compare with (JSON files Benchmarks/broadcast.py writes with --json-out), comma-separated; runs only their cells.")
    var calibrate: String?
    @Flag(help: "One JSON object per line instead of the table.") var json = false
    @Option(help: "Override the model: bytes a socket accepts ahead of the wire (calibration).") var sendBuffer: Double?
    @Option(help: "Override the model: seconds a small message waits in a busy drop-tail port (calibration).") var busyDelay: Double?
    @Option(help: "Override the model: share of a drop-tail port competing flows keep (calibration).") var sharedEfficiency: Double?
    @Option(help: "Override the model: seconds from the common start until a rank can first ask (calibration).") var startup: Double?

    func link(_ q: LinkModel.Queue) -> LinkModel {
        var l = LinkModel(bitsPerSecond: mbit * 1e6, queue: q)
        if let sendBuffer { l.sendBuffer = sendBuffer }
        if let busyDelay { l.busyPortDelay = busyDelay }
        if let sharedEfficiency { l.sharedEfficiency = sharedEfficiency }
        if let startup { l.startup = startup }
        return l
    }

    func run() throws {
        // nil: auto, per cell (and 1 MiB for calibration rows that do not say theirs).
        let named: Int? = chunk == "auto" ? nil : try? Int(ByteSize.parse(chunk, bare: .bytes))
        guard let chunkBytes = chunk == "auto" ? Manifest.defaultChunkSize : named, chunkBytes > 0 else {
            throw ValidationError("--chunk '\(chunk)' is not a size like 1M")
        }
        if let files = calibrate { return try compare(files.split(separator: ",").map(String.init), chunkBytes: chunkBytes) }
        let ns = try list(nodes, "--nodes") { Int($0).flatMap { $0 >= 2 ? $0 : nil } }
        let bytes = try list(sizes, "--sizes") { (try? ByteSize.parse($0, bare: .mebibytes)).map { Int($0) } }
        let qs = try list(queues, "--queues") { LinkModel.Queue(rawValue: $0) }
        // nil: auto, resolved for each cell as a transfer resolves it (ScheduleKind.chosen).
        let ks: [ScheduleKind?] = try list(schedules, "--schedules") { $0 == "auto" ? .some(nil) : ScheduleKind(rawValue: $0).map { .some($0) } }
        let fs = try list(faults, "--faults") { ["none", "slow", "fail", "both"].contains($0) ? $0 : nil }
        if !json {
            print(
                "simulated broadcast: \(Int(mbit)) Mbit/s per port and direction, chunks \(chunk == "auto" ? "auto (256 KiB up to 256 MiB, 1 MiB from 1 GiB)" : chunk); times in seconds, ratios to size/rate"
            )
            print(
                "| queue | schedule | faults | nodes | size | time | × size/rate | bound | × bound | median rank | root sent | duplicates | events | wall |"
            )
            print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        }
        // Every combination, in the table's order: queue, schedule, faults, size, then N.
        let cells = qs.flatMap { q in ks.flatMap { k in fs.flatMap { f in bytes.flatMap { size in ns.map { (q, k, f, size, $0) } } } } }
        for (q, kindNamed, f, size, n) in cells {
            let cb = named ?? Manifest.chunkSize(forBytes: Int64(size))
            let k = kindNamed ?? .chosen(ranks: n, chunks: (size + cb - 1) / cb)
            var s = Scenario(kind: k, ranks: n, imageBytes: size, chunkBytes: cb, link: link(q))
            var excluded = Set<Int>()
            if f == "slow" || f == "both" {
                for r in stride(from: 8, to: n, by: 64) { s.slow[r] = 0.25; excluded.insert(r) }
            }
            if f == "fail" || f == "both" {
                s.failure = .init(rank: n / 2 + 1, at: s.sizeOverRate / 2)
                excluded.insert(n / 2 + 1)
            }
            let t0 = Date()
            let out = Simulation.run(s)
            report(s, auto: kindNamed == nil, fault: f, time: out.lastDone(excluding: excluded), outcome: out, wall: Date().timeIntervalSince(t0))
        }
    }

    func report(_ s: Scenario, auto: Bool, fault: String, time: Double?, outcome: Outcome, wall: Double) {
        let events = outcome.events
        let done = outcome.doneAt.compactMap { $0 }.sorted()
        let median = done.isEmpty ? 0 : done[done.count / 2]
        let size = s.imageBytes >= 1 << 30 ? "\(s.imageBytes >> 30) GiB" : "\(s.imageBytes >> 20) MiB"
        if json {
            var o: [String: Any] = [
                "queue": s.link.queue.rawValue, "schedule": s.kind.rawValue, "auto": auto, "faults": fault, "nodes": s.ranks,
                "bytes": s.imageBytes, "bound": s.bound, "size_over_rate": s.sizeOverRate, "events": events, "wall": wall,
                "median": median, "duplicates": outcome.duplicates, "root_sent": outcome.stats[0].sent,
            ]
            if let time { o["time"] = time }
            let data = try! JSONSerialization.data(withJSONObject: o, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        let t = time.map { String(format: "%.2f", $0) } ?? "not done"
        let r = time.map { String(format: "%.3f×", $0 / s.sizeOverRate) } ?? "–"
        let b = time.map { String(format: "%.3f×", $0 / s.bound) } ?? "–"
        print(
            "| \(s.link.queue.rawValue) | \(auto ? "auto: " : "")\(s.kind.rawValue) | \(fault) | \(s.ranks) | \(size) | \(t) | \(r) | \(String(format: "%.2f", s.bound)) | \(b) | \(String(format: "%.2f", median)) | \(outcome.stats[0].sent) | \(outcome.duplicates) | \(events) | \(String(format: "%.1f s", wall)) |"
        )
    }

    /// Runs the cells of a benchmark JSON that the model is calibrated for (the pipeline and the two trees
    /// under cubic, no slow node) and prints the simulated time next to the measured median, with the error.
    /// The model has no congestion control of its own: BBR rows are left out. A row's own chunk size
    /// (rows record it since 2026-12-06) wins over `--chunk`.
    func compare(_ files: [String], chunkBytes: Int) throws {
        var rows: [[String: Any]] = []
        for file in files {
            guard let data = FileManager.default.contents(atPath: file),
                let list = try? JSONSerialization.jsonObject(with: data) as? [[String: Any]]
            else { throw ValidationError("\(file): not the JSON list Benchmarks/broadcast.py --json-out writes") }
            rows += list
        }
        struct Cell: Hashable { var queue: String, congestion: String, kind: String, nodes: Int, mib: Int, chunk: Int }
        var measured: [Cell: [Double]] = [:]
        var order: [Cell] = []
        for row in rows where row["slow_node"] == nil {
            // An auto row ran the schedule its ranks chose ("schedule"); the chain is the benchmark's own.
            guard let kind = row["schedule"] as? String ?? row["kind"] as? String, ScheduleKind(rawValue: kind)?.pulls == true,
                row["congestion"] as? String ?? "cubic" == "cubic", let n = row["nodes"] as? Int,
                let mib = row["mib"] as? Int, let secs = row["seconds"] as? Double, secs.isFinite
            else { continue }
            let chunk = (row["chunk"] as? String).flatMap { try? Int(ByteSize.parse($0, bare: .bytes)) } ?? chunkBytes
            let cell = Cell(
                queue: row["queue"] as? String ?? "prio", congestion: row["congestion"] as? String ?? "", kind: kind, nodes: n, mib: mib, chunk: chunk
            )
            if measured[cell] == nil { order.append(cell) }
            measured[cell, default: []].append(secs)
        }
        print("simulator against the namespace testbed (\(files.joined(separator: ", "))): measured median of the runs, \(Int(mbit)) Mbit/s")
        print("| queue | TCP | schedule | nodes | size | chunk | runs | measured | simulated | error |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        var worst = 0.0
        for cell in order {
            guard let q = LinkModel.Queue(rawValue: cell.queue), let kind = ScheduleKind(rawValue: cell.kind) else { continue }
            let times = measured[cell]!.sorted()
            // As the benchmark takes it: the middle run, or the mean of the middle two.
            let median = (times[(times.count - 1) / 2] + times[times.count / 2]) / 2
            let s = Scenario(kind: kind, ranks: cell.nodes, imageBytes: cell.mib << 20, chunkBytes: cell.chunk, link: link(q))
            let simulated = Simulation.run(s).lastDone()
            let error = simulated.map { ($0 - median) / median }
            worst = max(worst, abs(error ?? .infinity))
            print(
                "| \(cell.queue) | \(cell.congestion) | \(cell.kind) | \(cell.nodes) | \(cell.mib) MiB | \(cell.chunk >> 10) KiB | \(times.count) | "
                    + "\(String(format: "%.2f s", median)) | \(simulated.map { String(format: "%.2f s", $0) } ?? "not done") | "
                    + "\(error.map { String(format: "%+.1f%%", $0 * 100) } ?? "–") |")
        }
        print(String(format: "worst error: %.1f%%", worst * 100))
    }

    func list<T>(_ s: String, _ name: String, _ parse: (String) -> T?) throws -> [T] {
        try s.split(separator: ",").map { part in
            let p = part.trimmingCharacters(in: .whitespaces)
            guard let v = parse(p) else { throw ValidationError("\(name): '\(p)' is not one of the values it takes (see --help)") }
            return v
        }
    }
}
