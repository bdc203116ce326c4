// Two copies of one chunk in flight at once (a re-sourced chunk racing the first, one of them
// corrupted on the way): whatever order their pieces come in and whichever finishes first, the copy
// that verifies is the one in the file, and nothing lands over a committed chunk. CI once saw "every
// chunk verified but the whole hashes to …" (a check made before chunk checks chained into the digest)
// when a corrupted copy's pieces were written over a good one; here the file's bytes are compared.

import Foundation
import Testing
@testable import Broadcast

@Suite struct ChunkFileTests {
    /// Both ways of writing: around the page cache (O_DIRECT, every copy held until verified; the
    /// temporary directory is a disk filesystem in CI) and through it (the first copy written in place).
    @Test(arguments: [true, false]) func racingCopiesOfAChunkNeverCorruptTheFile(bypassPageCache: Bool) throws {
        let dir = NSTemporaryDirectory() + "svmb-cf-\(getpid())-\(bypassPageCache)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let chunk = 64 << 10, count = 3
        let good = (0..<(chunk * count)).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 7) }
        var bad = good
        for i in stride(from: chunk, to: 2 * chunk, by: 997) { bad[i] ^= 0x5a }  // chunk 1, corrupted
        try Data(good).write(to: URL(fileURLWithPath: "\(dir)/image"))
        let manifest = try Manifest.compute(path: "\(dir)/image", chunkSize: chunk)
        // Orders of events for chunk 1: pieces of the bad (B) and good (G) copies, then who finishes first.
        let piece = 4096
        for (round, goodFirst) in [(0, true), (1, false), (2, true), (3, false)] {
            let dst = "\(dir)/copy\(round)"
            let f = try ChunkFile(destination: dst, manifest: manifest, bypassPageCache: bypassPageCache)
            if !bypassPageCache { #expect(!f.bypassesPageCache) }
            for i in [0, 2] {
                let w = try #require(f.writer(for: i, length: chunk))
                try good[(i * chunk)..<((i + 1) * chunk)].withUnsafeBytes { try w.append($0) }
                #expect(try w.finish())
            }
            // Round 0/1: the bad copy started first (it writes in place); 2/3: the good one did.
            let first = try #require(f.writer(for: 1, length: chunk))
            let second = try #require(f.writer(for: 1, length: chunk))
            let (b, g) = round < 2 ? (first, second) : (second, first)
            for (n, off) in stride(from: 0, to: chunk, by: piece).enumerated() {  // interleaved pieces, the
                let badPiece = { try bad[(chunk + off)..<(chunk + off + piece)].withUnsafeBytes { try b.append($0) } }
                let goodPiece = { try good[(chunk + off)..<(chunk + off + piece)].withUnsafeBytes { try g.append($0) } }
                if n % 2 == 0 { try goodPiece(); try badPiece() } else { try badPiece(); try goodPiece() }  // bad one last half the time
            }
            if goodFirst { #expect(try g.finish()); #expect(try !b.finish()) } else { #expect(try !b.finish()); #expect(try g.finish()) }
            try f.finish()
            #expect(FileManager.default.contents(atPath: dst) == Data(good), "round \(round)")
        }
    }

    /// An uncached copy whose last chunk ends mid-page: the whole pages go by O_DIRECT, the tail through
    /// the page cache; the newest verified chunks can be read back from memory, the oldest have left it.
    /// Whether the temporary directory's filesystem takes O_DIRECT (ext4 and xfs do; tmpfs before 6.6 does not).
    static let directIO: Bool = {
        let dir = NSTemporaryDirectory() + "svmb-cf-probe-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        guard (try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)) != nil,
            (try? Data(count: 128 << 10).write(to: URL(fileURLWithPath: "\(dir)/image"))) != nil,
            let m = try? Manifest.compute(path: "\(dir)/image", chunkSize: 64 << 10),
            let f = try? ChunkFile(destination: "\(dir)/copy", manifest: m, keepInMemory: 0)
        else { return false }
        return f.bypassesPageCache
    }()

    @Test(.enabled(if: directIO, "SKIPPED: the temporary directory's filesystem does not take O_DIRECT; the uncached path cannot be exercised"))
    func uncachedCopyWithATailKeepsTheNewestChunksInMemory() throws {
        let dir = NSTemporaryDirectory() + "svmb-cf-tail-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let chunk = 64 << 10, count = 7
        let image = (0..<(chunk * (count - 1) + 5000)).map { UInt8(truncatingIfNeeded: $0 &* 40503 >> 3) }
        try Data(image).write(to: URL(fileURLWithPath: "\(dir)/image"))
        let manifest = try Manifest.compute(path: "\(dir)/image", chunkSize: chunk)
        let f = try ChunkFile(destination: "\(dir)/copy", manifest: manifest, keepInMemory: 4 * chunk)
        #expect(f.bypassesPageCache)
        for i in (0..<count).reversed() {  // the tail chunk first, the first chunk last
            let (off, len) = manifest.range(i)
            let w = try #require(f.writer(for: i, length: len))
            try image[Int(off)..<(Int(off) + len)].withUnsafeBytes { try w.append($0) }
            #expect(try w.finish())
        }
        for i in 0..<count {
            let (off, len) = manifest.range(i)
            if i < 4 {
                #expect(f.held(i).map { Array($0) } == Array(image[Int(off)..<(Int(off) + len)]), "chunk \(i)")
            } else {
                #expect(f.held(i) == nil, "chunk \(i) should have left memory")
            }
        }
        try f.finish()
        #expect(FileManager.default.contents(atPath: "\(dir)/copy") == Data(image))
    }

    /// A kept manifest is reused while the file is unchanged, and computed again (and kept anew) once
    /// the file changes or another chunk size is asked for; a damaged store is recomputed, not trusted.
    @Test func aKeptManifestIsReusedOnlyWhileTheFileIsUnchanged() throws {
        let dir = NSTemporaryDirectory() + "svmb-mf-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let image = "\(dir)/image", store = "\(dir)/image.manifest"
        try Data((0..<(300 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 31) }).write(to: URL(fileURLWithPath: image))
        let first = try Manifest.reusing(store, for: image, chunkSize: 64 << 10)
        #expect(first == (try Manifest.compute(path: image, chunkSize: 64 << 10)))
        #expect(FileManager.default.fileExists(atPath: store))
        #expect(try Manifest.reusing(store, for: image, chunkSize: 64 << 10) == first)
        #expect(try Manifest.reusing(store, for: image, chunkSize: 128 << 10).chunkSize == 128 << 10)
        // Same size, new bytes, a later modification time.
        try Data((0..<(300 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 37) }).write(to: URL(fileURLWithPath: image))
        var times = [timespec(tv_sec: time(nil) + 5, tv_nsec: 0), timespec(tv_sec: time(nil) + 5, tv_nsec: 0)]
        #expect(utimensat(AT_FDCWD, image, &times, 0) == 0)
        let changed = try Manifest.reusing(store, for: image, chunkSize: 64 << 10)
        #expect(changed != first)
        #expect(changed == (try Manifest.compute(path: image, chunkSize: 64 << 10)))
        try Data("{ not a manifest".utf8).write(to: URL(fileURLWithPath: store))
        #expect(try Manifest.reusing(store, for: image, chunkSize: 64 << 10) == changed)
    }
}
