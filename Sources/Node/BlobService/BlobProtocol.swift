// The catalog role's blob service, one request per connection, as both ends speak it: the node cache
// (Cache/ImageCache+Catalog.swift) writes requests and reads replies, slurm-vmd (Daemon's API) reads
// requests and writes replies.
//
//   "GET sha256:<hex>"                                → "OK <size>" then exactly <size> bytes, or "ERR <message>"
//   "RECORD sha256:<hex> [NAME:VERSION]"              → the image record as JSON, framed as GET's
//   "BROADCAST sha256:<hex> JOB JOB-NODES NODE HOST:PORT|HAVE"
//                                                     → "PLAN TRANSFER RANK CHUNK-SIZE ADDR,ADDR,…" once the
//                                                       job's group is planned, "HELD" to a node that holds
//                                                       the blob, or "ERR <message>"
//
// A node joining a broadcast listens at HOST:PORT; "HAVE" says it holds the blob and only counts
// towards the group. Images may share a digest (same artefacts, other names), so RECORD may name one.

import Support

public enum BlobRequest: Equatable, Sendable {
    case get(digest: String)
    case record(digest: String, label: String?)
    /// `address` nil: the node holds the blob (HAVE).
    case broadcast(digest: String, job: String, jobNodes: Int, node: String, address: String?)

    public var line: String {
        switch self {
        case .get(let d): return "GET \(d)"
        case .record(let d, let l): return "RECORD \(d)" + (l.map { " " + $0 } ?? "")
        case .broadcast(let d, let j, let n, let node, let a): return "BROADCAST \(d) \(j) \(n) \(node) \(a ?? "HAVE")"
        }
    }

    /// Reads a request line; an error says what a well-formed one looks like.
    public static func parse(_ line: String) throws(NodeError) -> BlobRequest {
        let f = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard let verb = f.first, f.count >= 2, Digests.isSHA256(f[1]) else {
            throw .protocolViolation(
                "expected GET|RECORD sha256:<64 hex digits> [NAME:VERSION] or BROADCAST sha256:<64 hex digits> JOB JOB-NODES NODE HOST:PORT|HAVE")
        }
        switch verb {
        case "GET" where f.count == 2: return .get(digest: f[1])
        case "RECORD" where f.count <= 3: return .record(digest: f[1], label: f.count == 3 ? f[2] : nil)
        case "BROADCAST":
            guard f.count == 6, let n = Int(f[3]), n >= 1, !f[2].isEmpty, !f[4].isEmpty, !f[5].isEmpty else {
                throw .protocolViolation("expected BROADCAST sha256:<64 hex digits> JOB JOB-NODES NODE HOST:PORT|HAVE")
            }
            return .broadcast(digest: f[1], job: f[2], jobNodes: n, node: f[4], address: f[5] == "HAVE" ? nil : f[5])
        default:
            throw .protocolViolation("unknown request \(verb) (known: GET, RECORD, BROADCAST)")
        }
    }
}

public enum BlobReply: Equatable, Sendable {
    /// `size` bytes follow.
    case ok(size: Int64)
    case error(String)
    case plan(transfer: String, rank: Int, chunkSize: Int, addresses: [String])
    case held

    public var line: String {
        switch self {
        case .ok(let n): return "OK \(n)"
        case .error(let e): return "ERR " + e.split(whereSeparator: \.isNewline).joined(separator: " ")
        case .plan(let t, let r, let c, let a): return "PLAN \(t) \(r) \(c) \(a.joined(separator: ","))"
        case .held: return "HELD"
        }
    }

    public static func parse(_ line: String) throws(NodeError) -> BlobReply {
        if line.hasPrefix("ERR ") { return .error(String(line.dropFirst(4))) }
        if line == "HELD" { return .held }
        let f = line.split(separator: " ").map(String.init)
        if f.count == 2, f[0] == "OK", let n = Int64(f[1]), n >= 0 { return .ok(size: n) }
        if f.count == 5, f[0] == "PLAN", let r = Int(f[2]), let c = Int(f[3]) {
            return .plan(transfer: f[1], rank: r, chunkSize: c, addresses: f[4].split(separator: ",").map(String.init))
        }
        throw .protocolViolation("'\(line.prefix(80))' is not a blob service reply (OK SIZE, PLAN …, HELD or ERR …)")
    }
}
