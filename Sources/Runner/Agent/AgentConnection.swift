// The host end of one agent channel: a reader thread decodes frames and routes them to sessions;
// callers run commands with `start` and wait for them. Any number of commands run at once over the one
// channel. The channel is a connected stream socket, whichever VMM provides it.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

public struct AgentError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

public final class AgentConnection: @unchecked Sendable {
    let fd: Int32
    let cond = NSCondition()  // guards everything below, and signals every change
    let writeLock = NSLock()
    var decoder = AgentFrameDecoder()
    var sessions: [UInt32: Session] = [:]
    var nextSession: UInt32 = 1
    var ready: [UInt64: GuestInfo] = [:]
    /// The agent's version, from the last handshake: what the protocol may use.
    var agentVersion: String?
    var failure: String?
    var thread: Thread?

    final class Session {
        var started = false
        var pid: UInt32 = 0
        var status: CommandStatus?
        var errors: [String] = []
        var unacked = 0
        let onStdout: @Sendable ([UInt8]) -> Void
        let onStderr: @Sendable ([UInt8]) -> Void
        let relay: Relay?
        init(_ o: @escaping @Sendable ([UInt8]) -> Void, _ e: @escaping @Sendable ([UInt8]) -> Void, relay: Relay?) {
            onStdout = o; onStderr = e; self.relay = relay
        }
    }

    /// The host end of a command's relay (its PMI channel). The pumping thread closes the descriptor;
    /// the lock keeps that from happening while the reader thread writes to it, so a reused number is
    /// never written by mistake. The socket itself is never shut down: slurmstepd's PMI server takes an
    /// end of file before the task has ended for a protocol error and aborts the step, so the channel
    /// ends only when the task wrapper, which holds its own copy, exits.
    final class Relay: @unchecked Sendable {
        let lock = NSLock()
        var fd: Int32
        let wake: (read: Int32, write: Int32)
        init(_ fd: Int32) {
            self.fd = fd
            var p: [Int32] = [-1, -1]
            _ = pipe(&p)
            for f in p { _ = fcntl(f, F_SETFD, FD_CLOEXEC); _ = fcntl(f, F_SETFL, O_NONBLOCK) }
            wake = (p[0], p[1])
        }

        /// Bytes from the guest. Blocking: the other end (slurmstepd's PMI server) always reads. An
        /// empty payload (the command closed its end) is not passed on; see above.
        func write(_ b: [UInt8]) {
            lock.lock(); defer { lock.unlock() }
            guard fd >= 0, !b.isEmpty else { return }
            b.withUnsafeBytes { p in
                var off = 0
                while off < p.count {
                    var n = Glibc.send(fd, p.baseAddress! + off, p.count - off, Int32(MSG_NOSIGNAL))
                    if n < 0 && errno == ENOTSOCK { n = Glibc.write(fd, p.baseAddress! + off, p.count - off) }
                    if n < 0 && errno == EINTR { continue }
                    if n <= 0 { return }
                    off += n
                }
            }
        }

        /// Wakes the pumping thread (the command ended): it then closes the descriptor.
        func end() {
            var one: UInt8 = 1
            _ = Glibc.write(wake.write, &one, 1)
        }

