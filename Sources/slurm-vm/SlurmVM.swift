// slurm-vm: the admin and user command line.

import ArgumentParser

@main
struct SlurmVM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slurm-vm",
        abstract: "VM-on-demand jobs for Slurm: image matching, catalog and guests.",
        subcommands: [ImageCommand.self, MatchCommand.self, VMCommand.self, ClassAdCommand.self, BenchCommand.self])
}
