// The resumable SHA-256 (CSHA256) against swift-crypto's, on both its block paths, and the manifest's
// chain: every chunk checks from the value before it, the last ends in the file's digest, and a
// manifest whose values are wrong fails the chunks next to the lie or its own validation.

import CSHA256
import Crypto
import Foundation
import Testing
@testable import Broadcast

@Suite(.serialized) struct ChainedSHA256Tests {
    /// Random bytes, through the file helper the other broadcast suites use.
    static func bytes(_ n: Int, at path: String) throws -> [UInt8] {
        _ = ParticipantTests.randomFile(path, n)
        return [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    static func scratch(_ name: String) throws -> String {
        let dir = NSTemporaryDirectory() + "svmb-chain-\(getpid())-\(name)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    func reference(_ b: [UInt8]) -> Data { Data(SHA256.hash(data: b)) }

    @Test(arguments: [false, true]) func matchesSwiftCryptoForEveryLengthAndSplit(portable: Bool) throws {
        csha256_force_portable(portable ? 1 : 0)
        defer { csha256_force_portable(0) }
        let dir = try Self.scratch("split-\(portable)")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = try Self.bytes(70_000, at: dir + "/data")
        var lengths = Array(0...200) + [255, 256, 257, 511, 512, 4095, 4096, 65_536, 70_000]
        lengths += [1000, 12_345, 33_333]
        for n in lengths {
            let b = Array(data[0..<n])
            var h = ChainedSHA256()
            // Feed in uneven pieces: 1, 2, 3, … bytes, so every buffer boundary case comes up.
            var off = 0, step = 1
            while off < n { let e = min(n, off + step); b[off..<e].withUnsafeBytes { h.update($0) }; off = e; step = step % 97 + 1 }
            #expect(h.finalize() == reference(b), "length \(n), portable \(portable)")
        }
    }

    @Test func resumingFromAChainingValueContinuesTheSameHash() throws {
        let dir = try Self.scratch("resume")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = try Self.bytes(300_000, at: dir + "/data")
        for cut in [64, 4096, 65_536, 262_144] {
            var first = ChainedSHA256()
            data[0..<cut].withUnsafeBytes { first.update($0) }
            let state = try #require(first.state())
            var rest = try #require(ChainedSHA256(resuming: state, at: Int64(cut)))
            data[cut...].withUnsafeBytes { rest.update($0) }
            #expect(rest.finalize() == reference(data), "cut at \(cut)")
        }
        var odd = ChainedSHA256()
        data[0..<100].withUnsafeBytes { odd.update($0) }
        #expect(odd.state() == nil, "no chaining value in the middle of a block")
        #expect(ChainedSHA256(resuming: Data(count: 32), at: 100) == nil)
        #expect(ChainedSHA256(resuming: Data(count: 31), at: 64) == nil)
    }

    @Test func theSHAExtensionsAreUsedWhereTheCPUHasThem() throws {
        let cpu = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let has = cpu.split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: " ").contains("sha_ni") ?? false
        #expect(ChainedSHA256.usesSHAExtensions == has)
    }

    @Test func aManifestsChainVerifiesEachChunkAndEndsInTheDigest() throws {
        let dir = try Self.scratch("manifest")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let chunk = 64 << 10
        let path = dir + "/image"
        let data = try Self.bytes(5 * chunk + 1234, at: path)  // a short last chunk
        let m = try Manifest.compute(path: path, chunkSize: chunk)
        #expect(m.count == 6)
        #expect(m.digest == "sha256:" + reference(data).map { String(format: "%02x", $0) }.joined())
        try m.validate()
        for i in 0..<m.count {
            let (off, len) = m.range(i)
            data[Int(off)..<(Int(off) + len)].withUnsafeBytes { #expect(m.verify(i, $0), "chunk \(i)") }
        }
        // A corrupted chunk fails only its own check.
        var bad = data
        bad[2 * chunk + 5] ^= 1
        for i in 0..<m.count {
            let (off, len) = m.range(i)
            bad[Int(off)..<(Int(off) + len)].withUnsafeBytes { #expect(m.verify(i, $0) == (i != 2), "chunk \(i)") }
        }
        // A lying chain value fails the chunk before it and the one after it; a lying end fails validation.
        var lie = m.chunks
        lie[1][0] ^= 0xff
        let liar = Manifest(digest: m.digest, size: m.size, chunkSize: m.chunkSize, chunks: lie)
        try liar.validate()
        for i in 0..<m.count {
            let (off, len) = m.range(i)
            data[Int(off)..<(Int(off) + len)].withUnsafeBytes { #expect(liar.verify(i, $0) == !(i == 1 || i == 2), "chunk \(i)") }
        }
        var end = m.chunks
        end[5][31] ^= 1
        #expect { try Manifest(digest: m.digest, size: m.size, chunkSize: chunk, chunks: end).validate() } throws: {
            if case BroadcastError.corrupt = $0 { true } else { false }
        }
        #expect { try Manifest(digest: m.digest, size: m.size, chunkSize: chunk, chunks: Array(m.chunks.dropLast())).validate() } throws: {
            if case BroadcastError.corrupt = $0 { true } else { false }
        }
        #expect { try Manifest.compute(path: path, chunkSize: chunk + 1) } throws: { if case BroadcastError.config = $0 { true } else { false } }
    }
}
