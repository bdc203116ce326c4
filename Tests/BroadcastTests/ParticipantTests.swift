// The real engine over loopback TCP (no root needed): several ranks in one process, each on its own
// port; every copy is verified independently. Namespaces, rates and killed processes: Tests/broadcast.

import Crypto
import Foundation
import NIOCore
import NIOPosix
import Testing
@testable import Broadcast

@Suite(.serialized) struct ParticipantTests {
    static func scratch() -> String {
        let d = NSTemporaryDirectory() + "svmb-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    static func randomFile(_ path: String, _ size: Int) -> String {
        let bytes = FileHandle(forReadingAtPath: "/dev/urandom")!.readData(ofLength: size)
        FileManager.default.createFile(atPath: path, contents: bytes)
        return "sha256:" + SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }

    static func digest(_ path: String) -> String? {
        guard let d = FileManager.default.contents(atPath: path) else { return nil }
        return "sha256:" + SHA256.hash(data: d).map { String(format: "%02x", $0) }.joined()
    }

    /// Runs one transfer of `size` bytes to n ranks; returns each receiving rank's result.
    static func transfer(
        n: Int, size: Int, kind: ScheduleKind? = .pipeline, corrupt: [Int: Set<Int>] = [:],
        digestOverride: String? = nil
    ) throws -> (String, String, [Result<ParticipantReport, Error>]) {
        let dir = scratch()
        let want = randomFile(dir + "/src", size)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { try? group.syncShutdownGracefully() }
        // Every rank binds port 0 first (a guessed port can be taken by any other test's connection),
        // then all begin with the addresses they got.
        var ranks: [(Participant, Int)] = []
        for r in 0..<n {
            var c = ParticipantConfig(rank: r, addresses: [])
            c.kind = kind
            c.chunkSize = 64 << 10
            c.giveUpSeconds = 20
            c.digest = digestOverride ?? want
            if r == 0 { c.source = dir + "/src"; c.digest = want } else { c.destination = dir + "/copy\(r)" }
            c.corrupt = corrupt[r] ?? []
            let p = Participant(c, group: group)
            ranks.append((p, try p.listen(on: "127.0.0.1:0")))
        }
        let addrs = ranks.map { "127.0.0.1:\($0.1)" }
        var futures: [Int: EventLoopFutureBox] = [:]
        for (r, (p, _)) in ranks.enumerated() { futures[r] = EventLoopFutureBox(try p.begin(addresses: addrs, rank: r)) }
        let results = (1..<n).map { r in Result { try futures[r]!.future.wait() } }
        _ = try? futures[0]!.future.wait()
        return (dir, want, results)
    }

    @Test(arguments: [ScheduleKind.pipeline, .binomial, .central])
    func everyRankGetsAVerifiedCopy(kind: ScheduleKind) throws {
        let n = 6
        let (dir, want, results) = try Self.transfer(n: n, size: (3 << 20) + 12345, kind: kind)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (i, r) in results.enumerated() {
            if case .failure(let e) = r { Issue.record("rank \(i + 1): \(e)") }
            #expect(Self.digest(dir + "/copy\(i + 1)") == want, "rank \(i + 1)")
        }
        // Nothing partial is left behind.
        let left = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix(".partial") }
        #expect(left.isEmpty)
    }

    /// With no schedule named, every rank chooses the same one from the manifest; the two trees' edges
    /// beyond the circulant graph are dialed once it is known.
    @Test(arguments: [(1 << 20, ScheduleKind.twoTree), (6 << 20, .relay)])
    func aScheduleLeftOpenIsChosenFromTheManifest(size: Int, chosen: ScheduleKind) throws {
        let n = 6  // relay from 16 × 5 = 80 chunks of 64 KiB
        #expect(ScheduleKind.chosen(ranks: n, chunks: size >> 16) == chosen)
        let (dir, want, results) = try Self.transfer(n: n, size: size, kind: nil)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (i, r) in results.enumerated() {
            switch r {
            case .success(let rep): #expect(rep.kind == chosen, "rank \(i + 1)")
            case .failure(let e): Issue.record("rank \(i + 1): \(e)")
            }
            #expect(Self.digest(dir + "/copy\(i + 1)") == want, "rank \(i + 1)")
        }
    }

    @Test func aCorruptedChunkIsDetectedAndFetchedAgain() throws {
        let (dir, want, results) = try Self.transfer(n: 4, size: 1 << 20, corrupt: [0: [1, 5, 9], 1: [2]])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var corrupted = 0
        for (i, r) in results.enumerated() {
            if case .success(let rep) = r { corrupted += rep.stats.corrupted } else { Issue.record("rank \(i + 1) failed") }
            #expect(Self.digest(dir + "/copy\(i + 1)") == want)
        }
        #expect(corrupted >= 3, "the corrupted chunks were seen and refetched")
    }

    @Test func aRankExpectingAnotherImageRefusesAndKeepsNothing() throws {
        let wrong = "sha256:" + String(repeating: "0", count: 64)
        let (dir, _, results) = try Self.transfer(n: 2, size: 200_000, digestOverride: wrong)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        guard case .failure(let e) = results[0] else { Issue.record("rank 1 accepted another image"); return }
        #expect("\(e)".contains("not the expected \(wrong)"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/copy1"))
    }

    /// A daemon stopping mid-transfer drops its ranks with their event loops: the rank is abandoned
    /// (its future fails) and its sendfile handle is closed, not left for NIO to trap on.
    @Test func aRankDroppedWithItsEventLoopsFailsCleanly() throws {
        let dir = Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let want = Self.randomFile(dir + "/src", 300_000)
        // Rank 1's port: one nobody listens on (bound and closed here, so no other test holds it).
        let absent = try Self.closedPort()
        var c = ParticipantConfig(rank: 0, addresses: ["127.0.0.1:0", "127.0.0.1:\(absent)"])
        c.source = dir + "/src"
        c.digest = want
        c.giveUpSeconds = 60
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {  // (the rank is not held here: only its event loop keeps it, as in a stopping daemon)
            let p = Participant(c, group: group)
            let port = try p.listen(on: "127.0.0.1:0")
            _ = try p.begin(addresses: ["127.0.0.1:\(port)", "127.0.0.1:\(absent)"])
        }
        Thread.sleep(forTimeInterval: 0.2)  // rank 1 never comes; rank 0 waits with its file open
        #expect(Self.openDescriptors(of: dir + "/src") > 0)
        try group.syncShutdownGracefully()  // (its future can no longer complete: its loop is gone)
        #expect(Self.openDescriptors(of: dir + "/src") == 0, "the dropped rank closed its copy of the image")
    }

    /// A loopback port the kernel just handed out and that nothing listens on any more.
    static func closedPort() throws -> Int {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let ch = try ServerBootstrap(group: group).bind(host: "127.0.0.1", port: 0).wait()
        let port = ch.localAddress?.port ?? 0
        try ch.close().wait()
        return port
    }

    /// How many of this process's descriptors are open on `path`.
    static func openDescriptors(of path: String) -> Int {
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return fds.filter { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + $0)) == path }.count
    }
}

/// Futures are Sendable already; this keeps them in a dictionary without a warning.
struct EventLoopFutureBox: @unchecked Sendable {
    let future: NIOCore.EventLoopFuture<ParticipantReport>
    init(_ f: NIOCore.EventLoopFuture<ParticipantReport>) { future = f }
}
