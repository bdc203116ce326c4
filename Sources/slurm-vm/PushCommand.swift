// `slurm-vm image push NAME --nodes LIST`: sends an image to nodes' caches ahead of the jobs that will
// use it, by the same broadcast a job's prologs start (see Sources/Daemon/Push/Push.swift), with a
// progress bar over all nodes.

import ArgumentParser
import Catalog
import Daemon
import Foundation
#if canImport(Glibc)
import Glibc
#endif

extension ImageCommand {
    struct Push: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Send an image to nodes' caches now, in one broadcast, with a progress bar.",
            discussion:
                "Each node's slurm-vmd must have node.listen set; the order is signed with MUNGE, so run this as root or SlurmUser on a host of the cluster."
        )
        @OptionGroup var catalog: CatalogOption
        @Argument(help: "NAME, NAME:VERSION, NAME:TAG or sha256:DIGEST.") var image: String
        @Option(help: ArgumentHelp("The nodes: HOST[:PORT],… or a Slurm host list such as node[1-8].", valueName: "list")) var nodes: String
        @Option(help: "The push listener's port where a node gives none (node.listen).") var port: Int = 7421
        @Option(help: "Seconds to wait for any word from a node.") var timeout: Double = 120
        @Flag(help: "Print the outcome per node as JSON.") var json = false

        func run() throws {
            try reporting {
                let rec = try catalog.open().resolve(try ImageReference(image))
                let targets = try Self.expand(nodes, port: port)
                let transfer = "push-" + String(format: "%016llx", UInt64.random(in: 0...UInt64.max))
                let state = PushState(targets.count, total: rec.totalSize)
                let bar = PushBar(label: rec.label, state: state)
                bar.start()
                let group = DispatchGroup()
                for (i, t) in targets.enumerated() {
                    group.enter()
                    let order = PushOrder(digest: rec.digest, label: rec.label, transfer: transfer, nodes: targets.count, to: t)
                    let timeout = timeout
                    Thread {
                        defer { group.leave() }
                        do {
                            try PushClient.push(order, to: t, timeout: timeout) { e in
                                switch e {
                                case .progress(let a, let b):
                                    state.update(i) {
                                        $0.bytes = a; $0.total = b
                                    }
                                case .done(let o):
                                    state.update(i) {
                                        $0.outcome = o; $0.bytes = $0.total
                                    }
                                }
                            }
                        } catch {
                            state.update(i) { $0.error = "\(error)" }
                        }
                    }.start()
                }
                group.wait()
                bar.stop()
                let nodes = state.snapshot()
                if json {
                    print(
                        jsonString([
                            "image": rec.label, "digest": rec.digest, "transfer": transfer,
                            "nodes": zip(targets, nodes).map { t, n -> [String: Any] in
                                var o: [String: Any] = ["node": t, "ok": n.error == nil]
                                if let e = n.error { o["error"] = e }
                                if let r = n.outcome { o["held"] = r.held; o["seconds"] = r.seconds }
                                return o
                            },
                        ]))
                } else {
                    for (t, n) in zip(targets, nodes) {
                        if let e = n.error {
                            print("\(t): FAILED: \(e)")
                        } else if let o = n.outcome {
                            print("\(t): \(o.held ? "already held" : "received") (\(String(format: "%.1f", o.seconds)) s)")
                        }
                    }
                }
                let failed = nodes.filter { $0.error != nil }.count
                if failed > 0 {
                    warn("error: \(failed) of \(targets.count) node(s) did not get \(rec.label)")
                    throw ExitCode(1)
                }
            }
        }

        /// HOST[:PORT] items; a Slurm host list (with brackets) is expanded by scontrol.
        static func expand(_ list: String, port: Int) throws -> [String] {
            guard (1...65535).contains(port) else { throw ValidationError("--port must be 1 to 65535") }
            var names: [String] = []
            if list.contains("[") {
                let p = Process()
                p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
                p.arguments = ["scontrol", "show", "hostnames", list]
                let o = Pipe()
                p.standardOutput = o
                p.standardError = FileHandle.nullDevice
                do { try p.run() } catch {
                    throw ValidationError("--nodes '\(list)' is a Slurm host list, and scontrol could not be started to expand it")
                }
                let out = o.fileHandleForReading.readDataToEndOfFile()
                p.waitUntilExit()
                guard p.terminationStatus == 0 else { throw ValidationError("--nodes: scontrol cannot expand the host list '\(list)'") }
                names = String(decoding: out, as: UTF8.self).split(whereSeparator: \.isNewline).map(String.init)
            } else {
                names = list.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            }
            var out: [String] = []
            for n in names {
                let parts = n.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
                guard parts.count <= 2, let host = parts.first, !host.isEmpty, host.count <= 255,
                    host.allSatisfy({ $0.isLetter || $0.isNumber || ".-_".contains($0) })
                else {
                    throw ValidationError("--nodes: '\(n)' is not HOST or HOST:PORT")
                }
                var p = port
                if parts.count == 2 {
                    guard let v = Int(parts[1]), (1...65535).contains(v) else { throw ValidationError("--nodes: '\(n)' has no valid port after ':'") }
                    p = v
                }
                out.append("\(host):\(p)")
            }
            guard !out.isEmpty else { throw ValidationError("--nodes names no node") }
            guard Set(out).count == out.count else { throw ValidationError("--nodes names a node twice") }
            return out
        }
    }
}

