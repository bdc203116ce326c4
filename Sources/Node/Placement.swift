// Where a job's guests go: how many of the job's --vm-count guests this node runs, and which of the
// job's cores on this node each guest's vCPUs are pinned to. Pure functions, tested without guests.

import Catalog
import Runner

public struct NodeShare: Sendable, Equatable, Codable {
    /// Guests on this node.
    public var guests: Int
    /// Job-wide index of this node's first guest (guest names and task spreading use it).
    public var firstIndex: Int
    public init(guests: Int, firstIndex: Int) { self.guests = guests; self.firstIndex = firstIndex }
}

public struct GuestPlacement: Sendable, Equatable, Codable {
    public var share: NodeShare
    public var vcpus: Int
    /// The runner's plan: each guest's host CPUs (one per vCPU, disjoint) and the housekeeping CPUs
    /// for the VMMs' other threads (the job's spare cores, else the guests' own).
    public var plan: CPUPlan
    public var perGuest: [[Int]] { plan.perGuest }
    public var housekeeping: [Int] { plan.housekeeping }
    public var warnings: [String] { plan.warnings }
}

public enum Placement {
    /// Splits `count` guests over `nodes` nodes as evenly as possible, the first nodes taking one more
    /// when it does not divide (as Slurm spreads tasks with the default block distribution).
    /// Without --vm-count a job gets one guest per node.
    public static func share(count: Int?, nodes: Int, index: Int) throws -> NodeShare {
        guard nodes >= 1, index >= 0, index < nodes else {
            throw NodeError.placement("node index \(index) is outside the job's \(nodes) nodes")
        }
        let total = count ?? nodes
        guard total >= nodes else {
            throw NodeError.placement(
                "--vm-count=\(total) is fewer than the job's \(nodes) nodes; every node needs at least one guest (ask for -N\(total) or more guests)")
        }
        let base = total / nodes, extra = total % nodes
        let here = base + (index < extra ? 1 : 0)
        let first = index * base + min(index, extra)
        return NodeShare(guests: here, firstIndex: first)
    }

    /// Places this node's guests on the job's cores here, each with the vCPUs decided at submission.
    /// Space sharing: a vCPU never shares a core with another vCPU, and guests that do not fit the
    /// job's cores here are an error that says what to ask Slurm for.
    public static func place(
        share: NodeShare, sizing: Sizing, jobCPUs: [Int], node: String,
        allowed: CPUList
    ) throws -> GuestPlacement {
        guard !jobCPUs.isEmpty else { throw NodeError.placement("the job has no CPUs on node \(node)") }
        let vcpus = sizing.vcpus
        let need = share.guests * vcpus
        guard need <= jobCPUs.count else {
            throw NodeError.placement(
                "the job has \(jobCPUs.count) core\(jobCPUs.count == 1 ? "" : "s") on node \(node) (CPUs \(CPUList(jobCPUs))) but \(share.guests) guest\(share.guests == 1 ? "" : "s") × \(sizing.vcpusOrigin) need \(need), one core per vCPU; ask Slurm for more cores per node (e.g. --ntasks-per-node=\(need), --cpus-per-task or --exclusive) or for fewer or smaller guests"
            )
        }
        do {
            let p = try CPUPlanner.plan(count: share.guests, vcpus: vcpus, cpus: CPUList(jobCPUs), housekeeping: nil, allowed: allowed)
            return GuestPlacement(share: share, vcpus: vcpus, plan: p)
        } catch let e as RunnerError {
            throw NodeError.placement("\(e)")
        }
    }

    /// Which of this node's guests runs a task: tasks are dealt round-robin by their local id, so
    /// `srun -n4` over 4 guests gives each guest one task.
    public static func guest(forLocalTask localID: Int, guests: Int) -> Int {
        guests <= 0 ? 0 : ((localID % guests) + guests) % guests
    }
}
