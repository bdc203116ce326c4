// Two copies of one chunk in flight at once (a re-sourced chunk racing the first, one of them
// corrupted on the way): whatever order their pieces come in and whichever finishes first, the copy
// that verifies is the one in the file, and nothing lands over a committed chunk. CI once saw "every
// chunk verified but the whole hashes to …" (a check made before chunk checks chained into the digest)
// when a corrupted copy's pieces were written over a good one; here the file's bytes are compared.

import Foundation
import Testing
@testable import Broadcast

@Suite struct ChunkFileTests {
    @Test func racingCopiesOfAChunkNeverCorruptTheFile() throws {
        let dir = NSTemporaryDirectory() + "svmb-cf-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let chunk = 64 << 10, count = 3
        let good = (0..<(chunk * count)).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 7) }
        var bad = good
        for i in stride(from: chunk, to: 2 * chunk, by: 997) { bad[i] ^= 0x5a }     // chunk 1, corrupted
        try Data(good).write(to: URL(fileURLWithPath: "\(dir)/image"))
        let manifest = try Manifest.compute(path: "\(dir)/image", chunkSize: chunk)
        // Orders of events for chunk 1: pieces of the bad (B) and good (G) copies, then who finishes first.
        let piece = 4096
        for (round, goodFirst) in [(0, true), (1, false), (2, true), (3, false)] {
            let dst = "\(dir)/copy\(round)"
            let f = try ChunkFile(destination: dst, manifest: manifest)
            for i in [0, 2] {
                let w = try #require(f.writer(for: i, length: chunk))
                try good[(i * chunk)..<((i + 1) * chunk)].withUnsafeBytes { try w.append($0) }
                #expect(try w.finish())
            }
            // Round 0/1: the bad copy started first (it writes in place); 2/3: the good one did.
            let first = try #require(f.writer(for: 1, length: chunk))
            let second = try #require(f.writer(for: 1, length: chunk))
            let (b, g) = round < 2 ? (first, second) : (second, first)
            for (n, off) in stride(from: 0, to: chunk, by: piece).enumerated() {   // interleaved pieces, the
                let badPiece = { try bad[(chunk + off)..<(chunk + off + piece)].withUnsafeBytes { try b.append($0) } }
                let goodPiece = { try good[(chunk + off)..<(chunk + off + piece)].withUnsafeBytes { try g.append($0) } }
                if n % 2 == 0 { try goodPiece(); try badPiece() } else { try badPiece(); try goodPiece() }   // bad one last half the time
            }
            if goodFirst { #expect(try g.finish()); #expect(try !b.finish()) } else { #expect(try !b.finish()); #expect(try g.finish()) }
            try f.finish()
            #expect(FileManager.default.contents(atPath: dst) == Data(good), "round \(round)")
        }
    }
}