/// What each node has reported.
final class PushState: @unchecked Sendable {
    struct Node {
        var bytes: Int64 = 0
        var total: Int64
        var outcome: PushOutcome?
        var error: String?
    }
    private let lock = NSLock()
    private var nodes: [Node]
    init(_ n: Int, total: Int64) { nodes = Array(repeating: Node(total: total), count: n) }
    func update(_ i: Int, _ f: (inout Node) -> Void) { lock.withLock { f(&nodes[i]) } }
    func snapshot() -> [Node] { lock.withLock { nodes } }
}

/// One bar over all nodes' bytes, redrawn on a terminal; a line every few seconds otherwise.
final class PushBar: @unchecked Sendable {
    let label: String
    let state: PushState
    let tty = isatty(2) == 1
    let began = Date()
    private let lock = NSLock()
    private var running = true
    private let ended = DispatchSemaphore(value: 0)

    init(label: String, state: PushState) { self.label = label; self.state = state }

    func line() -> String {
        let s = state.snapshot()
        let done = s.reduce(Int64(0)) { $0 + min($1.bytes, $1.total) }, total = s.reduce(Int64(0)) { $0 + $1.total }
        let finished = s.filter { $0.outcome != nil || $0.error != nil }.count
        let width = 30
        let filled = total > 0 ? Int(Int64(width) * done / total) : width
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        let pct = total > 0 ? Int(100 * done / total) : 100
        let failed = s.filter { $0.error != nil }.count
        return String(
            format: "[%5.1fs] push %@ [%@] %3d%% %@ of %@, %d/%d nodes done%@", Date().timeIntervalSince(began), label, bar, pct,
            humanBytes(done), humanBytes(total), finished, s.count, failed > 0 ? ", \(failed) failed" : "")
    }

    func start() {
        let t = Thread { [self] in
            defer { ended.signal() }
            var last = Date.distantPast
            while lock.withLock({ running }) {
                if tty {
                    FileHandle.standardError.write(Data("\r\u{1b}[2K\(line())".utf8))
                } else if Date().timeIntervalSince(last) >= 5 {
                    FileHandle.standardError.write(Data("\(line())\n".utf8)); last = Date()
                }
                usleep(200_000)
            }
        }
        t.start()
    }

    func stop() {
        lock.withLock { running = false }
        ended.wait()
        FileHandle.standardError.write(Data("\(tty ? "\r\u{1b}[2K" : "")\(line())\n".utf8))
    }
}
