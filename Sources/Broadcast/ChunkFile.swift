// A rank's copy of the image while it arrives: a hidden file next to its destination, space reserved up
// front (a full disk is reported before any byte moves), chunks written at their offsets, each checked
// against the manifest's chain as it arrives, and renamed into place only when every chunk has passed,
// which verifies the whole against the digest (Manifest). Until then nothing at the destination path
// exists; on failure the partial file is removed.
//
// Where the filesystem allows it, verified chunks are written with O_DIRECT, around the page cache. A
// node's memory belongs to its job: an image arriving should not push the job's files out of the page
// cache, and writing into fresh page-cache pages is most of what receiving costs the CPU (on this
// project's test machines, a VM whose freed pages go back to the outer host, fresh pages cost 2 s/GiB;
// overwriting warm ones, 0.2 s). The newest verified chunks stay in memory, since they are the ones
// neighbors ask for; an older one is sent from the file.

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
    /// Chunks with a writer putting its bytes straight into the file as they come (only when writing
    /// through the page cache). A second copy of such a chunk arriving meanwhile (a re-sourced chunk
    /// racing the first) is held in memory and written only once verified: unverified bytes never land
    /// over another copy's, nor over a committed chunk.
    var inPlaceWriters = Set<Int>()
    /// The copy opened with O_DIRECT, when the filesystem supports it: verified chunks are then held in
    /// memory until whole and written around the page cache.
    var uncached: Int32?
    /// Verified chunks still in memory (uncached copies only), oldest first, and buffers to reuse.
    var recent: [(index: Int, chunk: HeldChunk)] = []
    var spare: [HeldChunk] = []
    /// How many verified chunks stay in memory to be sent from there.
    let recentLimit: Int
    /// The whole file mapped read-only: chunks are read in place to be sent, without copies.
    private var map: UnsafeMutableRawPointer?

    private func mapFile() throws {
        guard let m = mmap(nil, Int(manifest.size), PROT_READ, MAP_SHARED, fd, 0), m != MAP_FAILED else {
            throw BroadcastError.io("cannot map \(path): \(String(cString: strerror(errno)))")
        }
        map = m
    }

    /// The source's copy, read only.
    public init(source: String, manifest: Manifest) throws {
        path = source
        self.manifest = manifest
        fd = open(source, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw BroadcastError.io("cannot open \(source): \(String(cString: strerror(errno)))") }
        partial = nil
        destination = nil
        have = Bitset(count: manifest.count, full: true)
        recentLimit = 0
        var st = stat()
        guard fstat(fd, &st) == 0, Int64(st.st_size) == manifest.size else {
            close(fd)
            throw BroadcastError.io("\(source) is not the \(manifest.size) bytes its manifest describes")
        }
        try mapFile()
    }

    /// A new copy to be written to `destination`; `bypassPageCache` false writes through the page cache
    /// even where O_DIRECT works; `keepInMemory` is the bytes of verified chunks kept to be sent from
    /// memory (uncached copies only).
    public init(destination: String, manifest: Manifest, bypassPageCache: Bool = true, keepInMemory: Int = 16 << 20) throws {
        let dir = (destination as NSString).deletingLastPathComponent
        let name = (destination as NSString).lastPathComponent
        let p = (dir.isEmpty ? "." : dir) + "/.partial-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        fd = open(p, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw BroadcastError.io("cannot create \(p): \(String(cString: strerror(errno)))") }
        let rc = posix_fallocate(fd, 0, off_t(manifest.size))
        if rc != 0 {
            close(fd)
            unlink(p)
            let why = rc == ENOSPC ? "not enough space" : String(cString: strerror(rc))
            throw BroadcastError.io(
                "cannot reserve \(manifest.size) bytes in \(dir.isEmpty ? "." : dir) for the image: \(why); free space there or point the destination elsewhere"
            )
        }
        path = p
        partial = p
        self.destination = destination
        self.manifest = manifest
        have = Bitset(count: manifest.count)
        recentLimit = max(4, keepInMemory / manifest.chunkSize)
        do { try mapFile() } catch { close(fd); unlink(p); throw error }
        // Whole chunks at page-aligned offsets can go around the page cache. A filesystem without
        // O_DIRECT (EINVAL) keeps the buffered path.
        if bypassPageCache && manifest.chunkSize % HeldChunk.alignment == 0 {
            let u = open(p, O_WRONLY | Self.oDirect | O_CLOEXEC)
            if u >= 0 { uncached = u }
        }
    }

    deinit {
        if let map { munmap(map, Int(manifest.size)) }
        if let uncached { close(uncached) }
        close(fd)
    }

    /// <fcntl.h>'s O_DIRECT, which Glibc's Swift module leaves out (it needs _GNU_SOURCE).
    #if arch(x86_64)
    static let oDirect: Int32 = 0o40000
    #else
    static let oDirect: Int32 = 0o200000
    #endif

    /// Whether verified chunks are written around the page cache.
    public var bypassesPageCache: Bool { uncached != nil }

    /// A buffer for one chunk, reused where possible.
    func takeBuffer() -> HeldChunk {
        if let b = spare.popLast() { b.count = 0; return b }
        return HeldChunk(capacity: manifest.chunkSize)
    }

    func recycle(_ b: HeldChunk) { spare.append(b) }

    /// Writes verified chunk i from memory, and keeps it there if the copy is uncached.
    func store(_ i: Int, _ held: HeldChunk) throws {
        let (off, len) = manifest.range(i)
        if let u = uncached, off % Int64(HeldChunk.alignment) == 0 {
            // The whole pages go around the page cache; a last chunk's tail of less than a page, through it.
            let whole = len & ~(HeldChunk.alignment - 1)
            let accepted = whole == 0 ? true : try writeUncached(u, held.base, whole, at: off)
            if !accepted {
                // The device wants a larger alignment than a page: write through the page cache from now on.
                close(u)
                uncached = nil
                try pwriteAll(held.bytes, at: off)
                return recycle(held)
            }
            if len > whole { try pwriteAll(UnsafeRawBufferPointer(start: held.base + whole, count: len - whole), at: off + Int64(whole)) }
            recent.append((i, held))
            if recent.count > recentLimit { recycle(recent.removeFirst().chunk) }
        } else {
            try pwriteAll(held.bytes, at: off)
            recycle(held)
        }
    }

    /// Chunk i's bytes if it is still in memory.
    public func held(_ i: Int) -> UnsafeRawBufferPointer? {
        for r in recent.reversed() where r.index == i { return r.chunk.bytes }
        return nil
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
        let inPlace = uncached == nil && inPlaceWriters.insert(i).inserted
        return ChunkWriter(file: self, index: i, offset: manifest.range(i).offset, length: length, held: inPlace ? nil : takeBuffer())
    }

    /// A chunk whose bytes were written and passed their check.
    func commit(_ i: Int) {
        have.insert(i)
    }

    /// An O_DIRECT write of whole pages; false if the device refuses the alignment (EINVAL).
    func writeUncached(_ u: Int32, _ p: UnsafeMutableRawPointer, _ len: Int, at off: Int64) throws -> Bool {
        var done = 0
        while done < len {
            let n = pwrite(u, p + done, len - done, off_t(off) + off_t(done))
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EINVAL && done == 0 { return false }
            if n <= 0 { throw BroadcastError.io("cannot write \(path): \(String(cString: strerror(errno)))") }
            done += n
        }
        return true
    }

    func pwriteAll(_ bytes: UnsafeRawBufferPointer, at off: Int64) throws {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(off) + off_t(done))
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { throw BroadcastError.io("cannot write \(path): \(String(cString: strerror(errno)))") }
            done += n
        }
    }

    /// The descriptor, for sending chunks with sendfile.
    public var descriptor: Int32 { fd }

    /// Calls body with chunk i's bytes, in place in the mapping.
    public func withChunk<T>(_ i: Int, _ body: (UnsafeRawBufferPointer) throws -> T) throws -> T {
        guard i >= 0 && i < manifest.count, let map else { throw BroadcastError.protocolViolation("chunk \(i) is outside the image") }
        let (off, len) = manifest.range(i)
        return try body(UnsafeRawBufferPointer(start: map + Int(off), count: len))
    }

    /// Once every chunk is here (each passed its check, so the whole matches the digest): syncs and
    /// renames into place.
    public func finish() throws {
        guard let partial, let destination else { return }
        guard have.isFull else { throw BroadcastError.failed("the copy is incomplete") }
        guard fsync(fd) == 0 else { throw BroadcastError.io("cannot sync \(partial): \(String(cString: strerror(errno)))") }
        guard rename(partial, destination) == 0 else {
            let e = String(cString: strerror(errno))
            discard()
            throw BroadcastError.io("cannot rename the verified copy to \(destination): \(e)")
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
            if n <= 0 {
                throw BroadcastError.io(
                    "cannot read \(path) at \(off + Int64(done)): \(n == 0 ? "unexpected end of file" : String(cString: strerror(errno)))")
            }
            done += n
        }
    }
}

