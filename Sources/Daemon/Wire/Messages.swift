// The socket API's messages as types: one JSON object per line, the first line of a connection is
// a Call ({"op": …}), the daemon answers with one Reply; `exec` then streams (ExecSignal up,
// ExecEnd down). The SPANK plugin writes and reads the same JSON in C (Plugin/src/submit.c,
// prolog.c); the task wrapper and the tests use these types.

import Catalog
import Foundation
import Node
import Runner

/// The first line of a connection.
public enum Call: Sendable, Equatable {
    case ping
    case match(MatchCall)
    case prepare(PrepareRequest)
    case teardown(job: UInt32)
    case jobs
    case exec(ExecCall)

    public static let operations = ["ping", "match", "prepare", "teardown", "jobs", "exec"]
}

/// sbatch/salloc/srun's request to match (the plugin's submit.c).
public struct MatchCall: Codable, Sendable, Equatable {
    /// The --vm-* values by option name without "--vm-".
    public var options: [String: String]
    /// The submitting command (its job-size options decide vCPUs when --vm-vcpus is absent).
    public var command: SubmitCommand?
    /// The cluster's node sizes, from slurmctld.
    public var nodeCPUs: NodeCPUs?
    public var account: String?
    public var partition: String?
    enum CodingKeys: String, CodingKey { case options, command, nodeCPUs = "node_cpus", account, partition }

    public init(options: [String: String], command: SubmitCommand? = nil, nodeCPUs: NodeCPUs? = nil, account: String? = nil, partition: String? = nil)
    {
        self.options = options; self.command = command; self.nodeCPUs = nodeCPUs; self.account = account; self.partition = partition
    }
}

/// A task of a job, to run in one of its guests (the task wrapper; stdin, stdout and stderr attached).
public struct ExecCall: Codable, Sendable, Equatable {
    public var job: UInt32
    public var argv: [String]
    public var env: [String]
    public var cwd: String
    /// SLURM_LOCALID: which of the node's guests runs it (round-robin).
    public var localid: Int
    /// Run as root in the guest rather than as the job's owner: only root on the node may ask (an
    /// admin looking into a job's guests; root there gains nothing it lacks on the node).
    public var root: Bool?
    /// The task has a terminal (srun --pty): the command gets one of this size in the guest.
    public var terminal: TerminalSize?
    public init(job: UInt32, argv: [String], env: [String], cwd: String, localid: Int, root: Bool? = nil, terminal: TerminalSize? = nil) {
        self.job = job; self.argv = argv; self.env = env; self.cwd = cwd; self.localid = localid; self.root = root
        self.terminal = terminal
    }
}

extension Call: Codable {
    enum Key: String, CodingKey { case op, prepare, job }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        let op = try c.decodeIfPresent(String.self, forKey: .op) ?? ""
        switch op {
        case "ping": self = .ping
        case "jobs": self = .jobs
        case "match": self = .match(try MatchCall(from: decoder))
        case "prepare": self = .prepare(try c.decode(PrepareRequest.self, forKey: .prepare))
        case "teardown": self = .teardown(job: try c.decode(UInt32.self, forKey: .job))
        case "exec":
            let e = try ExecCall(from: decoder)
            guard !e.argv.isEmpty else { throw DaemonError.malformed("exec needs a non-empty \"argv\"") }
            self = .exec(e)
        default:
            throw DaemonError.malformed("unknown operation '\(op)' (known: \(Call.operations.joined(separator: ", ")))")
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        switch self {
        case .ping: try c.encode("ping", forKey: .op)
        case .jobs: try c.encode("jobs", forKey: .op)
        case .match(let m): try c.encode("match", forKey: .op); try m.encode(to: encoder)
        case .prepare(let p): try c.encode("prepare", forKey: .op); try c.encode(p, forKey: .prepare)
        case .teardown(let j): try c.encode("teardown", forKey: .op); try c.encode(j, forKey: .job)
        case .exec(let e): try c.encode("exec", forKey: .op); try e.encode(to: encoder)
        }
    }
}

/// The daemon's answer to a call: {"ok": true, …} with the fields of the call's result, or
/// {"ok": false, "error": "…"}.
public struct Reply: Codable, Sendable, Equatable {
    public var ok: Bool
    public var error: String?
    /// ping: the daemon's roles.
    public var roles: [String]?
    /// match: the chosen image's label and digest, and the accepted request (the plugin's VM_REQUEST).
    public var image: String?
    public var digest: String?
    public var request: AcceptedRequest?
    /// prepare: the job's phase on this node, its guests, and the seconds it took.
    public var phase: JobState.Phase?
    public var guests: [String]?
    public var seconds: Double?
    /// teardown: guests destroyed.
    public var destroyed: Int?
    /// jobs: this node's VM jobs (the caller's own unless privileged).
    public var jobs: [JobState]?
    /// exec: the guest that runs the task.
    public var guest: String?

    public init(ok: Bool = true, error: String? = nil) { self.ok = ok; self.error = error }
    public static func failure(_ e: String) -> Reply { Reply(ok: false, error: e) }
}

/// exec, client to daemon while the task runs: a signal for the task, or its terminal's new size.
public struct ExecControl: Codable, Sendable, Equatable {
    public var signal: Int32?
    public var resize: TerminalSize?
    public init(signal: Int32) { self.signal = signal }
    public init(resize: TerminalSize) { self.resize = resize }
}

/// exec, the daemon's last line: how the task ended (exit code, or the signal that killed it).
public struct ExecEnd: Codable, Sendable, Equatable {
    public var exit: Int32?
    public var signal: Int32?
    public var error: String?
    public init(exit: Int32?, signal: Int32?, error: String? = nil) { self.exit = exit; self.signal = signal; self.error = error }

    /// Both keys are always written (null when absent): the wrapper tells this line by them.
    enum CodingKeys: String, CodingKey { case exit, signal, error }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(exit, forKey: .exit)
        try c.encode(signal, forKey: .signal)
        try c.encodeIfPresent(error, forKey: .error)
    }
}

extension LineConnection {
    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        e.dateEncodingStrategy = .iso8601
        return e
    }()

    /// Writes one message as a line (with descriptors attached, if any).
    public func send<T: Encodable>(_ message: T, fds: [Int32] = []) throws {
        try sendLine(try Self.encoder.encode(message), fds: fds)
    }

    /// The next line as a `T`; nil at the end of the stream. A line that is not a `T` is an error
    /// that says what was wrong with it.
    public func read<T: Decodable>(_ type: T.Type) throws -> T? {
        guard let line = try readLine() else { return nil }
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        do { return try d.decode(T.self, from: Data(line.utf8)) } catch let e as DaemonError { throw e } catch {
            throw DaemonError.malformed("malformed \(T.self) (\(Self.explain(error))): \(line.prefix(120))")
        }
    }

    static func explain(_ error: Error) -> String {
        switch error as? DecodingError {
        case .keyNotFound(let k, let ctx)?: return "\(path(ctx.codingPath + [k])) is missing"
        case .typeMismatch(let t, let ctx)?: return "\(path(ctx.codingPath)) is not a \(t)"
        case .valueNotFound(let t, let ctx)?: return "\(path(ctx.codingPath)) is null, not a \(t)"
        case .dataCorrupted(let ctx)?: return ctx.codingPath.isEmpty ? "not JSON" : "\(path(ctx.codingPath)): \(ctx.debugDescription)"
        default: return "\(error)"
        }
    }

    static func path(_ keys: [CodingKey]) -> String {
        keys.map { $0.intValue.map { "[\($0)]" } ?? "\"\($0.stringValue)\"" }.joined(separator: ".")
    }
}
