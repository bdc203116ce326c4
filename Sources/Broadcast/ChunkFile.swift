// A rank's copy of the image while it arrives: a hidden file next to its destination, space reserved up
// front (a full disk is reported before any byte moves), chunks written at their offsets, each checked
// against the manifest's chain as it arrives, and renamed into place only when every chunk has passed,
// which verifies the whole against the digest (Manifest). Until then nothing at the destination path
// exists; on failure the partial file is removed.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Used from one event loop only.
public final class ChunkFile: @unchecked Sendable {
    public let path: String
    public let manifest: Manifest
    let fd: Int32
    /// Where the copy lives: the source itself (rank 0), or a partial file renamed to `destination`.
    let partial: String?
    let destination: String?
    public private(set) var have: Bitset
    /// Chunks with a writer putting its bytes straight into the file. A second copy of such a chunk
    /// arriving meanwhile (a re-sourced chunk racing the first) is kept in memory and written only
    /// once verified: unverified bytes never land over another copy's, nor over a committed chunk.
    var directWriters = Set<Int>()
    /// The whole file mapped read-only: chunks are read in place to be sent, without copies.
    private var map: UnsafeMutableRawPointer?

    private func mapFile() throws {
        guard let m = mmap(nil, Int(manifest.size), PROT_READ, MAP_SHARED, fd, 0), m != MAP_FAILED else {
            throw BroadcastError("cannot map \(path): \(String(cString: strerror(errno)))")
        }
        map = m
    }

    /// The source's copy, read only.
    public init(source: String, manifest: Manifest) throws {
        path = source
        self.manifest = manifest
        fd = open(source, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw BroadcastError("cannot open \(source): \(String(cString: strerror(errno)))") }
        partial = nil
        destination = nil
        have = Bitset(count: manifest.count, full: true)
        var st = stat()
        guard fstat(fd, &st) == 0, Int64(st.st_size) == manifest.size else {
            close(fd)
            throw BroadcastError("\(source) is not the \(manifest.size) bytes its manifest describes")
        }
        try mapFile()
    }

    /// A new copy to be written to `destination`.
    public init(destination: String, manifest: Manifest) throws {
        let dir = (destination as NSString).deletingLastPathComponent
        let name = (destination as NSString).lastPathComponent
        let p = (dir.isEmpty ? "." : dir) + "/.partial-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        fd = open(p, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw BroadcastError("cannot create \(p): \(String(cString: strerror(errno)))") }
        let rc = posix_fallocate(fd, 0, off_t(manifest.size))
        if rc != 0 {
            close(fd)
            unlink(p)
            let why = rc == ENOSPC ? "not enough space" : String(cString: strerror(rc))
            throw BroadcastError("cannot reserve \(manifest.size) bytes in \(dir.isEmpty ? "." : dir) for the image: \(why); free space there or point the destination elsewhere")
        }
        path = p
        partial = p
        self.destination = destination
        self.manifest = manifest
        have = Bitset(count: manifest.count)
        do { try mapFile() } catch { close(fd); unlink(p); throw error }
    }

    deinit {
        if let map { munmap(map, Int(manifest.size)) }
        close(fd)
    }

    /// Writes chunk i, which the caller has verified (`Manifest.verify`); false if it was already there.
    public func write(_ i: Int, _ bytes: UnsafeRawBufferPointer) throws -> Bool {
        if have[i] { return false }
        try pwriteAll(bytes, at: manifest.range(i).offset)
        have.insert(i)
        return true
    }

    /// Receives chunk i piece by piece: each piece is hashed and written at its place at once.
    public func writer(for i: Int, length: Int) -> ChunkWriter? {
        guard partial != nil, i >= 0, i < manifest.count, !have[i], manifest.range(i).length == length else { return nil }
        let direct = directWriters.insert(i).inserted
        return ChunkWriter(file: self, index: i, offset: manifest.range(i).offset, length: length, direct: direct)
    }

    /// A chunk whose bytes were written and passed their check.
    func commit(_ i: Int) {
        have.insert(i)
    }

