// Runner failures, each saying what was wrong and what to do.

public enum RunnerError: Error, CustomStringConvertible {
    case invalidRequest(String)
    case vmmMissing(String)
    case spawn(String)
    case pinning(String)
    case qmp(String)
    case bootFailed(String, consoleTail: String)
    case notReady(String, consoleTail: String)
    case noSuchGuest(String)
    case unsupported(String)

    public var description: String {
        switch self {
        case .invalidRequest(let s), .vmmMissing(let s), .spawn(let s), .pinning(let s), .qmp(let s), .unsupported(let s): return s
        case .noSuchGuest(let s): return "no guest '\(s)' (see `slurm-vm vm ls`)"
        case .bootFailed(let s, let tail), .notReady(let s, let tail):
            return tail.isEmpty ? s + " (the guest console was empty)" : s + "\nlast lines of the guest console:\n" + tail
        }
    }
}
