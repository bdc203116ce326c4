// `slurm-vm bench …`: performance measurements, reported as rates and ratios.

import ArgumentParser
import ClassAd
import Foundation

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench", abstract: "Benchmarks.", subcommands: [])
}