/// One chunk in memory, page-aligned so it can be written with O_DIRECT.
final class HeldChunk {
    static let alignment = 4096
    let base: UnsafeMutableRawPointer
    let capacity: Int
    var count = 0

    init(capacity: Int) {
        var p: UnsafeMutableRawPointer?
        guard posix_memalign(&p, Self.alignment, max(capacity, 1)) == 0, let p else { fatalError("out of memory for a \(capacity)-byte chunk") }
        base = p
        self.capacity = capacity
    }
    deinit { free(base) }

    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    func append(_ b: UnsafeRawBufferPointer) {
        precondition(count + b.count <= capacity)
        if let src = b.baseAddress { memcpy(base + count, src, b.count) }
        count += b.count
    }
}

/// One chunk arriving, hashed as it comes (from the chain's value before it) and kept only if it reaches
/// the value after it. Through the page cache, the first copy of a chunk in flight is written as it
/// comes; a second one racing it, and every copy of an uncached file, is held in memory and written only
/// once verified. Nothing is written over a committed chunk.
public final class ChunkWriter: @unchecked Sendable {
    let file: ChunkFile
    public let index: Int
    let offset: Int64
    let length: Int
    var written = 0
    var hasher: ChainedSHA256
    /// The bytes so far, when they are not written as they come.
    var held: HeldChunk?

    init(file: ChunkFile, index: Int, offset: Int64, length: Int, held: HeldChunk?) {
        self.file = file
        self.index = index
        self.offset = offset
        self.length = length
        self.held = held
        hasher = file.manifest.hasher(for: index)!  // `writer(for:)` checked the index
        holdsSlot = held == nil
    }

    /// Gives up the chunk's in-place slot, once (a writer dropped mid-chunk, with its peer, gives it up
    /// in deinit, and its buffer back).
    var holdsSlot: Bool
    func releaseSlot() { if holdsSlot { file.inPlaceWriters.remove(index); holdsSlot = false } }
    deinit {
        releaseSlot()
        if let held { file.recycle(held) }
    }

    public func append(_ bytes: UnsafeRawBufferPointer) throws {
        guard written + bytes.count <= length else { throw BroadcastError.protocolViolation("a peer sent more bytes than chunk \(index) has") }
        hasher.update(bytes)
        if let held {
            held.append(bytes)
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
        if let h = held {
            held = nil
            if file.have[index] { file.recycle(h) } else { try file.store(index, h) }
        }
        file.commit(index)
        return true
    }
}
