// The Unix-socket API of slurm-vmd (the messages are in Wire/Messages.swift): each connection sends
// one Call line {"op": …} and gets one Reply line {"ok": true, …} or {"ok": false, "error": "…"}.
// `exec` streams: after {"ok": true, "guest": …} the client may send ExecControl lines {"signal": N}
// or {"resize": {"rows": R, "columns": C}} (its terminal's new size),
// and the daemon ends with ExecEnd {"exit": code|null, "signal": N|null}.
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
import Telemetry
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
            Coordinator(
                group: MultiThreadedEventLoopGroup(numberOfThreads: 1),
                source: { d in
                    let p = cat.blobs.path(of: d); return FileManager.default.fileExists(atPath: p) ? p : nil
                },
                log: { log.info("\($0)") })
        }
        node = try config.node.map { try NodeManager($0, log: { log.info("\($0)") }) }
        slurmUID = config.slurmUser.flatMap { getpwnam($0).map { $0.pointee.pw_uid } }
        if let n = node {
            logger.info("node role: \(n.config.name), accelerator \(n.acceleratorReport)")
            logger.info(
                "\(n.cgroupReport.map { "job cgroups: none (\($0))" } ?? "job cgroups: slurm-vm_\(n.config.name)/job_<id> in \(JobCgroup.controllers.joined(separator: ", "))")"
            )
        }
    }

    func privileged(_ p: Peer) -> Bool { p.uid == 0 || p.uid == slurmUID }

    /// Serves one connection to its end.
    public func serve(_ c: LineConnection) {
        do {
            let peer = try c.peer()
            let call: Call
            do {
                guard let first = try c.read(Call.self) else { return }
                call = first
            } catch {
                try c.send(Reply.failure("\(error)")); return
            }
            switch call {
            case .ping: var r = Reply(); r.roles = roles; try c.send(r)
            case .match(let m): try c.send(match(m, peer))
            case .prepare(let p): try c.send(prepare(p, peer))
            case .teardown(let job): try c.send(teardown(job, peer))
            case .jobs: try c.send(jobs(peer))
            case .exec(let e): try exec(e, peer, c)
            }
        } catch {
            logger.warning("connection: \(error)")
            try? c.send(Reply.failure("\(error)"))
        }
    }

    var roles: [String] { (catalog != nil ? ["catalog"] : []) + (node != nil ? ["node"] : []) }

    // MARK: catalog role

    func match(_ call: MatchCall, _ peer: Peer) throws -> Reply {
        guard let catalog else { return .failure("this slurm-vmd has no catalog role; point the plugin's submit_socket at one that has") }
        let name = getpwuid(peer.uid).map { String(cString: $0.pointee.pw_name) } ?? String(peer.uid)
        let who = Requester(user: name, uid: Int(peer.uid), gid: Int(peer.gid), account: call.account, partition: call.partition)
        let submission: Submission
        do { submission = try Submission.parse(options: call.options, command: call.command, nodeCPUs: call.nodeCPUs, requester: who) } catch {
            Telemetry.matched(.refused)
            return .failure("\(error)")
        }
        let started = ContinuousClock.now
        let result = try catalog.match(submission)
        Telemetry.matchSeconds.record(ContinuousClock.now - started)
        guard let accepted = result.accepted else {
            Telemetry.matched(.refused)
            return .failure(result.refusal ?? "refused")
        }
        Telemetry.matched(.accepted)
        logger.info(
            "match for \(name) (uid \(peer.uid)): \(accepted.imageLabel), \(accepted.sizing.guests) guest(s) × \(accepted.sizing.vcpus) vCPU(s)")
        var r = Reply()
        r.image = accepted.imageLabel; r.digest = accepted.image; r.request = accepted
        return r
    }

    // MARK: node role

    func requireNode(_ peer: Peer, privileged need: Bool) throws -> NodeManager {
        guard let node else { throw DaemonError.noRole("this slurm-vmd has no node role") }
        if need && !privileged(peer) {
            throw DaemonError.forbidden("only root or SlurmUser may do this (you are uid \(peer.uid))")
        }
        return node
    }

    func prepare(_ p: PrepareRequest, _ peer: Peer) throws -> Reply {
        let node = try requireNode(peer, privileged: true)
        let s = node.prepare(p)
        var r = Reply(ok: s.phase == .ready, error: s.error)
        r.phase = s.phase; r.guests = s.guests; r.seconds = s.prepareSeconds
        // What the job got, where its user sees it (scontrol show job): said once, by its first node.
        if s.phase == .ready && p.nodeIndex == 0 {
            let a = p.request
            JobAnnotation.say(
                job: p.job,
                "slurm-vm: image=\(a.imageLabel) guests=\(a.sizing.guests) vcpus=\(a.sizing.vcpus) mem=\(a.memoryMB)M backend=\(s.backend ?? "?")",
                logger: logger)
        }
        return r
    }

    func teardown(_ job: UInt32, _ peer: Peer) throws -> Reply {
        let node = try requireNode(peer, privileged: true)
        var r = Reply()
        r.destroyed = node.teardown(job: job)
        return r
    }

    func jobs(_ peer: Peer) throws -> Reply {
        let node = try requireNode(peer, privileged: false)
        var r = Reply()
        r.jobs = node.jobs().filter { privileged(peer) || $0.uid == peer.uid }
        return r
    }

    /// Runs one task in a guest of its job. The client attached its stdin, stdout and stderr.
    func exec(_ e: ExecCall, _ peer: Peer, _ c: LineConnection) throws {
        let node = try requireNode(peer, privileged: false)
        let fds = c.takeFDs()
        var owned = fds  // closed on the way out; stdin passes to the task once it runs
        defer { for f in owned { close(f) } }
        guard fds.count == 3 || fds.count == 4 else {
            try c.send(
                Reply.failure("exec needs stdin, stdout and stderr attached, and the task's PMI channel if it has one (got \(fds.count) descriptors)")
            )
            return
        }
        let pmi = fds.count == 4 ? fds[3] : nil
        let out = fds[1], err = fds[2]
        let req = ExecRequest(argv: e.argv, env: e.env, cwd: e.cwd, terminal: e.terminal)
        if e.root == true, peer.uid != 0 {
            try c.send(Reply.failure("only root on the node may run commands as root in a job's guests")); return
        }
        let started: (command: AgentConnection.Command, guest: String)
        do {
            started = try node.startTask(
                job: e.job, caller: peer.uid, localID: e.localid, exec: req, asRoot: e.root == true, stdin: fds[0], pmi: pmi,
                stdout: { Self.writeAll(out, $0) }, stderr: { Self.writeAll(err, $0) })
        } catch {
            Telemetry.failed(.exec)
            try c.send(Reply.failure("\(error)")); return
        }
        owned.removeAll { $0 == fds[0] || $0 == pmi }
        var ok = Reply()
        ok.guest = started.guest
        try c.send(ok)
        // Signals from the client; the end of its stream (the task was killed) kills the command.
        let cmd = started.command
        let reader = Thread {
            while let msg = try? c.read(ExecControl.self) {
                if let s = msg.signal { cmd.signal(s) }
                if let t = msg.resize { cmd.resize(t) }
            }
            cmd.signal(SIGKILL)
        }
        reader.start()
        do {
            let (status, errors) = try cmd.wait()
            for e in errors { Self.writeAll(err, Array("slurm-vm: \(e)\n".utf8)) }
            try? c.send(ExecEnd(exit: status.exitCode, signal: status.signal))
        } catch {
            Telemetry.failed(.exec)
            // The guest itself may be what ended: then say which and how, not just that the channel broke.
            try? c.send(ExecEnd(exit: 255, signal: nil, error: node.lostGuest(job: e.job, waitingFor: started.guest) ?? "\(error)"))
        }
    }

    static func writeAll(_ fd: Int32, _ b: [UInt8]) {
        b.withUnsafeBytes { p in
            var off = 0
            while off < p.count {
                let n = write(fd, p.baseAddress! + off, p.count - off)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }  // the reader went away: the output has nowhere to go
                off += n
            }
        }
    }

    // MARK: blob service (catalog role)

    /// Answers one blob-service connection (Node/BlobService/BlobProtocol.swift).
    public func serveBlobs(_ fd: Int32) {
        defer { close(fd) }
        BlobWire.setTimeouts(fd, 60)
        guard let catalog, let line = BlobWire.readLine(fd) else { return }
        func reply(_ r: BlobReply) -> Bool { BlobWire.writeAll(fd, r.line + "\n") }
        let request: BlobRequest
        do { request = try BlobRequest.parse(line) } catch { _ = reply(.error(error.description)); return }
        switch request {
        case .broadcast(let digest, let job, let jobNodes, let node, let address):
            // Joins (or, holding the blob, counts towards) the job's broadcast; the plan comes once the
            // group is complete.
            do {
                guard let coordinator, let host = BlobWire.localAddress(fd) else {
                    throw BroadcastError.config("this slurm-vmd cannot plan broadcasts")
                }
                if let a = try coordinator.join(digest: digest, job: job, jobNodes: jobNodes, node: node, address: address, host: host) {
                    _ = reply(.plan(transfer: a.transfer, rank: a.rank, chunkSize: a.chunkSize, addresses: a.addresses))
                } else {
                    _ = reply(.held)
                }
            } catch {
                _ = reply(.error("\(error)"))
            }
        case .record(let digest, let label):
            let byLabel = label.flatMap { try? ImageReference($0) }.flatMap { try? catalog.resolve($0) }
            let rec = byLabel?.digest == digest ? byLabel : (try? catalog.list())?.first { $0.digest == digest }
            guard let rec, let data = try? JSONEncoder.iso.encode(rec) else { _ = reply(.error("no image \(digest) in the catalog")); return }
            guard reply(.ok(size: Int64(data.count))) else { return }
            _ = data.withUnsafeBytes { BlobWire.writeAll(fd, $0) }
        case .get(let digest):
            let path = catalog.blobs.path(of: digest)
            let f = open(path, O_RDONLY | O_CLOEXEC)
            guard f >= 0 else { _ = reply(.error("no blob \(digest) in the catalog")); return }
            defer { close(f) }
            var st = stat()
            fstat(f, &st)
            guard reply(.ok(size: Int64(st.st_size))) else { return }
            var off: off_t = 0
            while off < st.st_size {
                let n = sendfile(fd, f, &off, Int(st.st_size - off))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }
            }
        }
    }
}
