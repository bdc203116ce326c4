// The host side of the agent protocol (Images/agent/protocol.h is the reference): frame encoding and a
// decoder that resynchronises on garbage. Pure values, no I/O, so it is tested byte for byte.

import Foundation

public enum AgentFrameType: UInt8, Sendable {
    case hello = 0x01, exec = 0x02, stdin = 0x03, signal = 0x04, shutdown = 0x05, relay = 0x06, resize = 0x07
    case ready = 0x81, started = 0x82, stdout = 0x83, stderr = 0x84, exit = 0x85, stdinAck = 0x86, error = 0x87, relayOut = 0x88
}

public struct AgentFrame: Equatable, Sendable {
    public var type: UInt8
    public var session: UInt32
    public var payload: [UInt8]
    public init(_ type: AgentFrameType, session: UInt32 = 0, payload: [UInt8] = []) {
        self.type = type.rawValue; self.session = session; self.payload = payload
    }
    public init(rawType: UInt8, session: UInt32, payload: [UInt8]) { type = rawType; self.session = session; self.payload = payload }

    public static let magic: UInt16 = 0x5653
    public static let headerSize = 12
    public static let maxPayload = 1 << 20
    public static let stdinWindow = 256 << 10

    public var encoded: [UInt8] {
        var out = [UInt8](); out.reserveCapacity(Self.headerSize + payload.count)
        out += [UInt8(Self.magic & 0xff), UInt8(Self.magic >> 8), type, 0]
        out.appendLE(session)
        out.appendLE(UInt32(payload.count))
        out += payload
        return out
    }
}

/// Splits a byte stream into frames. Bytes that cannot start a frame (bad magic, impossible length)
/// are skipped one at a time, counted in `skipped`.
public struct AgentFrameDecoder: Sendable {
    var buffer: [UInt8] = []
    var start = 0
    public private(set) var skipped = 0
    public init() {}

    public mutating func feed(_ bytes: some Sequence<UInt8>) { buffer.append(contentsOf: bytes) }

    public mutating func next() -> AgentFrame? {
        while buffer.count - start >= AgentFrame.headerSize {
            let h = start
            let magic = UInt16(buffer[h]) | UInt16(buffer[h + 1]) << 8
            let len = Int(buffer.readLE32(at: h + 8))
            if magic != AgentFrame.magic || len > AgentFrame.maxPayload { start += 1; skipped += 1; continue }
            guard buffer.count - start >= AgentFrame.headerSize + len else { break }
            let f = AgentFrame(
                rawType: buffer[h + 2], session: buffer.readLE32(at: h + 4),
                payload: Array(buffer[(h + AgentFrame.headerSize)..<(h + AgentFrame.headerSize + len)]))
            start += AgentFrame.headerSize + len
            compact()
            return f
        }
        compact()
        return nil
    }

    mutating func compact() {
        if start > 0 && (start >= buffer.count || start > 1 << 16) {
            buffer.removeFirst(start)
            start = 0
        }
    }

    public mutating func reset() { buffer = []; start = 0 }
}

/// What the agent reports when it is ready.
public struct GuestInfo: Sendable, Equatable, Codable {
    public var nonce: UInt64
    public var uptimeMs: UInt64
    public var cpus: UInt32
    public var memoryKB: UInt64
    public var hostname: String
    public var kernelRelease: String
    public var agentVersion: String
}

/// A command to run in a guest.
/// A terminal's size in character cells.
public struct TerminalSize: Sendable, Equatable, Codable {
    public var rows: UInt32
    public var columns: UInt32
    public init(rows: UInt32, columns: UInt32) { self.rows = rows; self.columns = columns }
}

public struct ExecRequest: Sendable, Equatable {
    public var argv: [String]
    public var env: [String]
    public var cwd: String
    public var uid: UInt32
    public var gid: UInt32
    public var groups: [UInt32]
    /// The command gets a relay socket as descriptor 3, its number in this variable (a task's PMI
    /// channel: "PMI_FD"); nil for none.
    public var relayVariable: String?
    /// The command runs on a pseudo-terminal of this size (its stdin, stdout and stderr, and its
    /// controlling terminal); nil: on pipes.
    public var terminal: TerminalSize?
    public init(
        argv: [String], env: [String], cwd: String = "/", uid: UInt32 = 0, gid: UInt32 = 0, groups: [UInt32] = [], relayVariable: String? = nil,
        terminal: TerminalSize? = nil
    ) {
        self.argv = argv; self.env = env; self.cwd = cwd; self.uid = uid; self.gid = gid; self.groups = groups
        self.relayVariable = relayVariable; self.terminal = terminal
    }
}

