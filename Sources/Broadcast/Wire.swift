// The frames ranks exchange over one TCP connection per neighbor pair:
//   [type: u8][length: u32, big endian][payload: length bytes]
// HELLO    magic "SVMB", version u8, rank u32, holds-everything u8, transfer id (UTF-8, the rest)
// MANIFEST JSON of Manifest (sent by whoever has it, so it spreads with the first connections)
// HAVE     chunk u32: the sender has verified this chunk
// WANT     chunk u32: please send this chunk (a repair)
// CHUNK    chunk u32, then the chunk's bytes
// ABORT    UTF-8 reason: the sender gives up on the transfer
// A frame longer than a chunk plus its header is a protocol error and closes the connection.

import Foundation
import NIOCore

public enum Frame: Sendable {
    case hello(rank: Int, complete: Bool, transfer: String)
    case manifest(Manifest)
    case have(Int)
    case want(Int)
    case chunk(Int, ByteBuffer)
    case abort(String)
    /// Two-tree: this slow rank trades places with the spare leaf (see TransferMachine.replan).
    case replan(slow: Int)

    static let magic: UInt32 = 0x5356_4D42  // "SVMB"
    static let version: UInt8 = 2  // 2: the replan frame

    enum Kind: UInt8 { case hello = 1, manifest, have, want, chunk, abort, replan }

    /// Writes the frame; a chunk's bytes are appended as they are (no copy beyond the socket's).
    public func encode(into b: inout ByteBuffer) {
        switch self {
        case .hello(let rank, let complete, let transfer):
            let id = Array(transfer.utf8)
            header(&b, .hello, 4 + 1 + 4 + 1 + id.count)
            b.writeInteger(Frame.magic)
            b.writeInteger(Frame.version)
            b.writeInteger(UInt32(rank))
            b.writeInteger(UInt8(complete ? 1 : 0))
            b.writeBytes(id)
        case .manifest(let m):
            let json = (try? JSONEncoder().encode(m)) ?? Data()
            header(&b, .manifest, json.count)
            b.writeBytes(json)
        case .have(let c):
            header(&b, .have, 4)
            b.writeInteger(UInt32(c))
        case .want(let c):
            header(&b, .want, 4)
            b.writeInteger(UInt32(c))
        case .chunk(let c, var bytes):
            header(&b, .chunk, 4 + bytes.readableBytes)
            b.writeInteger(UInt32(c))
            b.writeBuffer(&bytes)
        case .abort(let why):
            let s = Array(why.utf8.prefix(4096))
            header(&b, .abort, s.count)
            b.writeBytes(s)
        case .replan(let slow):
            header(&b, .replan, 4)
            b.writeInteger(UInt32(slow))
        }
    }

    private func header(_ b: inout ByteBuffer, _ k: Kind, _ len: Int) {
        b.writeInteger(k.rawValue)
        b.writeInteger(UInt32(len))
    }
}

/// Splits the byte stream into frames without buffering chunks: a chunk's bytes go to `sink` piece by
/// piece as they are read (hashed and written at their offset), so a 1 MiB chunk is never gathered in
/// memory; the other frames are small and are parsed whole. `maxPayload` bounds what a peer can send.
public struct FrameReader {
    public protocol ChunkSink: AnyObject {
        /// Where chunk `index` of `length` bytes goes; nil to discard it.
        func begin(chunk index: Int, length: Int) -> ChunkWriter?
        func frame(_ f: Frame) throws
        /// The chunk ended: `writer` says whether its bytes matched.
        func ended(chunk index: Int, writer: ChunkWriter?) throws
    }

    let maxPayload: Int
    var header = [UInt8]()
    var type: UInt8 = 0
    var remaining = 0
    var small: ByteBuffer?
    var chunkIndex: [UInt8] = []
    var chunk: (index: Int, writer: ChunkWriter?)?

    public init(maxPayload: Int) { self.maxPayload = maxPayload }

