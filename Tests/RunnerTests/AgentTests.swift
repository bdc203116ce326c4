// The real guest agent (Images/agent, compiled by the test) against the real host client, over a
// socket pair on this host: the agent's --fd mode serves the protocol without the init duties.

import Foundation
import Testing
@testable import Runner
#if canImport(Glibc)
import Glibc
#endif

enum AgentBinary {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    /// Built once per test process.
    static let path: String = {
        let out = NSTemporaryDirectory() + "slurm-vm-agent-test-\(getpid())"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/make")
        p.arguments = ["-s", "-C", repo + "/Images/agent", "OUT=\(out)"]
        try! p.run(); p.waitUntilExit()
        precondition(p.terminationStatus == 0, "building the agent failed")
        return out
    }()
}

/// An agent process serving one end of a socket pair.
final class LocalAgent: @unchecked Sendable {
    let conn: AgentConnection
    let pid: Int32
    init() throws {
        var sv: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &sv) == 0 else { throw AgentError("socketpair") }
        var o = SpawnOptions()
        o.stdin = sv[1]; o.newSession = true
        pid = try Processes.spawn(AgentBinary.path, ["--fd", "0"], o)
        close(sv[1])
        conn = AgentConnection(fd: sv[0])
    }
    deinit { conn.close(); kill(pid, SIGKILL); _ = Processes.wait(pid, timeout: 5) }

    final class Collected: @unchecked Sendable {
        let lock = NSLock(); var out = [UInt8](); var err = [UInt8]()
        var stdout: String { lock.lock(); defer { lock.unlock() }; return String(decoding: out, as: UTF8.self) }
        var stderr: String { lock.lock(); defer { lock.unlock() }; return String(decoding: err, as: UTF8.self) }
    }

    /// Runs a command to its end. `pmi`: a descriptor relayed to the command as its PMI_FD.
    func run(
        _ argv: [String], env: [String] = ["PATH=/usr/bin:/bin"], cwd: String = "/", stdin: Int32? = nil, pmi: Int32? = nil
    ) throws -> (
        CommandStatus, Collected
    ) {
        let c = Collected()
        let req = ExecRequest(argv: argv, env: env, cwd: cwd, uid: getuid(), gid: getgid(), relayVariable: pmi == nil ? nil : "PMI_FD")
        let cmd = try conn.start(
            req, stdin: stdin, relay: pmi,
            stdout: { b in
                c.lock.lock(); c.out += b; c.lock.unlock()
            },
            stderr: { b in
                c.lock.lock(); c.err += b; c.lock.unlock()
            })
        return (try cmd.wait().status, c)
    }
}

@Suite(.serialized) struct AgentTests {
    @Test func handshakeAnswersOurNonce() throws {
        let a = try LocalAgent()
        let info = try a.conn.handshake(timeout: 10)
        #expect(info.agentVersion == "3")
        #expect(info.cpus >= 1)
        #expect(!info.hostname.isEmpty)
    }

    @Test func exitCodesAreTheShellsConvention() throws {
        let a = try LocalAgent()
        _ = try a.conn.handshake(timeout: 10)
        #expect(try a.run(["true"]).0.code == 0)
        #expect(try a.run(["false"]).0.code == 1)
        #expect(try a.run(["sh", "-c", "exit 42"]).0.code == 42)
        let (nf, out) = try a.run(["no-such-command-xyz"])
        #expect(nf.code == 127)
        #expect(out.stderr.contains("no-such-command-xyz: command not found"))
        let (sig, _) = try a.run(["sh", "-c", "kill -9 $$"])
        #expect(sig.signal == 9)
        #expect(sig.code == 137)
        #expect(try a.run(["/etc/passwd"]).0.code == 126)
    }

    @Test func environmentAndWorkingDirectoryArriveIntact() throws {
        let a = try LocalAgent()
        let (st, c) = try a.run(["sh", "-c", "echo \"$FOO|$(pwd)\""], env: ["PATH=/usr/bin:/bin", "FOO=bar baz"], cwd: "/tmp")
        #expect(st.code == 0)
        #expect(c.stdout == "bar baz|/tmp\n")
        let (st2, c2) = try a.run(["pwd"], cwd: "/no/such/dir")
        #expect(st2.code == 0)
        #expect(c2.stderr.contains("cannot change to directory /no/such/dir"))
        #expect(c2.stdout == "/tmp\n")
    }

