// What a node knows about each VM job, on disk: one JSON file per job under <state>/jobs, written by
// temporary file + rename, so a daemon killed at any moment restarts from a whole record. The guests'
// own records (pid, vCPU threads, sockets) live in the run directory (Runner's GuestRecords).

import Catalog
import Foundation
import Network
import Support
#if canImport(Glibc)
import Glibc
#endif

/// The prolog's request for one node, as the SPANK plugin sends it.
public struct PrepareRequest: Codable, Sendable, Equatable {
    public var job: UInt32
    public var uid: UInt32
    public var gid: UInt32
    /// The request accepted at submission (the plugin's VM_REQUEST): the options and the chosen image.
    public var request: AcceptedRequest
    public var node: String
    public var nodeIndex: Int
    public var nodeCount: Int
    /// The job's CPUs on this node, as Slurm lists them ("0-3,8").
    public var cpus: String
    /// The job's working directory (shared into the guests).
    public var workdir: String?
    /// The job's nodes' addresses in node-list order (slurmctld's NodeAddr): its network's tunnels.
    public var nodeAddresses: [String]?

    public init(
        job: UInt32, uid: UInt32, gid: UInt32, request: AcceptedRequest, node: String, nodeIndex: Int,
        nodeCount: Int, cpus: String, workdir: String?
    ) {
        self.job = job; self.uid = uid; self.gid = gid; self.request = request; self.node = node
        self.nodeIndex = nodeIndex; self.nodeCount = nodeCount; self.cpus = cpus; self.workdir = workdir
    }
}

public struct JobState: Codable, Sendable, Equatable {
    /// lost: the guests were ready, then one of them ended (its VMM killed, its kernel panicked);
    /// `error` says which and how, and every later task fails with it.
    public enum Phase: String, Codable, Sendable { case preparing, ready, failed, lost }
    public var job: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var node: String
    public var phase: Phase
    /// Why the job's guests could not be prepared (tasks fail with it).
    public var error: String?
    public var image: String
    public var imageLabel: String
    public var placement: GuestPlacement?
    /// Guest ids in job-wide order of this node's share.
    public var guests: [String]
    public var workdir: String?
    public var created: Date
    /// Seconds from the prolog's request to every agent ready.
    public var prepareSeconds: Double?
    /// How many guests the job's network holds (all nodes); nil: the job has no network. Its devices
    /// and names follow from the job id (JobNetworkPlan).
    public var networkGuests: Int?
    /// What booted the guests ("embedded", "qemu/tcg"), each guest's memory, and the host CPUs the
    /// guests run on (vCPUs and housekeeping): for `slurm-vm jobs`.
    public var backend: String?
    public var memoryMB: Int?
    public var cpus: [Int]?

    public init(
        job: UInt32, uid: UInt32, gid: UInt32, node: String, phase: Phase, error: String?, image: String,
        imageLabel: String, placement: GuestPlacement?, guests: [String], workdir: String?, created: Date,
        prepareSeconds: Double?
    ) {
        self.job = job; self.uid = uid; self.gid = gid; self.node = node; self.phase = phase; self.error = error
        self.image = image; self.imageLabel = imageLabel; self.placement = placement; self.guests = guests
        self.workdir = workdir; self.created = created; self.prepareSeconds = prepareSeconds
    }
}

public struct JobStore: Sendable {
    public let dir: String

    public init(stateDir: String) throws {
        dir = stateDir + "/jobs"
        try Files.mkdirs(dir, mode: 0o755)
    }

    func path(_ job: UInt32) -> String { "\(dir)/\(job).json" }

    public func save(_ s: JobState) throws {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        e.dateEncodingStrategy = .iso8601
        try Files.writeAtomically(try e.encode(s), to: path(s.job), mode: 0o644)
    }

    public func load(_ job: UInt32) -> JobState? {
        guard let d = FileManager.default.contents(atPath: path(job)) else { return nil }
        let dec = JSONDecoder()
        dec.dateDecodingStrategy = .iso8601
        return try? dec.decode(JobState.self, from: d)
    }

    public func remove(_ job: UInt32) {
        unlink(path(job))
        Files.syncDirectory(dir)
    }

    public func all() -> [JobState] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.compactMap { n in n.hasSuffix(".json") ? UInt32(n.dropLast(5)).flatMap(load) : nil }.sorted { $0.job < $1.job }
    }
}

extension JobState {
    /// This node's taps on the job's network (removed with the job; the bridge goes with the last).
    public var networkTaps: [String] {
        guard networkGuests != nil, let s = placement?.share else { return [] }
        return (s.firstIndex..<(s.firstIndex + s.guests)).map { JobNetworkPlan.tapName(job, guest: $0) }
    }

    /// Every guest of the job on its network, in job-wide order (the tasks' SLURM_VM_HOSTS).
    public var networkHosts: [String] { (0..<(networkGuests ?? 0)).map { JobNetworkPlan.hostname(job: job, guest: $0) } }
}
