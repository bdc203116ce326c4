// The task wrapper. The SPANK plugin's task_init replaces a task's argv[0] with this binary and puts
// the original argv[0] in SLURM_VM_TASK_ARGV0, so slurmstepd's rlimits, TMPDIR and TaskProlog still
// apply to the process that runs. The wrapper hands its stdin/stdout/stderr to the node's slurm-vmd
// (SCM_RIGHTS), which runs the task in one of the job's guests with the task's environment and
// working directory; signals (scancel, the time limit) are forwarded; the exit status is the task's.
// With `srun --mpi=pmi2` the task's PMI channel (PMI_FD, a socket to slurmstepd's PMI server) goes
// along and is carried into the guest as the command's own PMI_FD, so MPI ranks in guests wire up
// through Slurm. PMIx cannot be carried that way and is refused before anything starts.

import Daemon
import Foundation
#if canImport(Glibc)
import Glibc
#endif

enum TaskWrapper {
    static let argv0Variable = "SLURM_VM_TASK_ARGV0"
    static let socketVariable = "SLURM_VM_NODE_SOCKET"

    static var active: Bool { getenv(argv0Variable) != nil }

    /// Variables that describe the host side of the step, not the task: not passed into the guest.
    static let hostOnly: [String] = [argv0Variable, socketVariable, "SLURM_VM_", "SPANK_", "SLURM_SPANK_", "_SLURM_SPANK", "LD_PRELOAD", "TMPDIR="]

    static func fail(_ msg: String) -> Never {
        Terminal.restore()
        FileHandle.standardError.write(Data("slurm-vm: \(msg)\n".utf8))
        exit(1)
    }

    /// Why the task's MPI plugin cannot reach into a guest, or nil. Slurm's PMIx server listens on a
    /// Unix socket in slurmstepd's temporary directory on the host; a guest has no way to it, and a
    /// relay of that socket would need a PMIx-aware proxy in the agent.
    static func refusedMPI(_ env: [String: String]) -> String? {
        let type = env["SLURM_MPI_TYPE"] ?? ""
        guard type.hasPrefix("pmix") || env.keys.contains(where: { $0.hasPrefix("PMIX_") }) else { return nil }
        return
            "srun --mpi=\(type.isEmpty ? "pmix" : type) cannot reach into slurm-vm guests: PMIx clients connect to slurmstepd's PMIx socket on the host, which a guest cannot open. Use srun --mpi=pmi2 with MPICH (the mpich image), or start MPI yourself with mpiexec -f /etc/slurm-vm/hostfile."
    }

    static func main() -> Never {
        SignalRelay.block()
        let env = ProcessInfo.processInfo.environment
        let argv0 = env[argv0Variable]!
        guard let socket = env[socketVariable], !socket.isEmpty else {
            fail("\(socketVariable) is not set: the plugin did not say where this node's slurm-vmd listens")
        }
        guard let job = env["SLURM_JOB_ID"].flatMap(UInt32.init) else { fail("SLURM_JOB_ID is not set: not a Slurm task") }
        let args = [argv0] + CommandLine.arguments.dropFirst()
        let taskEnv = env.filter { k, _ in !hostOnly.contains { p in p.hasSuffix("_") || p.hasSuffix("=") ? (k + "=").hasPrefix(p) : k == p } }
            .map { "\($0.key)=\($0.value)" }.sorted()
        if let why = refusedMPI(env) { fail(why) }
        let pmi = env["PMI_FD"].flatMap(Int32.init).flatMap { fcntl($0, F_GETFD) >= 0 && $0 > 2 ? $0 : nil }
        let cwd = FileManager.default.currentDirectoryPath
        var call = ExecCall(job: job, argv: args, env: taskEnv, cwd: cwd, localid: Int(env["SLURM_LOCALID"] ?? "0") ?? 0)
        // srun --pty: the task's stdin and stdout are slurmstepd's terminal; the command gets one too.
        if isatty(0) == 1 && isatty(1) == 1 { call.terminal = Terminal.size(of: 0) }
        run(call, at: socket, pmi: pmi)
    }

    /// Runs `call` through the node's slurm-vmd with our stdin, stdout and stderr (and `pmi`), forwards
    /// signals (and, with `call.terminal`, the terminal's size, in raw mode meanwhile), and ends as the
    /// command ended. SignalRelay.block() must have run first.
    static func run(_ call: ExecCall, at socket: String, pmi: Int32? = nil) -> Never {
        let conn: LineConnection
        do { conn = try LineConnection.connect(socket) } catch { fail("\(error)") }
        if call.terminal != nil { Terminal.makeRaw(1) }
        do {
            try conn.send(Call.exec(call), fds: [0, 1, 2] + (pmi.map { [$0] } ?? []))
            guard let first = try conn.read(Reply.self) else { fail("slurm-vmd closed the connection") }
            guard first.ok else { fail(first.error ?? "slurm-vmd refused to run the task") }
        } catch { fail("\(error)") }
        // Our own copies of the task's descriptors are no longer needed: the daemon holds them. Keeping
        // stdin open would steal input from the guest; stdout stays valid for our own last words.
        close(0)
        // The PMI descriptor stays open until we exit: slurmstepd must not see its end before the task's.
        SignalRelay.start(conn, terminal: call.terminal == nil ? nil : 1)
        let end: ExecEnd?
        do { end = try conn.read(ExecEnd.self) } catch { fail("lost slurm-vmd while the task ran: \(error)") }
        guard let end else { fail("slurm-vmd went away while the task ran; the task was killed") }
        Terminal.restore()
        if let e = end.error { FileHandle.standardError.write(Data("slurm-vm: \(e)\n".utf8)) }
        if let sig = end.signal {
            // End as the task did, so srun reports the signal.
            signal(sig, SIG_DFL)
            var none = sigset_t(); sigemptyset(&none); sigprocmask(SIG_SETMASK, &none, nil)
            raise(sig)
            exit(128 + sig)
        }
        exit(end.exit ?? 255)
    }
}

/// Forwards the signals slurmstepd sends a task (scancel, time limit, srun's Ctrl-C) to the command in
/// the guest. SIGKILL cannot be caught: the daemon sees our connection close and kills the command.
enum SignalRelay {
    nonisolated(unsafe) static var conn: LineConnection?
    static let forwarded: [Int32] = [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCONT, SIGTSTP, SIGALRM]

    static var set: sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for s in forwarded + [SIGWINCH] { sigaddset(&set, s) }
        return set
    }

    /// Blocks the forwarded signals in the calling thread and every thread started after: call first.
    static func block() {
        var s = set
        pthread_sigmask(SIG_BLOCK, &s, nil)
    }

    /// A signal that arrived before the command started is delivered once it has. With `terminal` (the
    /// descriptor of our terminal), SIGWINCH sends the terminal's new size instead of a signal.
    static func start(_ c: LineConnection, terminal: Int32? = nil) {
        conn = c
        let t = Thread {
            var s = set
            while true {
                var sig: Int32 = 0
                guard sigwait(&s, &sig) == 0 else { continue }
                if sig == SIGWINCH {
                    if let fd = terminal, let size = Terminal.size(of: fd) { try? conn?.send(ExecControl(resize: size)) }
                } else {
                    try? conn?.send(ExecControl(signal: sig))
                }
            }
        }
        t.start()
    }
}
