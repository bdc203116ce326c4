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

    static let magic: UInt32 = 0x5356_4D42   // "SVMB"
    static let version: UInt8 = 1

    enum Kind: UInt8 { case hello = 1, manifest, have, want, chunk, abort }

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
        }
    }

    private func header(_ b: inout ByteBuffer, _ k: Kind, _ len: Int) {
        b.writeInteger(k.rawValue)
        b.writeInteger(UInt32(len))
    }
}

/// Splits the byte stream into frames; `maxPayload` bounds what a peer can make us buffer.
public struct FrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = Frame
    let maxPayload: Int

    public init(maxPayload: Int) { self.maxPayload = maxPayload }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard buffer.readableBytes >= 5,
              let type = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self),
              let len = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt32.self)
        else { return .needMoreData }
        guard Int(len) <= maxPayload else { throw BroadcastError("a peer sent a \(len)-byte frame; at most \(maxPayload) are allowed") }
        guard buffer.readableBytes >= 5 + Int(len) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 5)
        var body = buffer.readSlice(length: Int(len))!
        context.fireChannelRead(wrapInboundOut(try Self.parse(type, &body)))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }

    static func parse(_ type: UInt8, _ b: inout ByteBuffer) throws -> Frame {
        func u32() throws -> Int {
            guard let v = b.readInteger(as: UInt32.self) else { throw BroadcastError("a peer sent a truncated frame") }
            return Int(v)
        }
        switch Frame.Kind(rawValue: type) {
        case .hello:
            guard b.readInteger(as: UInt32.self) == Frame.magic else { throw BroadcastError("a peer does not speak the broadcast protocol") }
            guard b.readInteger(as: UInt8.self) == Frame.version else { throw BroadcastError("a peer speaks another version of the broadcast protocol") }
            let rank = try u32()
            guard let full = b.readInteger(as: UInt8.self) else { throw BroadcastError("a peer sent a truncated hello") }
            return .hello(rank: rank, complete: full == 1, transfer: b.readString(length: b.readableBytes) ?? "")
        case .manifest:
            let data = Data(b.readableBytesView)
            do { return .manifest(try JSONDecoder().decode(Manifest.self, from: data)) } catch {
                throw BroadcastError("a peer sent an unreadable manifest: \(error)")
            }
        case .have: return .have(try u32())
        case .want: return .want(try u32())
        case .chunk:
            let c = try u32()
            return .chunk(c, b)
        case .abort: return .abort(b.readString(length: b.readableBytes) ?? "")
        case nil: throw BroadcastError("a peer sent a frame of unknown type \(type)")
        }
    }
}

public struct FrameEncoder: MessageToByteEncoder {
    public typealias OutboundIn = Frame
    public init() {}
    public func encode(data: Frame, out: inout ByteBuffer) throws { data.encode(into: &out) }
}