    @Test func tenMegabytesOfOutputArriveWithoutLoss() throws {
        let a = try LocalAgent()
        let (st, c) = try a.run(["sh", "-c", "f=$(mktemp); head -c 10485760 /dev/urandom > $f; sha256sum $f >&2; cat $f; rm -f $f"])
        #expect(st.code == 0)
        #expect(c.out.count == 10 << 20)
        let want = c.stderr.split(separator: " ").first.map(String.init)
        #expect(want == sha256Hex(c.out))
    }

    @Test func stdinIsStreamedWithFlowControl() throws {
        let a = try LocalAgent()
        // 3 MiB through a pipe: far beyond the stdin window, so the window must keep refilling.
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        let p = fds
        let data = [UInt8]((0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        let writer = Thread {
            data.withUnsafeBytes { b in
                var off = 0; while off < b.count { let n = write(p[1], b.baseAddress! + off, b.count - off); if n <= 0 { break }; off += n }
            }
            close(p[1])
        }
        writer.start()
        let (st, c) = try a.run(["sha256sum"], stdin: p[0])
        close(p[0])
        #expect(st.code == 0)
        #expect(c.stdout.hasPrefix(sha256Hex(data)))
    }

    @Test func signalsReachTheWholeProcessGroup() throws {
        let a = try LocalAgent()
        let c = LocalAgent.Collected()
        let cmd = try a.conn.start(
            ExecRequest(argv: ["sh", "-c", "sleep 30 & wait"], env: ["PATH=/usr/bin:/bin"], uid: getuid(), gid: getgid()),
            stdout: { b in c.out += b }, stderr: { _ in })
        usleep(300_000)
        cmd.signal(SIGTERM)
        let (st, _) = try cmd.wait()
        #expect(st.signal == SIGTERM)
    }

    @Test func manyCommandsAtOnceOverOneChannel() throws {
        let a = try LocalAgent()
        final class R: @unchecked Sendable { var v = [String](repeating: "", count: 16) }
        let r = R()
        DispatchQueue.concurrentPerform(iterations: 16) { i in
            let (_, c) = try! a.run(["sh", "-c", "echo \(i); sleep 0.2; echo done\(i)"])
            r.v[i] = c.stdout
        }
        for i in 0..<16 { #expect(r.v[i] == "\(i)\ndone\(i)\n") }
    }

    /// A task's PMI channel: the command finds its end of the relay through the named variable (the
    /// host's value replaced), and bytes cross both ways until it exits; then the host end sees EOF.
    @Test func theRelayCarriesAChannelBothWays() throws {
        let a = try LocalAgent()
        _ = try a.conn.handshake(timeout: 10)
        var sv: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &sv) == 0)
        let server = sv[0]
        // The "PMI server": answers each line with its upper-case copy, twice.
        let answered = Thread {
            var seen = [UInt8]()
            var buf = [UInt8](repeating: 0, count: 4096)
            var lines = 0
            while lines < 2 {
                let n = read(server, &buf, buf.count)
                if n <= 0 { return }
                seen += buf[0..<n]
                while let nl = seen.firstIndex(of: 10) {
                    let line = String(decoding: seen[..<nl], as: UTF8.self).uppercased() + "\n"
                    seen.removeSubrange(...nl)
                    _ = line.withCString { write(server, $0, strlen($0)) }
                    lines += 1
                }
            }
        }
        answered.start()
        let (status, c) = try a.run(
            [
                "sh", "-c",
                "echo \"fd $PMI_FD\" >&2; echo cmd=init >&$PMI_FD; read a <&$PMI_FD; echo barrier >&$PMI_FD; read b <&$PMI_FD; echo \"$a $b\"",
            ], env: ["PATH=/usr/bin:/bin", "PMI_FD=17"], pmi: sv[1])
        #expect(status.code == 0, "\(c.stderr)")
        #expect(c.stdout == "CMD=INIT BARRIER\n")
        #expect(c.stderr == "fd 3\n")
        // The host end was closed with the command: the server reads end of file.
        var pf = pollfd(fd: server, events: Int16(POLLIN), revents: 0)
        #expect(poll(&pf, 1, 5000) == 1)
        var byte: UInt8 = 0
        #expect(read(server, &byte, 1) == 0)
        close(server)
    }

    /// Inside a guest Slurm's PMI_process_mapping is wrong (it maps ranks to Slurm nodes, not to
    /// guests): the agent answers that query itself with "not known", and passes every other message.
    @Test func thePMIRelayAnswersTheProcessMappingItself() throws {
        let a = try LocalAgent()
        _ = try a.conn.handshake(timeout: 10)
        var sv: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &sv) == 0)
        let server = sv[0]
        final class Seen: @unchecked Sendable { var bytes = [UInt8]() }
        let seen = Seen()
        let done = DispatchSemaphore(value: 0)
        let t = Thread {
            defer { done.signal() }
            var buf = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = read(server, &buf, buf.count)
                if n <= 0 { return }
                seen.bytes += buf[0..<n]
                if seen.bytes.contains(10) {
                    let answer = "cmd=get_result rc=0 value=42\n"
                    _ = answer.withCString { write(server, $0, strlen($0)) }
                    seen.bytes += [0]  // answered once
                }
            }
        }
        t.start()
        let c = LocalAgent.Collected()
        var req = ExecRequest(
            argv: [
                "sh", "-c",
                "printf 'cmd=get kvsname=k key=PMI_process_mapping\\n' >&3; read a <&3; printf 'cmd=get kvsname=k key=mine\\n' >&3; read b <&3; echo \"$a\"; echo \"$b\"",
            ],
            env: ["PATH=/usr/bin:/bin"], uid: getuid(), gid: getgid())
        req.relayVariable = "PMI_FD"
        let cmd = try a.conn.start(
            req, relay: sv[1],
            stdout: { b in
                c.lock.lock(); c.out += b; c.lock.unlock()
            },
            stderr: { b in
                c.lock.lock(); c.err += b; c.lock.unlock()
            })
        #expect(try cmd.wait().status.code == 0, "\(c.stderr)")
        let lines = c.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first?.hasPrefix("cmd=get_result rc=-1 ") == true, "\(c.stdout)")
        #expect(lines.last == "cmd=get_result rc=0 value=42", "\(c.stdout)")
        #expect(done.wait(timeout: .now() + 10) == .success)
        #expect(String(decoding: seen.bytes.filter { $0 != 0 }, as: UTF8.self) == "cmd=get kvsname=k key=mine\n")
        close(server)
    }

    /// Starts `argv` on a terminal of `size`, typing what is written to the returned descriptor.
    func onTerminal(_ a: LocalAgent, _ argv: [String], size: TerminalSize) throws -> (AgentConnection.Command, LocalAgent.Collected, Int32) {
        var p: [Int32] = [0, 0]
        guard pipe(&p) == 0 else { throw AgentError("pipe") }
        let c = LocalAgent.Collected()
        let req = ExecRequest(argv: argv, env: ["PATH=/usr/bin:/bin", "TERM=dumb", "PS1=prompt$ "], uid: getuid(), gid: getgid(), terminal: size)
        let cmd = try a.conn.start(
            req, stdin: p[0], ownsStdin: true,
            stdout: { b in
                c.lock.lock(); c.out += b; c.lock.unlock()
            },
            stderr: { b in
                c.lock.lock(); c.err += b; c.lock.unlock()
            })
        return (cmd, c, p[1])
    }

    func waitFor(_ text: String, in c: LocalAgent.Collected, after: Int = 0) -> Bool {
        Processes.waitFor(timeout: 10, interval: 0.02) { String(c.stdout.dropFirst(after)).contains(text) ? true : nil } ?? false
    }

    func type(_ fd: Int32, _ text: String) { _ = text.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) } }

    @Test func aCommandOnATerminalHasItsSizeAndItsSpecialCharacters() throws {
        let a = try LocalAgent()
        _ = try a.conn.handshake(timeout: 10)
        let (cmd, c, keys) = try onTerminal(a, ["sh", "-i"], size: TerminalSize(rows: 33, columns: 97))
        defer { close(keys) }
        #expect(waitFor("prompt$ ", in: c), "a prompt: \(c.stdout)")
        type(keys, "tty; stty size\n")
        #expect(waitFor("33 97", in: c), "\(c.stdout)")
        #expect(c.stdout.contains("/dev/pts/"), "tty names a terminal: \(c.stdout)")
        // Ctrl-C is a byte here; the guest's terminal makes it SIGINT for its foreground job only.
        var mark = c.stdout.count
        type(keys, "sleep 30\n")
        #expect(waitFor("sleep 30", in: c, after: mark))  // the terminal's echo
        Thread.sleep(forTimeInterval: 0.3)
        let interrupted = Date()
        type(keys, "\u{03}")
        mark = c.stdout.count
        type(keys, "echo alive $((6*7))\n")
        #expect(waitFor("alive 42", in: c, after: mark), "the shell lived on: \(c.stdout)")
        #expect(Date().timeIntervalSince(interrupted) < 10, "sleep was interrupted")
        // The size follows the host's terminal.
        cmd.resize(TerminalSize(rows: 40, columns: 120))
        mark = c.stdout.count
        type(keys, "stty size\n")
        #expect(waitFor("40 120", in: c, after: mark), "\(c.stdout)")
        type(keys, "exit 3\n")
        #expect(try cmd.wait().status.code == 3)
    }

    @Test func aResizedTerminalSignalsItsForegroundJob() throws {
        let a = try LocalAgent()
        _ = try a.conn.handshake(timeout: 10)
        let script = "trap 'stty size; exit 0' WINCH; echo ready; while :; do sleep 0.05; done"
        let (cmd, c, keys) = try onTerminal(a, ["sh", "-c", script], size: TerminalSize(rows: 24, columns: 80))
        defer { close(keys) }
        #expect(waitFor("ready", in: c))
        cmd.resize(TerminalSize(rows: 50, columns: 132))
        #expect(try cmd.wait().status.code == 0)
        #expect(c.stdout.contains("50 132"), "\(c.stdout)")
    }

    @Test func theLastOutputOfACommandOnATerminalArrivesBeforeItsEnd() throws {
        let a = try LocalAgent()
        _ = try a.conn.handshake(timeout: 10)
        // A large last write, and a process left behind holding the terminal: neither is lost or waited for.
        let (cmd, c, keys) = try onTerminal(
            a, ["sh", "-c", "sleep 30 & head -c 300000 /dev/zero | tr '\\0' x; echo end"], size: TerminalSize(rows: 24, columns: 80))
        defer { close(keys) }
        let start = Date()
        #expect(try cmd.wait().status.code == 0)
        #expect(Date().timeIntervalSince(start) < 10, "the session ended without the background sleep")
        #expect(c.stdout.filter { $0 == "x" }.count == 300_000)
        #expect(c.stdout.hasSuffix("end\r\n"), "the terminal's newline translation: \(c.stdout.suffix(20).debugDescription)")
    }

    @Test func anOldAgentIsAskedForNoTerminal() throws {
        let a = try LocalAgent()
        _ = try a.conn.handshake(timeout: 10)
        a.conn.agentVersion = "2"
        #expect(throws: AgentError.self) {
            _ = try a.conn.start(
                ExecRequest(argv: ["true"], env: [], terminal: TerminalSize(rows: 1, columns: 1)), stdout: { _ in }, stderr: { _ in })
        }
    }

    @Test func malformedFramesDoNotKillTheAgent() throws {
        let a = try LocalAgent()
        _ = try a.conn.handshake(timeout: 10)
        // An EXEC whose strings overrun the payload, an unknown type, raw noise.
        try a.conn.send(AgentFrame(.exec, session: 99, payload: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]))
        try a.conn.send(AgentFrame(rawType: 0x55, session: 1, payload: [1, 2, 3]))
        try a.conn.send(AgentFrame(.stdin, session: 12345, payload: [1]))
        _ = try a.conn.handshake(timeout: 10)
        #expect(try a.run(["echo", "still alive"]).1.stdout == "still alive\n")
    }
}

import Crypto
func sha256Hex(_ b: [UInt8]) -> String { SHA256.hash(data: b).map { String(format: "%02x", $0) }.joined() }
