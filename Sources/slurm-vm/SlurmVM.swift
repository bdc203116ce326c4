// slurm-vm: the admin and user command line.

import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif

@main
struct SlurmVM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slurm-vm",
        abstract: "VM-on-demand jobs for Slurm: image matching, catalog and guests.",
        subcommands: [
            ImageCommand.self, MatchCommand.self, VMCommand.self, JobCommand.self, JobsCommand.self, ClassAdCommand.self, BenchCommand.self,
            BroadcastCommand.self,
            CacheCommand.self,
        ])

    /// Writes to a pipe or socket whose reader is gone must fail with EPIPE, never kill the CLI
    /// halfway through tearing guests down.
    static func main() {
        signal(SIGPIPE, SIG_IGN)
        // Started by the SPANK plugin in place of a task's argv[0]: run the task in a guest.
        if TaskWrapper.active { TaskWrapper.main() }
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            exit(withError: error)
        }
    }
}
