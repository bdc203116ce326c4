// The coordinator over loopback: requests for one blob from the nodes of two jobs that start together
// become one transfer; a node that already holds the blob only counts towards its job.

import Foundation
import NIOCore
import NIOPosix
import Testing
@testable import Broadcast

@Suite(.serialized) struct CoordinatorTests {
    final class Results: @unchecked Sendable {
        let lock = NSLock()
        var errors: [String] = []
        var plans: [String: Coordinator.Assignment?] = [:]
        func add(_ node: String, _ a: Coordinator.Assignment?) { lock.lock(); plans[node] = a; lock.unlock() }
        func fail(_ s: String) { lock.lock(); errors.append(s); lock.unlock() }
    }

    @Test func twoJobsAtOnceShareOneBroadcast() throws {
        let dir = ParticipantTests.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let want = ParticipantTests.randomFile(dir + "/blob", (2 << 20) + 777)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { try? group.syncShutdownGracefully() }
        let coord = Coordinator(group: group, source: { $0 == want ? dir + "/blob" : nil })
        coord.gatherSeconds = 0.2
        coord.chunkSize = 256 << 10
        let res = Results()
        // Job 7 on n1..n3 (n3 already holds the blob), job 8 on n4, n5.
        let nodes: [(String, String, Int, Bool)] = [
            ("n1", "7", 3, false), ("n2", "7", 3, false), ("n3", "7", 3, true), ("n4", "8", 2, false), ("n5", "8", 2, false),
        ]
        // One thread per node (not concurrentPerform: its pool is as small as the machine, and a join blocks).
        let threads = (0..<nodes.count).map { i in
            Thread {
                let (name, job, count, held) = nodes[i]
                usleep(useconds_t(i * 20_000))
                do {
                    var c = ParticipantConfig(rank: 1, addresses: [])
                    c.destination = dir + "/copy-\(name)"
                    c.digest = want
                    let p = held ? nil : Participant(c, group: group)
                    let port = try p?.listen(on: "127.0.0.1:0") ?? 0
                    let a = try coord.join(
                        digest: want, job: job, jobNodes: count, node: name, address: held ? nil : "127.0.0.1:\(port)", host: "127.0.0.1")
                    res.add(name, a)
                    if let a, let p { _ = try p.begin(addresses: a.addresses, rank: a.rank, transfer: a.transfer, chunkSize: a.chunkSize).wait() }
                } catch { res.fail("\(name): \(error)") }
            }
        }
        threads.forEach { $0.start() }
        while threads.contains(where: { !$0.isFinished }) { usleep(10_000) }
        #expect(res.errors.isEmpty, "\(res.errors)")
        #expect(coord.transfers == 1, "one broadcast for both jobs")
        #expect(res.plans["n3"]! == nil, "the node holding the blob receives nothing")
        let transfers = Set(res.plans.values.compactMap { $0?.transfer })
        #expect(transfers.count == 1)
        for n in ["n1", "n2", "n4", "n5"] { #expect(ParticipantTests.digest(dir + "/copy-\(n)") == want, "\(n)") }
    }

    @Test func aBlobTheCatalogLacksIsAClearError() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let coord = Coordinator(group: group, source: { _ in nil })
        #expect {
            try coord.join(
                digest: "sha256:" + String(repeating: "1", count: 64), job: "1", jobNodes: 1, node: "n1", address: "127.0.0.1:1", host: "127.0.0.1")
        } throws: { if case BroadcastError.noSuchBlob = $0 { true } else { false } }
    }
}
