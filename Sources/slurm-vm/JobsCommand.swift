// `slurm-vm jobs`: the VM jobs of this node, as its slurm-vmd knows them (its `jobs` call): a user
// sees their own, root every job.

import ArgumentParser
import Daemon
import Foundation
import Node
import Runner
#if canImport(Glibc)
import Glibc
#endif

struct JobsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "jobs", abstract: "List this node's VM jobs: their guests, backend, image, CPUs, memory, state and boot time.")
    @Flag(help: "JSON output (each job's full record).") var json = false
    @OptionGroup var socket: NodeSocketOption

    func run() throws {
        try reporting {
            let conn = try LineConnection.connect(socket.path)
            try conn.send(Call.jobs)
            guard let reply = try conn.read(Reply.self) else { throw ValidationError("slurm-vmd at \(socket.path) closed the connection") }
            guard reply.ok else { throw ValidationError(reply.error ?? "slurm-vmd refused the job list") }
            let jobs = (reply.jobs ?? []).sorted { $0.job < $1.job }
            if json {
                let e = JSONEncoder()
                e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
                e.dateEncodingStrategy = .iso8601
                print(String(decoding: try e.encode(jobs), as: UTF8.self))
                return
            }
            if jobs.isEmpty { print("no VM jobs on this node"); return }
            print(table(["JOB", "USER", "STATE", "IMAGE", "GUESTS", "BACKEND", "CPUS", "MEM", "BOOT", "AGE"], jobs.map(Self.row)))
            for j in jobs where j.error != nil { print("job \(j.job): \(j.error!)") }
        }
    }

    static func row(_ j: JobState) -> [String] {
        let user = getpwuid(j.uid).map { String(cString: $0.pointee.pw_name) } ?? String(j.uid)
        return [
            String(j.job), user, j.phase.rawValue, j.imageLabel, j.guests.isEmpty ? "-" : String(j.guests.count), j.backend ?? "-",
            j.cpus.map { CPUList($0).description } ?? "-", j.memoryMB.map { "\($0)M" } ?? "-",
            j.prepareSeconds.map { String(format: "%.2fs", $0) } ?? "-", "\(Int(Date().timeIntervalSince(j.created)))s",
        ]
    }
}
