// A job's control group: its guests' VMMs and file servers are charged to it, bounded by it, and seen
// together by it. Supported layout: cgroup v1 (what Debian's Slurm 22.05 runs on here, a hybrid with
// each controller mounted under /sys/fs/cgroup/<controller>): one directory per job in each of the
// memory, cpuset, pids and cpuacct hierarchies, `slurm-vm_<node>/job_<id>` (the node's name keeps two
// slurm-vmds on one host apart, as Slurm's own `slurm_<node>` does). Slurm's job cgroup is not used:
// with PrologFlags=Alloc it does not exist yet when the prolog runs, and Slurm removes it on its own
// schedule, while the guests' must outlive every step and go only at the epilog.
//
// Limits: memory (the guests' RAM plus a stated overhead per guest; the VMM is killed by the kernel's
// OOM killer if it is exceeded), cpuset (the job's CPUs: vCPUs and housekeeping), pids (the VMMs'
// and file servers' threads). Processes join from the child before exec (SpawnOptions.cgroups), so
// nothing they allocate escapes the charge.

import Foundation
import Support
#if canImport(Glibc)
import Glibc
#endif

public struct JobCgroup: Sendable, Equatable {
    public static let controllers = ["memory", "cpuset", "pids", "cpuacct"]
    /// Threads allowed per guest (a VMM: vCPUs, I/O and worker threads; a virtiofsd: its pool).
    public static let threadsPerGuest = 256

    public let root: String
    public let node: String
    public let job: UInt32

    public init(root: String = "/sys/fs/cgroup", node: String, job: UInt32) {
        self.root = root; self.node = node; self.job = job
    }

    public var relativePath: String { "slurm-vm_\(node)/job_\(job)" }
    /// The job's directory in each controller.
    public var directories: [String] { Self.controllers.map { "\(root)/\($0)/\(relativePath)" } }

    /// Whether this host has the v1 hierarchies; nil when it has, else why not.
    public static func unsupported(root: String = "/sys/fs/cgroup") -> String? {
        let missing = controllers.filter { !Files.exists("\(root)/\($0)/cgroup.procs") }
        if missing.isEmpty { return nil }
        if Files.exists("\(root)/cgroup.controllers") {
            return "this host has the unified cgroup v2 hierarchy only; slurm-vm supports cgroup v1 (guests run, but are not charged to a job cgroup)"
        }
        return "cgroup v1 controller(s) \(missing.joined(separator: ", ")) are not mounted under \(root)"
    }

    /// Creates the job's cgroups (replacing a leftover of the same job) with its limits.
    public func create(cpus: [Int], memoryBytes: UInt64, guests: Int) throws {
        remove()
        for c in Self.controllers {
            let parent = "\(root)/\(c)/slurm-vm_\(node)"
            let dir = "\(root)/\(c)/\(relativePath)"
            for d in [parent, dir] where !Files.isDirectory(d) {
                guard mkdir(d, 0o755) == 0 || errno == EEXIST else {
                    throw RunnerError.spawn("cannot create cgroup \(d): \(String(cString: strerror(errno)))")
                }
                // A v1 cpuset takes no process until it has CPUs and memory nodes: the parent's.
                if c == "cpuset" {
                    let up = URL(fileURLWithPath: d).deletingLastPathComponent().path
                    for f in ["cpuset.cpus", "cpuset.mems"] { try write(d, f, read(up, f)) }
                }
            }
        }
        try write("\(root)/cpuset/\(relativePath)", "cpuset.cpus", CPUList(Array(Set(cpus)).sorted()).description)
        try write("\(root)/memory/\(relativePath)", "memory.limit_in_bytes", String(memoryBytes))
        try write("\(root)/pids/\(relativePath)", "pids.max", String(max(1, guests) * Self.threadsPerGuest))
    }

    /// Ends whatever is still in the job's cgroups, then removes them. Idempotent.
    public func remove() {
        for d in directories where Files.isDirectory(d) {
            for _ in 0..<50 {
                let pids = ((try? read(d, "cgroup.procs")) ?? "").split(separator: "\n").compactMap { Int32($0) }
                if pids.isEmpty { break }
                for p in pids { kill(p, SIGKILL) }
                usleep(20_000)
            }
            rmdir(d)
        }
    }

    /// Whether any of the job's cgroups still exists.
    public var exists: Bool { directories.contains { Files.isDirectory($0) } }

    /// How many of the job's processes the kernel's OOM killer has ended (memory.oom_control).
    public var oomKills: Int? {
        guard let t = try? read("\(root)/memory/\(relativePath)", "memory.oom_control") else { return nil }
        return t.split(separator: "\n").first { $0.hasPrefix("oom_kill ") }.flatMap { Int($0.split(separator: " ").last ?? "") }
    }

    /// Jobs with cgroups under this node's directory (after a crash, to find leftovers).
    public static func jobs(root: String = "/sys/fs/cgroup", node: String) -> [UInt32] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "\(root)/memory/slurm-vm_\(node)")) ?? []
        return names.compactMap { $0.hasPrefix("job_") ? UInt32($0.dropFirst(4)) : nil }
    }

    private func read(_ dir: String, _ file: String) throws -> String {
        try String(contentsOfFile: "\(dir)/\(file)", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func write(_ dir: String, _ file: String, _ value: String) throws {
        let fd = open("\(dir)/\(file)", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw RunnerError.spawn("cannot open \(dir)/\(file): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        guard bytes.withUnsafeBytes({ Glibc.write(fd, $0.baseAddress, $0.count) }) == bytes.count else {
            throw RunnerError.spawn("cannot set \(dir)/\(file) to \(value): \(String(cString: strerror(errno)))")
        }
    }
}
