// `slurm-vm job`: a node's view of the Slurm jobs whose guests it runs.

import ArgumentParser
import Daemon
import Foundation
#if canImport(Glibc)
import Glibc
#endif

struct JobCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "job", abstract: "Look into the guests of a Slurm job on this node.", subcommands: [Exec.self])

    /// Runs a command in one of a job's guests through the node's slurm-vmd, as a task of the job
    /// would run (the job's owner, or root with --root): for the owner to look around, for an admin
    /// to debug a job's guests.
    struct Exec: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run a command in a guest of a job on this node.")
        @Argument(help: "The Slurm job id.") var job: UInt32
        @Option(help: "Which of the job's guests on this node (0, 1, …).") var guest: Int = 0
        @Flag(help: "Run as root in the guest (root on the node only); otherwise as the job's owner.") var root = false
        @Option(help: "Working directory in the guest.") var cwd: String = "/"
        @Option(help: "Environment, NAME=VALUE (repeatable).") var env: [String] = []
        @OptionGroup var socket: NodeSocketOption
        @Flag(name: [.customShort("t"), .long], help: "Give the command a terminal, as ssh -t does (stdin and stdout must be one).")
        var tty = false
        @Argument(parsing: .postTerminator) var command: [String] = []

        func run() throws {
            guard !command.isEmpty else { throw ValidationError("give the command after --") }
            guard guest >= 0 else { throw ValidationError("--guest counts from 0") }
            let terminal = try Terminal.requested(tty)
            SignalRelay.block()
            var e = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + env
            e += terminal?.env ?? []
            TaskWrapper.run(
                ExecCall(job: job, argv: command, env: e, cwd: cwd, localid: guest, root: root ? true : nil, terminal: terminal?.size),
                at: socket.path)
        }
    }
}
