// The Unix-socket API of slurm-vmd: each connection sends one request line {"op": …}; most get one
// reply line {"ok": true, …} or {"ok": false, "error": "…"}. `exec` streams: after {"ok": true,
// "guest": …} the client may send {"signal": N} lines, and the daemon ends with {"exit": code,
// "signal": N|null}.
//
// Who may do what (peer uid from SO_PEERCRED):
//   match, jobs, ping        anyone (match sees the caller's uid for image Requirements)
//   prepare, teardown        root or the configured SlurmUser
//   exec                     the job's owner (or root)

import Broadcast
import Catalog
import ClassAd
import Foundation
import NIOPosix
import Logging
import Node
import Runner
#if canImport(Glibc)
import Glibc
#endif

public final class API: @unchecked Sendable {
    let config: DaemonConfig
    let catalog: Catalog?
    /// Plans broadcasts of the catalog's blobs (catalog role); rank 0 of each runs on its own loop.
    let coordinator: Coordinator?
    public let node: NodeManager?
    let logger: Logger
    let slurmUID: UInt32?

    public init(config: DaemonConfig, logger: Logger) throws {
        self.config = config
        self.logger = logger
        catalog = try config.catalog.map { try Catalog(root: $0.path) }
        let log = logger
        let c = catalog
        coordinator = c.map { cat in
            Coordinator(group: MultiThreadedEventLoopGroup(numberOfThreads: 1),
                        source: { d in let p = cat.blobs.path(of: d); return FileManager.default.fileExists(atPath: p) ? p : nil },
                        log: { log.info("\($0)") })
        }
        node = try config.node.map { try NodeManager($0, log: { log.info("\($0)") }) }
        slurmUID = config.slurmUser.flatMap { getpwnam($0).map { $0.pointee.pw_uid } }
        if let n = node { logger.info("node role: \(n.config.name), accelerator \(n.acceleratorReport)") }
    }

    func privileged(_ p: Peer) -> Bool { p.uid == 0 || p.uid == slurmUID }

    /// Serves one connection to its end.
    public func serve(_ c: LineConnection) {
        do {
            let peer = try c.peer()
            guard let msg = try c.readMessage() else { return }
            let op = msg["op"] as? String ?? ""
            switch op {
            case "ping": try c.send(["ok": true, "roles": roles])
            case "match": try c.send(match(msg, peer))
            case "prepare": try c.send(prepare(msg, peer))
            case "teardown": try c.send(teardown(msg, peer))
            case "jobs": try c.send(jobs(peer))
            case "exec": try exec(msg, peer, c)
            default: try c.send(Self.failure("unknown operation '\(op)' (known: ping, match, prepare, teardown, jobs, exec)"))
            }
        } catch {
            logger.warning("connection: \(error)")
            try? c.send(Self.failure("\(error)"))
        }
    }

    var roles: [String] { (catalog != nil ? ["catalog"] : []) + (node != nil ? ["node"] : []) }

    static func failure(_ e: String) -> [String: Any] { ["ok": false, "error": e] }

    // MARK: catalog role

