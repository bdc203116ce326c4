// An image cut into chunks, each with its SHA-256, and the SHA-256 of the whole: the catalog's digest.
// A rank verifies every chunk on arrival (a corrupted one is fetched again) and the whole before it
// renames its copy into place, so a wrong manifest can waste a transfer but never place a wrong image.

import Crypto
import Foundation
#if canImport(Glibc)
import Glibc
#endif

public struct BroadcastError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ d: String) { description = d }
}

public struct Manifest: Codable, Sendable, Equatable {
    /// "sha256:<hex>" of the whole image.
    public let digest: String
    public let size: Int64
    public let chunkSize: Int
    /// SHA-256 of each chunk.
    public let chunks: [Data]

    public static let defaultChunkSize = 1 << 20
    public static let chunkSizes = (64 << 10)...(16 << 20)

    public init(digest: String, size: Int64, chunkSize: Int, chunks: [Data]) {
        self.digest = digest
        self.size = size
        self.chunkSize = chunkSize
        self.chunks = chunks
    }

    public var count: Int { chunks.count }

    public func range(_ i: Int) -> (offset: Int64, length: Int) {
        let off = Int64(i) * Int64(chunkSize)
        return (off, Int(min(Int64(chunkSize), size - off)))
    }

    /// Reads `path` once: each chunk's hash and the whole file's.
    public static func compute(path: String, chunkSize: Int = defaultChunkSize) throws -> Manifest {
        guard chunkSizes.contains(chunkSize) else {
            throw BroadcastError("chunk size \(chunkSize) is outside \(chunkSizes.lowerBound)…\(chunkSizes.upperBound) bytes")
        }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw BroadcastError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw BroadcastError("cannot stat \(path)") }
        let size = Int64(st.st_size)
        guard size > 0 else { throw BroadcastError("\(path) is empty; there is nothing to broadcast") }
        var whole = SHA256()
        var chunks: [Data] = []
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 64)
        defer { buf.deallocate() }
        var off: Int64 = 0
        while off < size {
            let want = Int(min(Int64(chunkSize), size - off))
            try ChunkFile.preadAll(fd, buf.baseAddress!, want, off, path)
            let part = UnsafeRawBufferPointer(rebasing: buf[0..<want])
            whole.update(bufferPointer: part)
            chunks.append(Data(SHA256.hash(data: part)))
            off += Int64(want)
        }
        return Manifest(digest: "sha256:" + whole.finalize().hex, size: size, chunkSize: chunkSize, chunks: chunks)
    }

    public func verify(_ i: Int, _ bytes: UnsafeRawBufferPointer) -> Bool {
        i >= 0 && i < count && bytes.count == range(i).length && Data(SHA256.hash(data: bytes)) == chunks[i]
    }
}

extension Sequence where Element == UInt8 {
    var hex: String { map { String(format: "%02x", $0) }.joined() }
}