/// How a command ended, in the shell's convention for `code`.
public struct CommandStatus: Sendable, Equatable, CustomStringConvertible {
    public var exitCode: Int32?
    public var signal: Int32?
    /// The shell's number: the exit code, or 128 + signal.
    public var code: Int32 { exitCode ?? (128 + (signal ?? 0)) }
    public var description: String { signal.map { "killed by signal \($0)" } ?? "exit \(exitCode ?? -1)" }
}

public enum AgentCodec {
    /// The first agent version that carries relays (protocol.h).
    public static let relayVersion = 2
    /// The first agent version that runs commands on a terminal.
    public static let terminalVersion = 3

    public static func hello(nonce: UInt64) -> AgentFrame {
        var p = [UInt8](); p.appendLE(nonce); return AgentFrame(.hello, payload: p)
    }

    public static func exec(_ r: ExecRequest, session: UInt32) -> AgentFrame {
        var p = [UInt8]()
        p.appendLE(r.uid); p.appendLE(r.gid)
        p.appendLE(UInt32(r.groups.count)); for g in r.groups { p.appendLE(g) }
        p.appendString(r.cwd)
        p.appendLE(UInt32(r.argv.count)); for a in r.argv { p.appendString(a) }
        p.appendLE(UInt32(r.env.count)); for e in r.env { p.appendString(e) }
        // Optional trailing fields: the relay's variable (agent version 2; empty for none when a
        // terminal follows), the terminal's size (version 3).
        if r.relayVariable != nil || r.terminal != nil { p.appendString(r.relayVariable ?? "") }
        if let t = r.terminal { p.appendLE(t.rows); p.appendLE(t.columns) }
        return AgentFrame(.exec, session: session, payload: p)
    }

    public static func resize(_ t: TerminalSize, session: UInt32) -> AgentFrame {
        var p = [UInt8](); p.appendLE(t.rows); p.appendLE(t.columns); return AgentFrame(.resize, session: session, payload: p)
    }

    public static func signal(_ sig: Int32, session: UInt32) -> AgentFrame {
        var p = [UInt8](); p.appendLE(UInt32(sig)); return AgentFrame(.signal, session: session, payload: p)
    }

    public static func shutdown(reboot: Bool = false) -> AgentFrame {
        var p = [UInt8](); p.appendLE(UInt32(reboot ? 1 : 0)); return AgentFrame(.shutdown, payload: p)
    }

    public static func ready(_ f: AgentFrame) -> GuestInfo? {
        var r = ByteReader(f.payload)
        guard let nonce = r.u64(), let up = r.u64(), let cpus = r.u32(), let mem = r.u64(),
            let host = r.string(), let rel = r.string(), let ver = r.string()
        else { return nil }
        return GuestInfo(nonce: nonce, uptimeMs: up, cpus: cpus, memoryKB: mem, hostname: host, kernelRelease: rel, agentVersion: ver)
    }

    public static func exit(_ f: AgentFrame) -> CommandStatus? {
        var r = ByteReader(f.payload)
        guard let c = r.u32(), let s = r.u32() else { return nil }
        let code = Int32(bitPattern: c), sig = Int32(bitPattern: s)
        return sig != 0 ? CommandStatus(exitCode: nil, signal: sig) : CommandStatus(exitCode: code, signal: nil)
    }

    public static func u32(_ f: AgentFrame) -> UInt32? { var r = ByteReader(f.payload); return r.u32() }
    public static func string(_ f: AgentFrame) -> String? { var r = ByteReader(f.payload); return r.string() }
}

struct ByteReader {
    let b: [UInt8]; var off = 0
    init(_ b: [UInt8]) { self.b = b }
    mutating func u32() -> UInt32? {
        guard b.count - off >= 4 else { return nil }
        defer { off += 4 }
        return b.readLE32(at: off)
    }
    mutating func u64() -> UInt64? {
        guard let lo = u32(), let hi = u32() else { return nil }
        return UInt64(lo) | UInt64(hi) << 32
    }
    mutating func string() -> String? {
        guard let n = u32(), b.count - off >= Int(n) else { return nil }
        defer { off += Int(n) }
        return String(decoding: b[off..<(off + Int(n))], as: UTF8.self)
    }
}

extension Array where Element == UInt8 {
    mutating func appendLE(_ v: UInt32) { append(contentsOf: [UInt8(v & 0xff), UInt8(v >> 8 & 0xff), UInt8(v >> 16 & 0xff), UInt8(v >> 24)]) }
    mutating func appendLE(_ v: UInt64) { appendLE(UInt32(v & 0xffff_ffff)); appendLE(UInt32(v >> 32)) }
    mutating func appendString(_ s: String) { let u = Array(s.utf8); appendLE(UInt32(u.count)); append(contentsOf: u) }
    func readLE32(at i: Int) -> UInt32 {
        UInt32(self[i]) | UInt32(self[i + 1]) << 8 | UInt32(self[i + 2]) << 16 | UInt32(self[i + 3]) << 24
    }
}