        /// Waits until the descriptor is readable (true) or `end` was called (false).
        func waitReadable() -> Bool {
            var pf = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0)]
            while true {
                let r = poll(&pf, 2, -1)
                if r < 0 && errno == EINTR { continue }
                return r > 0 && pf[1].revents == 0
            }
        }

        func close() {
            lock.lock(); defer { lock.unlock() }
            if fd >= 0 { Glibc.close(fd); fd = -1 }
            Glibc.close(wake.read); Glibc.close(wake.write)
        }
    }

    /// Takes ownership of a connected stream descriptor.
    public init(fd: Int32) {
        self.fd = fd
        let t = Thread { [unowned self] in self.readLoop() }
        t.name = "agent-reader"
        thread = t
        t.start()
    }

    /// Connects to a Unix socket path (the QEMU backend's chardev).
    public static func connect(path: String) throws -> AgentConnection {
        AgentConnection(fd: try UnixSocket.connect(path))
    }

    deinit { Glibc.close(fd) }

    /// Ends the connection; commands still running in the guest are killed by the agent.
    public func close() {
        cond.lock()
        if failure == nil { failure = "connection closed" }
        for s in sessions.values { s.relay?.end() }
        cond.broadcast()
        cond.unlock()
        Glibc.shutdown(fd, Int32(SHUT_RDWR))
    }

    // MARK: handshake

    /// Says HELLO with a fresh nonce and waits for the agent's READY answering it. Earlier traffic
    /// (a boot-time READY, frames meant for a previous connection) is ignored.
    public func handshake(timeout: TimeInterval) throws -> GuestInfo {
        let nonce = UInt64.random(in: 1...UInt64.max)
        let deadline = Date(timeIntervalSinceNow: timeout)
        try send(AgentCodec.hello(nonce: nonce))
        cond.lock(); defer { cond.unlock() }
        while ready[nonce] == nil {
            if let f = failure { throw AgentError("agent channel failed before the agent was ready: \(f)") }
            if !cond.wait(until: deadline) {
                throw AgentError("the guest agent did not answer within \(Int(timeout)) s")
            }
        }
        agentVersion = ready[nonce]!.agentVersion
        return ready[nonce]!
    }

    // MARK: commands

    public final class Command: @unchecked Sendable {
        let conn: AgentConnection
        public let session: UInt32
        init(_ c: AgentConnection, _ s: UInt32) { conn = c; session = s }

        /// Delivers a signal to the command's process group.
        public func signal(_ sig: Int32) { try? conn.send(AgentCodec.signal(sig, session: session)) }

        /// Changes the size of the command's terminal (its foreground process group gets SIGWINCH).
        public func resize(_ size: TerminalSize) { try? conn.send(AgentCodec.resize(size, session: session)) }

        /// Waits for the exit status. Errors the agent reported for the session go to `errors`.
        public func wait() throws -> (status: CommandStatus, errors: [String]) {
            conn.cond.lock(); defer { conn.cond.unlock() }
            while true {
                guard let s = conn.sessions[session] else { throw AgentError("session \(session) vanished") }
                if let st = s.status { conn.sessions[session] = nil; return (st, s.errors) }
                if let f = conn.failure { conn.sessions[session] = nil; throw AgentError("lost the guest agent while a command ran: \(f)") }
                conn.cond.wait()
            }
        }
    }

    /// Starts a command. Output arrives on the reader thread, in order, through the two callbacks.
    /// `stdin`: a descriptor to copy to the command (until its end), or nil for empty input. With
    /// `ownsStdin` the copying thread closes it when done — the only safe moment, since closing a
    /// descriptor another thread is blocked reading would let a reused number be read by mistake.
    /// `relay` (with `req.relayVariable` set): a stream descriptor joined to the command's relay
    /// socket both ways until the command ends; once started, this connection owns and closes it (the
    /// caller keeps it if this throws).
    public func start(
        _ req: ExecRequest, stdin: Int32? = nil, ownsStdin: Bool = false, relay: Int32? = nil,
        stdout: @escaping @Sendable ([UInt8]) -> Void,
        stderr: @escaping @Sendable ([UInt8]) -> Void
    ) throws -> Command {
        let relayEnd = relay.map(Relay.init)
        cond.lock()
        if let f = failure { cond.unlock(); throw AgentError("agent channel is closed: \(f)") }
        if relayEnd != nil {
            guard let v = req.relayVariable else {
                cond.unlock(); throw AgentError("a relay descriptor needs the variable that names it in the guest")
            }
            guard let version = agentVersion.flatMap({ Int($0) }), version >= AgentCodec.relayVersion else {
                cond.unlock()
                throw AgentError(
                    "this guest's agent (version \(agentVersion ?? "unknown")) cannot carry the task's \(v) channel: rebuild the image with this slurm-vm (`slurm-vm image build RECIPE`)"
                )
            }
        }
        if req.terminal != nil {
            guard let version = agentVersion.flatMap({ Int($0) }), version >= AgentCodec.terminalVersion else {
                cond.unlock()
                throw AgentError(
                    "this guest's agent (version \(agentVersion ?? "unknown")) cannot give a command a terminal: rebuild the image with this slurm-vm (`slurm-vm image build RECIPE`)"
                )
            }
        }
        let id = nextSession
        nextSession &+= 1
        sessions[id] = Session(stdout, stderr, relay: relayEnd)
        cond.unlock()
        try send(AgentCodec.exec(req, session: id))
        if let relayEnd {
            let t = Thread { [self] in
                self.pumpRelay(relayEnd, session: id)
                relayEnd.close()
            }
            t.name = "agent-relay"
            t.start()
        }
        if let stdin {
            let t = Thread { [self] in
                self.pumpStdin(from: stdin, session: id)
                if ownsStdin { Glibc.close(stdin) }
            }
            t.name = "agent-stdin"
            t.start()
        } else {
            try send(AgentFrame(.stdin, session: id))
        }
        return Command(self, id)
    }

    /// Copies a local descriptor to the command's stdin, keeping at most the agent's window in flight.
    func pumpStdin(from fd: Int32, session: UInt32) {
        let cap = 64 << 10
        var buf = [UInt8](repeating: 0, count: cap)
        while true {
            cond.lock()
            while let s = sessions[session], s.status == nil, failure == nil, s.unacked + cap > AgentFrame.stdinWindow { cond.wait() }
            let alive = sessions[session].map { $0.status == nil } ?? false
            cond.unlock()
            if !alive || failure != nil { return }
            // Wait for input a while at a time: a terminal (srun --pty) never reaches its end by itself,
            // and its other side must be let go once the command has ended.
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, 200)
            if ready < 0 && errno == EINTR { continue }
            if ready == 0 { continue }
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, cap) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { try? send(AgentFrame(.stdin, session: session)); return }
            cond.lock(); sessions[session]?.unacked += n; cond.unlock()
            do { try send(AgentFrame(.stdin, session: session, payload: Array(buf[0..<n]))) } catch { return }
        }
    }

    /// Copies what the host end of a relay receives to the command's relay socket. Relay traffic (PMI)
    /// is small and answered, so it needs no window: the agent bounds what it buffers.
    func pumpRelay(_ relay: Relay, session: UInt32) {
        var buf = [UInt8](repeating: 0, count: 64 << 10)
        let fd = relay.fd
        while relay.waitReadable() {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            cond.lock(); let alive = sessions[session].map { $0.status == nil } ?? false; cond.unlock()
            guard alive else { return }
            if n <= 0 { try? send(AgentFrame(.relay, session: session)); return }
            do { try send(AgentFrame(.relay, session: session, payload: Array(buf[0..<n]))) } catch { return }
        }
    }

    /// Asks the guest to power off (the VMM notices and exits).
    public func shutdownGuest() { try? send(AgentCodec.shutdown()) }

    // MARK: I/O

    func send(_ f: AgentFrame) throws {
        let bytes = f.encoded
        writeLock.lock(); defer { writeLock.unlock() }
        var off = 0
        while off < bytes.count {
            // send(MSG_NOSIGNAL): a guest that went away is an error to report, not a SIGPIPE.
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                let e = String(cString: strerror(errno))
                fail("write: \(e)")
                throw AgentError("cannot write to the guest agent: \(e)")
            }
            off += n
        }
    }

    func fail(_ why: String) {
        cond.lock()
        if failure == nil { failure = why }
        for s in sessions.values { s.relay?.end() }
        cond.broadcast()
        cond.unlock()
    }

    func readLoop() {
        var buf = [UInt8](repeating: 0, count: 256 << 10)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { fail(n == 0 ? "the guest closed the channel" : "read: \(String(cString: strerror(errno)))"); return }
            decoder.feed(buf[0..<n])
            while let f = decoder.next() { dispatch(f) }
        }
    }

    func dispatch(_ f: AgentFrame) {
        guard let t = AgentFrameType(rawValue: f.type) else { return }
        switch t {
        case .stdout, .stderr:
            cond.lock(); let s = sessions[f.session]; cond.unlock()
            if let s { (t == .stdout ? s.onStdout : s.onStderr)(f.payload) }
        case .relayOut:
            cond.lock(); let s = sessions[f.session]; cond.unlock()
            s?.relay?.write(f.payload)
        default:
            cond.lock(); defer { cond.broadcast(); cond.unlock() }
            switch t {
            case .ready: if let info = AgentCodec.ready(f) { ready[info.nonce] = info }
            case .started: sessions[f.session]?.started = true; sessions[f.session]?.pid = AgentCodec.u32(f) ?? 0
            case .exit:
                sessions[f.session]?.status = AgentCodec.exit(f) ?? CommandStatus(exitCode: nil, signal: nil)
                sessions[f.session]?.relay?.end()
            case .stdinAck: if let n = AgentCodec.u32(f) { sessions[f.session]?.unacked -= Int(n) }
            case .error: if let m = AgentCodec.string(f) { sessions[f.session]?.errors.append(m) }
            default: break
            }
        }
    }
}