    func pwriteAll(_ bytes: UnsafeRawBufferPointer, at off: Int64) throws {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(off) + off_t(done))
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { throw BroadcastError("cannot write \(path): \(String(cString: strerror(errno)))") }
            done += n
        }
    }

    /// The descriptor, for sending chunks with sendfile.
    public var descriptor: Int32 { fd }

    /// Calls body with chunk i's bytes, in place in the mapping.
    public func withChunk<T>(_ i: Int, _ body: (UnsafeRawBufferPointer) throws -> T) throws -> T {
        guard i >= 0 && i < manifest.count, let map else { throw BroadcastError("chunk \(i) is outside the image") }
        let (off, len) = manifest.range(i)
        return try body(UnsafeRawBufferPointer(start: map + Int(off), count: len))
    }

    /// Once every chunk is here (each passed its check, so the whole matches the digest): syncs and
    /// renames into place.
    public func finish() throws {
        guard let partial, let destination else { return }
        guard have.isFull else { throw BroadcastError("the copy is incomplete") }
        guard fsync(fd) == 0 else { throw BroadcastError("cannot sync \(partial): \(String(cString: strerror(errno)))") }
        guard rename(partial, destination) == 0 else {
            let e = String(cString: strerror(errno))
            discard()
            throw BroadcastError("cannot rename the verified copy to \(destination): \(e)")
        }
    }

    /// Removes a partial copy.
    public func discard() {
        if let partial { unlink(partial) }
    }

    static func preadAll(_ fd: Int32, _ p: UnsafeMutableRawPointer, _ len: Int, _ off: Int64, _ path: String) throws {
        var done = 0
        while done < len {
            let n = pread(fd, p + done, len - done, off_t(off) + off_t(done))
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { throw BroadcastError("cannot read \(path) at \(off + Int64(done)): \(n == 0 ? "unexpected end of file" : String(cString: strerror(errno)))") }
            done += n
        }
    }
}

/// One chunk arriving, hashed as it comes (from the chain's value before it) and kept only if it reaches
/// the value after it. The first copy of a chunk in flight is written as it comes (no copy in memory); a
/// second one racing it is buffered and written only once verified, over whatever the first left.
/// Nothing is written over a committed chunk.
public final class ChunkWriter: @unchecked Sendable {
    let file: ChunkFile
    public let index: Int
    let offset: Int64
    let length: Int
    let direct: Bool
    var written = 0
    var hasher: ChainedSHA256
    var buffered: [UInt8] = []

    init(file: ChunkFile, index: Int, offset: Int64, length: Int, direct: Bool) {
        self.file = file
        self.index = index
        self.offset = offset
        self.length = length
        self.direct = direct
        hasher = file.manifest.hasher(for: index)!   // `writer(for:)` checked the index
        holdsSlot = direct
        if !direct { buffered.reserveCapacity(length) }
    }

    /// Gives up the chunk's direct slot, once (a writer dropped mid-chunk, with its peer, gives it up
    /// in deinit).
    var holdsSlot: Bool
    func releaseSlot() { if holdsSlot { file.directWriters.remove(index); holdsSlot = false } }
    deinit { releaseSlot() }

    public func append(_ bytes: UnsafeRawBufferPointer) throws {
        guard written + bytes.count <= length else { throw BroadcastError("a peer sent more bytes than chunk \(index) has") }
        hasher.update(bytes)
        if !direct {
            buffered.append(contentsOf: bytes)
        } else if !file.have[index] {
            try file.pwriteAll(bytes, at: offset + Int64(written))
        }
        written += bytes.count
    }

    /// Whether the bytes match the manifest; if so the chunk is committed to the copy (or was already,
    /// by a copy that raced this one).
    public func finish() throws -> Bool {
        releaseSlot()
        guard written == length, file.manifest.matches(index, hasher) else { return false }
        if !direct && !file.have[index] {
            try buffered.withUnsafeBytes { try file.pwriteAll($0, at: offset) }
        }
        file.commit(index)
        return true
    }
}