    public mutating func feed(_ buffer: inout ByteBuffer, _ sink: ChunkSink) throws {
        while buffer.readableBytes > 0 {
            if remaining == 0 && header.count < 5 {
                let take = min(5 - header.count, buffer.readableBytes)
                header += buffer.readBytes(length: take)!
                guard header.count == 5 else { return }
                type = header[0]
                remaining = Int(header[1]) << 24 | Int(header[2]) << 16 | Int(header[3]) << 8 | Int(header[4])
                guard remaining <= maxPayload else {
                    throw BroadcastError.protocolViolation("a peer sent a \(remaining)-byte frame; at most \(maxPayload) are allowed")
                }
                if type == Frame.Kind.chunk.rawValue {
                    guard remaining >= 4 else { throw BroadcastError.protocolViolation("a peer sent a truncated chunk") }
                    chunkIndex = []
                } else {
                    small = ByteBufferAllocator().buffer(capacity: remaining)
                }
                if remaining == 0 { try endFrame(sink) }
                continue
            }
            if type == Frame.Kind.chunk.rawValue {
                if chunk == nil {
                    let take = min(4 - chunkIndex.count, buffer.readableBytes)
                    chunkIndex += buffer.readBytes(length: take)!
                    remaining -= take
                    guard chunkIndex.count == 4 else { continue }
                    let i = Int(chunkIndex[0]) << 24 | Int(chunkIndex[1]) << 16 | Int(chunkIndex[2]) << 8 | Int(chunkIndex[3])
                    chunk = (i, sink.begin(chunk: i, length: remaining))
                    if remaining == 0 { try endFrame(sink) }
                    continue
                }
                let take = min(remaining, buffer.readableBytes)
                if let w = chunk!.writer {
                    try buffer.readSlice(length: take)!.withUnsafeReadableBytes { try w.append($0) }
                } else {
                    buffer.moveReaderIndex(forwardBy: take)
                }
                remaining -= take
            } else {
                let take = min(remaining, buffer.readableBytes)
                var piece = buffer.readSlice(length: take)!
                small!.writeBuffer(&piece)
                remaining -= take
            }
            if remaining == 0 { try endFrame(sink) }
        }
    }

    mutating func endFrame(_ sink: ChunkSink) throws {
        header = []
        if type == Frame.Kind.chunk.rawValue {
            let c = chunk
            chunk = nil
            if let c { try sink.ended(chunk: c.index, writer: c.writer) }
        } else {
            var b = small ?? ByteBufferAllocator().buffer(capacity: 0)
            small = nil
            try sink.frame(try Self.parse(type, &b))
        }
    }

    static func parse(_ type: UInt8, _ b: inout ByteBuffer) throws -> Frame {
        func u32() throws -> Int {
            guard let v = b.readInteger(as: UInt32.self) else { throw BroadcastError.protocolViolation("a peer sent a truncated frame") }
            return Int(v)
        }
        switch Frame.Kind(rawValue: type) {
        case .hello:
            guard b.readInteger(as: UInt32.self) == Frame.magic else {
                throw BroadcastError.protocolViolation("a peer does not speak the broadcast protocol")
            }
            guard b.readInteger(as: UInt8.self) == Frame.version else {
                throw BroadcastError.protocolViolation("a peer speaks another version of the broadcast protocol")
            }
            let rank = try u32()
            guard let full = b.readInteger(as: UInt8.self) else { throw BroadcastError.protocolViolation("a peer sent a truncated hello") }
            return .hello(rank: rank, complete: full == 1, transfer: b.readString(length: b.readableBytes) ?? "")
        case .manifest:
            let data = Data(b.readableBytesView)
            do { return .manifest(try JSONDecoder().decode(Manifest.self, from: data)) } catch {
                throw BroadcastError.protocolViolation("a peer sent an unreadable manifest: \(error)")
            }
        case .have: return .have(try u32())
        case .want: return .want(try u32())
        case .chunk:
            let c = try u32()
            return .chunk(c, b)  // only when parsed whole (tests); the reader streams chunks
        case .abort: return .abort(b.readString(length: b.readableBytes) ?? "")
        case .replan: return .replan(slow: try u32())
        case nil: throw BroadcastError.protocolViolation("a peer sent a frame of unknown type \(type)")
        }
    }
}

public struct FrameEncoder: MessageToByteEncoder {
    public typealias OutboundIn = Frame
    public init() {}
    public func encode(data: Frame, out: inout ByteBuffer) throws { data.encode(into: &out) }
}
