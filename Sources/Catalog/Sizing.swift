// How many guests a job gets and how many vCPUs each: decided here, once, at submission. The job ad
// carries these numbers (so the matcher rules out an image that cannot hold them, with its
// explanation), the accepted request carries them to the nodes, and the prolog places exactly them.

/// The CPU counts of the cluster's nodes, as slurmctld reports them (the plugin asks at submission).
public struct NodeCPUs: Codable, Sendable, Equatable {
    public var smallest: Int
    public var largest: Int
    public init(smallest: Int, largest: Int) { self.smallest = smallest; self.largest = largest }
}

public struct Sizing: Codable, Sendable, Equatable {
    /// Guests for the whole job: --vm-count, else one per node.
    public var guests: Int
    /// vCPUs per guest: --vm-vcpus, else the job's cores on a node shared among that node's guests.
    public var vcpus: Int
    /// Whether the user gave --vm-vcpus (the explanation of a refusal says where the number came from).
    public var vcpusGiven: Bool
    /// The nodes and cores per node the derivation assumed from the job's shape.
    public var nodes: Int
    public var coresPerNode: Int

    public init(guests: Int, vcpus: Int, vcpusGiven: Bool, nodes: Int, coresPerNode: Int) {
        self.guests = guests; self.vcpus = vcpus; self.vcpusGiven = vcpusGiven; self.nodes = nodes
        self.coresPerNode = coresPerNode
    }

    /// The most guests any one node runs (the first nodes take one more when they do not divide).
    public var guestsPerNode: Int { (guests + nodes - 1) / nodes }

    /// Where the vCPU count came from, for messages.
    public var vcpusOrigin: String {
        vcpusGiven
            ? "--vm-vcpus=\(vcpus)"
            : "\(vcpus) vCPU\(vcpus == 1 ? "" : "s") per guest (the job's \(coresPerNode) core\(coresPerNode == 1 ? "" : "s") per node over \(guestsPerNode) guest\(guestsPerNode == 1 ? "" : "s") per node; set --vm-vcpus or --vm-count to change it)"
    }
}

extension VMRequest {
    /// Decides the job's guests and vCPUs from the options and the job's shape. `nodeCPUs` (when
    /// known) rules out what no node could hold.
    public func sizing(shape: JobShape, nodeCPUs: NodeCPUs?) throws(Invalid) -> Sizing {
        let cpusPerTask = shape.cpusPerTask ?? 1
        // Nodes: as asked; else as many as the tasks need when the largest node is known; else one.
        var nodes = shape.nodes ?? 1
        if shape.nodes == nil, let t = shape.tasks {
            if let tpn = shape.tasksPerNode {
                nodes = (t + tpn - 1) / tpn
            } else if let n = nodeCPUs, n.largest > 0 {
                nodes = max(1, (t * cpusPerTask + n.largest - 1) / n.largest)
            }
        }
        // Cores per node: whole nodes; else the tasks per node (an even share of -n, rounded down, is
        // what every node gets at least); else Slurm's default of one task per node.
        let coresPerNode: Int
        if shape.exclusive, let n = nodeCPUs {
            coresPerNode = n.smallest
        } else if let tpn = shape.tasksPerNode {
            coresPerNode = tpn * cpusPerTask
        } else if let t = shape.tasks {
            coresPerNode = max(1, t / nodes) * cpusPerTask
        } else {
            coresPerNode = cpusPerTask
        }

        let guests = count ?? nodes
        if guests < nodes {
            throw Invalid(
                option: "--vm-count",
                reason:
                    "\(guests) is fewer than the job's \(nodes) nodes; every node needs at least one guest (ask for -N\(guests) or --vm-count=\(nodes) or more)"
            )
        }
        let perNode = (guests + nodes - 1) / nodes
        let derived = max(1, coresPerNode / perNode)
        let s = Sizing(guests: guests, vcpus: vcpus ?? derived, vcpusGiven: vcpus != nil, nodes: nodes, coresPerNode: coresPerNode)
        if s.vcpus > Self.maxVCPUs {
            throw Invalid(option: "--vm-vcpus", reason: "\(s.vcpus) is out of range (1 to \(Self.maxVCPUs))")
        }
        if let n = nodeCPUs, n.largest > 0 {
            if s.vcpus > n.largest {
                throw Invalid(
                    option: "--vm-vcpus",
                    reason: "\(s.vcpus) vCPUs per guest is more than the largest node has (\(n.largest) CPUs); each vCPU needs a core of its own")
            }
            if shape.nodes != nil, perNode * s.vcpus > n.largest {
                throw Invalid(
                    option: "--vm-count",
                    reason:
                        "\(guests) guests on \(nodes) node\(nodes == 1 ? "" : "s") put \(perNode) guests × \(s.vcpus) vCPU\(s.vcpus == 1 ? "" : "s") on a node, and the largest has \(n.largest) CPUs; each vCPU needs a core of its own (ask for more nodes, fewer guests or fewer vCPUs)"
                )
            }
        }
        return s
    }
}