    func match(_ m: [String: Any], _ peer: Peer) throws -> [String: Any] {
        guard let catalog else { return Self.failure("this slurm-vmd has no catalog role; point the plugin's submit_socket at one that has") }
        guard let raw = m["options"] as? [String: Any] else { return Self.failure("match needs \"options\"") }
        var opts: [String: String] = [:]
        for (k, v) in raw {
            guard let s = v as? String else { return Self.failure("option --vm-\(k) must be a string") }
            opts[k] = s
        }
        let req: VMRequest
        do { req = try VMRequest.fromOptions(opts) } catch { return Self.failure("\(error)") }
        if let maxCPUs = m["node_cpus_max"] as? Int, maxCPUs > 0, let v = req.vcpus, v > maxCPUs {
            return Self.failure("--vm-vcpus: \(v) vCPUs per guest is more than the largest node has (\(maxCPUs) CPUs); each vCPU needs a core of its own")
        }
        let name = getpwuid(peer.uid).map { String(cString: $0.pointee.pw_name) } ?? String(peer.uid)
        let who = Requester(user: name, uid: Int(peer.uid), gid: Int(peer.gid), account: m["account"] as? String, partition: m["partition"] as? String)
        // An image asked for by name that the catalog does not hold: say so directly, with what exists.
        if let name = req.image, let ref = try? ImageReference(name) {
            do { _ = try catalog.resolve(ref) } catch let e as CatalogError {
                if case .noSuchImage = e { return Self.failure("--vm-image: \(e)") }
            }
        }
        let result = try catalog.match(req, for: who, explain: false)
        guard let best = result.best else {
            let why = (try? catalog.match(req, for: who, explain: true).explanation) ?? result.explanation ?? ""
            return Self.failure("no guest image matches this request\n" + (why.isEmpty ? "" : why))
        }
        let accepted = AcceptedRequest(request: req, image: best.digest, imageLabel: best.label)
        let json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(accepted))
        logger.info("match for \(name) (uid \(peer.uid)): \(best.label)")
        return ["ok": true, "image": best.label, "digest": best.digest, "request": json]
    }

    // MARK: node role

    func requireNode(_ peer: Peer, privileged need: Bool) throws -> NodeManager {
        guard let node else { throw WireError("this slurm-vmd has no node role") }
        if need && !privileged(peer) {
            throw WireError("only root or SlurmUser may do this (you are uid \(peer.uid))")
        }
        return node
    }

    func prepare(_ m: [String: Any], _ peer: Peer) throws -> [String: Any] {
        let node = try requireNode(peer, privileged: true)
        let r: PrepareRequest
        do {
            r = try JSONDecoder().decode(PrepareRequest.self, from: JSONSerialization.data(withJSONObject: m["prepare"] ?? [:]))
        } catch { return Self.failure("prepare: malformed request: \(error)") }
        let s = node.prepare(r)
        var o: [String: Any] = ["ok": s.phase == .ready, "phase": s.phase.rawValue, "guests": s.guests]
        if let e = s.error { o["error"] = e }
        if let t = s.prepareSeconds { o["seconds"] = t }
        return o
    }

    func teardown(_ m: [String: Any], _ peer: Peer) throws -> [String: Any] {
        let node = try requireNode(peer, privileged: true)
        guard let job = (m["job"] as? Int).map(UInt32.init) else { return Self.failure("teardown needs \"job\"") }
        return ["ok": true, "destroyed": node.teardown(job: job)]
    }

    func jobs(_ peer: Peer) throws -> [String: Any] {
        let node = try requireNode(peer, privileged: false)
        let list = node.jobs().filter { privileged(peer) || $0.uid == peer.uid }
        let e = JSONEncoder()
        e.dateEncodingStrategy = .iso8601
        return ["ok": true, "jobs": try JSONSerialization.jsonObject(with: e.encode(list))]
    }

    /// Runs one task in a guest of its job. The client attached its stdin, stdout and stderr.
    func exec(_ m: [String: Any], _ peer: Peer, _ c: LineConnection) throws {
        let node = try requireNode(peer, privileged: false)
        let fds = c.takeFDs()
        var owned = fds                      // closed on the way out; stdin passes to the task once it runs
        defer { for f in owned { close(f) } }
        guard fds.count == 3 else { try c.send(Self.failure("exec needs stdin, stdout and stderr attached (got \(fds.count) descriptors)")); return }
        guard let job = (m["job"] as? Int).map(UInt32.init), let argv = m["argv"] as? [String], !argv.isEmpty else {
            try c.send(Self.failure("exec needs \"job\" and a non-empty \"argv\"")); return
        }
        let env = m["env"] as? [String] ?? []
        let cwd = m["cwd"] as? String ?? "/"
        let local = m["localid"] as? Int ?? 0
        let out = fds[1], err = fds[2]
        let req = ExecRequest(argv: argv, env: env, cwd: cwd)
        let started: (command: AgentConnection.Command, guest: String)
        do {
            started = try node.startTask(job: job, caller: peer.uid, localID: local, exec: req, stdin: fds[0],
                                         stdout: { Self.writeAll(out, $0) }, stderr: { Self.writeAll(err, $0) })
        } catch {
            try c.send(Self.failure("\(error)")); return
        }
        owned.removeAll { $0 == fds[0] }
        try c.send(["ok": true, "guest": started.guest])
        // Signals from the client; the end of its stream (the task was killed) kills the command.
        let cmd = started.command
        let reader = Thread {
            while let msg = try? c.readMessage() {
                if let s = msg["signal"] as? Int { cmd.signal(Int32(s)) }
            }
            cmd.signal(SIGKILL)
        }
        reader.start()
        do {
            let (status, errors) = try cmd.wait()
            for e in errors { Self.writeAll(err, Array("slurm-vm: \(e)\n".utf8)) }
            try? c.send(["exit": status.exitCode.map { Int($0) } as Any? ?? NSNull(), "signal": status.signal.map { Int($0) } as Any? ?? NSNull()])
        } catch {
            try? c.send(["exit": 255, "signal": NSNull(), "error": "\(error)"])
        }
    }

    static func writeAll(_ fd: Int32, _ b: [UInt8]) {
        b.withUnsafeBytes { p in
            var off = 0
            while off < p.count {
                let n = write(fd, p.baseAddress! + off, p.count - off)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }   // the reader went away: the output has nowhere to go
                off += n
            }
        }
    }

    // MARK: blob service (catalog role)

    /// Answers one blob-service connection (see Node/ImageCache.swift for the protocol).
    /// "BROADCAST <digest> <job> <job-nodes> <node> <host:port>|HAVE": joins (or, holding the blob,
    /// counts towards) the job's broadcast; answers with the plan once the group is complete.
    func joinBroadcast(_ line: String, _ fd: Int32) {
        let f = line.split(separator: " ").map(String.init)
        guard f.count == 6, f[1].hasPrefix("sha256:"), f[1].count == 71, let nodes = Int(f[3]), let host = BlobWire.localAddress(fd) else {
            _ = BlobWire.writeAll(fd, "ERR expected BROADCAST sha256:<64 hex digits> JOB JOB-NODES NODE HOST:PORT|HAVE\n"); return
        }
        do {
            guard let coordinator else { throw BroadcastError("this slurm-vmd has no catalog role") }
            if let a = try coordinator.join(digest: f[1], job: f[2], jobNodes: nodes, node: f[4], address: f[5] == "HAVE" ? nil : f[5], host: host) {
                _ = BlobWire.writeAll(fd, "PLAN \(a.transfer) \(a.rank) \(a.chunkSize) \(a.addresses.joined(separator: ","))\n")
            } else {
                _ = BlobWire.writeAll(fd, "HELD\n")
            }
        } catch {
            _ = BlobWire.writeAll(fd, "ERR \(error)\n")
        }
    }

    public func serveBlobs(_ fd: Int32) {
        defer { close(fd) }
        BlobWire.setTimeouts(fd, 60)
        guard let catalog, let line = BlobWire.readLine(fd) else { return }
        if line.hasPrefix("BROADCAST ") { return joinBroadcast(line, fd) }
        // "RECORD <digest> [NAME:VERSION]": images may share a digest (same artefacts and command line,
        // different names or admin attributes), so the label says which record is meant.
        let parts = line.split(separator: " ").map(String.init)
        guard parts.count >= 2, parts.count <= 3, parts[1].hasPrefix("sha256:"), parts[1].count == 71,
              parts[1].dropFirst(7).allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else {
            _ = BlobWire.writeAll(fd, "ERR expected GET|RECORD sha256:<64 hex digits> [NAME:VERSION]\n"); return
        }
        let digest = parts[1]
        switch parts[0] {
        case "RECORD":
            let byLabel = parts.count == 3 ? (try? ImageReference(parts[2])).flatMap { try? catalog.resolve($0) } : nil
            let rec = byLabel?.digest == digest ? byLabel : (try? catalog.list())?.first { $0.digest == digest }
            guard let rec, let data = try? JSONEncoder.iso.encode(rec) else {
                _ = BlobWire.writeAll(fd, "ERR no image \(digest) in the catalog\n"); return
            }
            guard BlobWire.writeAll(fd, "OK \(data.count)\n") else { return }
            _ = data.withUnsafeBytes { BlobWire.writeAll(fd, $0) }
        case "GET":
            let path = catalog.blobs.path(of: digest)
            let f = open(path, O_RDONLY | O_CLOEXEC)
            guard f >= 0 else { _ = BlobWire.writeAll(fd, "ERR no blob \(digest) in the catalog\n"); return }
            defer { close(f) }
            var st = stat()
            fstat(f, &st)
            guard BlobWire.writeAll(fd, "OK \(st.st_size)\n") else { return }
            var off: off_t = 0
            while off < st.st_size {
                let n = sendfile(fd, f, &off, Int(st.st_size - off))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }
            }
        default:
            _ = BlobWire.writeAll(fd, "ERR unknown request \(parts[0])\n")
        }
    }
}
