// What can go wrong with a node's share of a job, by kind; each message says what was wrong and what to
// do. Per-job errors end up in the job's state and in its tasks' stderr, never in a failed prolog.

public enum NodeError: Error, CustomStringConvertible, Equatable {
    /// The job's guests do not fit what Slurm gave it on this node.
    case placement(String)
    /// Someone asked about a job that is not theirs.
    case notOwner(job: UInt32, owner: UInt32, caller: UInt32)
    /// The job has no usable guests here (not a VM job, not prepared, failed, not ready, lost).
    case noGuests(String)
    /// The node cache cannot make room, or an image in it is in use or absent.
    case cache(String)
    /// The catalog role's blob service could not be reached or did not deliver.
    case catalog(String)
    /// A peer broke the blob service's protocol.
    case protocolViolation(String)
    /// What arrived does not hash to what it claims.
    case corrupt(String)
    /// A local file could not be written.
    case io(String)

    public var description: String {
        switch self {
        case .placement(let s), .noGuests(let s), .cache(let s), .catalog(let s), .protocolViolation(let s), .corrupt(let s), .io(let s):
            return s
        case .notOwner(let job, let owner, let caller): return "job \(job) belongs to uid \(owner), not to uid \(caller)"
        }
    }
}
