// An image cut into chunks, with SHA-256's chaining value at each chunk boundary (ChainedSHA256) and the
// SHA-256 of the whole: the catalog's digest. A rank checks every chunk on arrival, by hashing it from
// the value before it to the value after it (a corrupted one is fetched again); the last chunk's check
// ends in the digest itself, so once all have passed the whole is verified, with each byte hashed once.
// A wrong manifest can waste a transfer but never place a wrong image: its values must chain from
// SHA-256's initial value, through the bytes received, to the catalog digest.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What can end a broadcast, by kind; each message says what was wrong.
public enum BroadcastError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The transfer was set up wrongly (ranks, addresses, chunk size, roles).
    case config(String)
    /// A local file could not be read, written, reserved or renamed.
    case io(String)
    /// A peer broke the protocol (bad frames, versions, more bytes than a chunk holds).
    case protocolViolation(String)
    /// Bytes or a manifest do not hash to what they claim.
    case corrupt(String)
    /// The catalog holds no such blob.
    case noSuchBlob(String)
    /// The transfer did not complete (a peer gone, a rank abandoned, a copy incomplete).
    case failed(String)

    public var description: String {
        switch self {
        case .config(let s), .io(let s), .protocolViolation(let s), .corrupt(let s), .noSuchBlob(let s), .failed(let s): return s
        }
    }
}

public struct Manifest: Codable, Sendable, Equatable {
    /// "sha256:<hex>" of the whole image.
    public let digest: String
    public let size: Int64
    public let chunkSize: Int
    /// For each chunk, SHA-256's chaining value after it (32 bytes); for the last, the digest's bytes.
    public let chunks: [Data]

    public static let defaultChunkSize = 1 << 20

    /// The chunk size a transfer uses when none is named: 1 MiB, halved down to 256 KiB until the image
    /// has at least 1,024 chunks. A schedule's depth costs a few chunks' time, so smaller images need
    /// smaller chunks; the relay (one stream per port, the default for few nodes: ScheduleKind.chosen)
    /// is N − 1 chunks deep. Measured at 16 nodes on a drop-tail port (docs/broadcast.md): 64 MiB
    /// 1.15× of size/rate in 256 KiB chunks as a relay, 1.27-1.32× in 1 MiB chunks as two trees; 256 MiB
    /// 1.08× in 256 KiB chunks, 1.13× in 1 MiB (the chain 1.12×). From 1 GiB on, 1 MiB chunks.
    public static func chunkSize(forBytes n: Int64) -> Int {
        var c = defaultChunkSize
        while c > 256 << 10 && n / Int64(c) < 1024 { c /= 2 }
        return c
    }
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

    static func checkChunkSize(_ chunkSize: Int) throws {
        guard chunkSizes.contains(chunkSize), chunkSize % 64 == 0 else {
            throw BroadcastError.config(
                "chunk size \(chunkSize) must be a multiple of 64 bytes within \(chunkSizes.lowerBound)…\(chunkSizes.upperBound)")
        }
    }

    /// Reads `path` once, hashing it whole and noting the chaining value at each chunk boundary.
    public static func compute(path: String, chunkSize: Int = defaultChunkSize) throws -> Manifest {
        try checkChunkSize(chunkSize)
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw BroadcastError.io("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw BroadcastError.io("cannot stat \(path)") }
        let size = Int64(st.st_size)
        guard size > 0 else { throw BroadcastError.config("\(path) is empty; there is nothing to broadcast") }
        var whole = ChainedSHA256()
        var chunks: [Data] = []
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 64)
        defer { buf.deallocate() }
        var off: Int64 = 0
        while off < size {
            let want = Int(min(Int64(chunkSize), size - off))
            try ChunkFile.preadAll(fd, buf.baseAddress!, want, off, path)
            let part = UnsafeRawBufferPointer(rebasing: buf[0..<want])
            whole.update(part)
            off += Int64(want)
            chunks.append(off < size ? whole.state()! : whole.finalize())
        }
        return Manifest(digest: "sha256:" + chunks.last!.hex, size: size, chunkSize: chunkSize, chunks: chunks)
    }

    /// The manifest of `path`, kept in the file `store` and reused while `path` keeps the size and
    /// modification time it had when the manifest was computed (and the chunk size is the same);
    /// otherwise computed again and saved (temp + rename). A sender of the same image again skips the
    /// pass over it: 0.17 s for 256 MiB on this project's test machines, time every receiver waits.
    public static func reusing(_ store: String, for path: String, chunkSize: Int = defaultChunkSize) throws -> Manifest {
        struct Stored: Codable { var size: Int64; var mtimeNanoseconds: Int64; var manifest: Manifest }
        var st = stat()
        guard stat(path, &st) == 0 else { throw BroadcastError.io("cannot stat \(path): \(String(cString: strerror(errno)))") }
        let mtime = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
        if let data = FileManager.default.contents(atPath: store),
            let kept = try? JSONDecoder().decode(Stored.self, from: data),
            kept.size == Int64(st.st_size), kept.mtimeNanoseconds == mtime, kept.manifest.chunkSize == chunkSize,
            (try? kept.manifest.validate()) != nil
        {
            return kept.manifest
        }
        let m = try compute(path: path, chunkSize: chunkSize)
        let tmp = store + ".tmp-\(getpid())"
        do {
            try JSONEncoder().encode(Stored(size: m.size, mtimeNanoseconds: mtime, manifest: m)).write(to: URL(fileURLWithPath: tmp))
            guard rename(tmp, store) == 0 else { throw BroadcastError.io(String(cString: strerror(errno))) }
        } catch {
            unlink(tmp)
            throw BroadcastError.io("cannot keep the manifest at \(store): \(error)")
        }
        return m
    }

    /// Refuses a manifest (from a peer) that cannot describe an image: wrong chunk count or sizes, or a
    /// chain that does not end in its own digest.
    public func validate() throws {
        try Self.checkChunkSize(chunkSize)
        let expected = size > 0 ? Int((size + Int64(chunkSize) - 1) / Int64(chunkSize)) : 0
        guard expected > 0, chunks.count == expected, chunks.allSatisfy({ $0.count == 32 }) else {
            throw BroadcastError.corrupt("the manifest is malformed: \(chunks.count) chunk values for \(size) bytes in chunks of \(chunkSize)")
        }
        guard digest == "sha256:" + chunks.last!.hex else {
            throw BroadcastError.corrupt("the manifest's chain ends in sha256:\(chunks.last!.hex), not its digest \(digest)")
        }
    }

    /// A hasher for chunk i, started from the chain's value before it.
    func hasher(for i: Int) -> ChainedSHA256? {
        guard i >= 0, i < count else { return nil }
        return i == 0 ? ChainedSHA256() : ChainedSHA256(resuming: chunks[i - 1], at: range(i).offset)
    }

    /// Whether a hasher fed chunk i's bytes (and nothing else) reached the chain's value after it.
    func matches(_ i: Int, _ h: ChainedSHA256) -> Bool {
        guard i >= 0, i < count else { return false }
        return (i == count - 1 ? h.finalize() : h.state()) == chunks[i]
    }

    public func verify(_ i: Int, _ bytes: UnsafeRawBufferPointer) -> Bool {
        guard var h = hasher(for: i), bytes.count == range(i).length else { return false }
        h.update(bytes)
        return matches(i, h)
    }
}

extension Sequence where Element == UInt8 {
    var hex: String { map { String(format: "%02x", $0) }.joined() }
}
