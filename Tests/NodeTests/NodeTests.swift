// Placement of a job's guests over its nodes and cores, the daemon's configuration, and the node's job
// state on disk: pure parts of the Slurm path, tested without Slurm or guests.

import Daemon
import Foundation
import Node
import Runner
import Testing

@Suite struct PlacementTests {
    @Test func guestsAreSpreadEvenlyFirstNodesTakeTheRest() throws {
        let shares = try (0..<3).map { try Placement.share(count: 7, nodes: 3, index: $0) }
        #expect(shares.map(\.guests) == [3, 2, 2])
        #expect(shares.map(\.firstIndex) == [0, 3, 5])
        #expect(try Placement.share(count: nil, nodes: 4, index: 2) == NodeShare(guests: 1, firstIndex: 2))
        #expect(throws: PlacementError.self) { try Placement.share(count: 1, nodes: 2, index: 0) }
        #expect(throws: PlacementError.self) { try Placement.share(count: 4, nodes: 2, index: 2) }
    }

    @Test func eachVCPUGetsItsOwnCoreOfTheJob() throws {
        let all = CPUList(Array(0..<64))
        let p = try Placement.place(share: NodeShare(guests: 2, firstIndex: 0), vcpus: 2, jobCPUs: [4, 5, 6, 7, 8],
                                    node: "n1", maxVCPUs: 64, allowed: all)
        #expect(p.perGuest == [[4, 5], [6, 7]])
        #expect(p.housekeeping == [8])
        #expect(Set(p.perGuest.flatMap { $0 }).count == 4)
        // Without --vm-vcpus the guests split the job's cores.
        let q = try Placement.place(share: NodeShare(guests: 2, firstIndex: 0), vcpus: nil, jobCPUs: [0, 1, 2, 3],
                                    node: "n1", maxVCPUs: 64, allowed: all)
        #expect(q.vcpus == 2 && q.warnings.count == 1)
    }

    @Test func aRequestThatDoesNotFitSaysWhatToAskFor() {
        #expect {
            try Placement.place(share: NodeShare(guests: 2, firstIndex: 0), vcpus: 2, jobCPUs: [0, 1], node: "n1",
                                maxVCPUs: 64, allowed: CPUList(Array(0..<8)))
        } throws: { "\($0)".contains("need 4, one core per vCPU") && "\($0)".contains("--ntasks-per-node=4") }
        #expect {
            try Placement.place(share: NodeShare(guests: 1, firstIndex: 0), vcpus: 8, jobCPUs: Array(0..<8), node: "n1",
                                maxVCPUs: 4, allowed: CPUList(Array(0..<8)))
        } throws: { "\($0)".contains("MaxVCPUs = 4") }
    }

    @Test func tasksAreDealtRoundRobinOverTheGuests() {
        #expect((0..<6).map { Placement.guest(forLocalTask: $0, guests: 4) } == [0, 1, 2, 3, 0, 1])
        #expect(Placement.guest(forLocalTask: 3, guests: 1) == 0)
    }
}

@Suite struct DaemonConfigTests {
    func write(_ text: String) throws -> String {
        let p = NSTemporaryDirectory() + "slurm-vmd-\(UUID().uuidString).toml"
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    @Test func bothRolesFromOneFile() throws {
        let c = try DaemonConfig.load(try write("""
            socket = "/tmp/x.sock"
            slurm_user = "slurm"
            [catalog]
            path = "/tmp/cat"
            listen = "127.0.0.1:7000"
            [node]
            name = "n7"
            boot_timeout = 30
            hugepages = "off"
            """))
        #expect(c.socket == "/tmp/x.sock" && c.slurmUser == "slurm")
        #expect(c.catalog?.listen == "127.0.0.1:7000")
        #expect(c.node?.name == "n7" && c.node?.catalogAddress == "127.0.0.1:7000" && c.node?.bootTimeout == 30)
    }

    @Test func unknownKeysAndBadValuesAreErrorsNamingThem() throws {
        #expect { try DaemonConfig.load(try write("sokcet = \"/x\"\n[node]\ncatalog = \"h:1\"\n")) } throws: { "\($0)".contains("unknown key sokcet") }
        #expect { try DaemonConfig.load(try write("[node]\ncatalog = \"h:1\"\nhugepages = \"maybe\"\n")) } throws: { "\($0)".contains("node.hugepages") }
        #expect { try DaemonConfig.load(try write("[node]\ncatalog = 7\n")) } throws: { "\($0)".contains("node.catalog must be a string") }
        #expect { try DaemonConfig.load(try write("socket = \"/x\"\n")) } throws: { "\($0)".contains("needs at least one role") }
        #expect { try DaemonConfig.load(try write("[node]\n")) } throws: { "\($0)".contains("node.catalog is missing") }
    }
}

@Suite struct JobStoreTests {
    @Test func statesAreWrittenWholeAndListed() throws {
        let dir = NSTemporaryDirectory() + "jobstore-\(UUID().uuidString)"
        let s = try JobStore(stateDir: dir)
        for j in [3, 1, 2] as [UInt32] {
            try s.save(JobState(job: j, uid: 1000, gid: 1000, node: "n1", phase: .ready, error: nil, image: "sha256:00",
                                imageLabel: "minimal:1", placement: nil, guests: ["job\(j)-vm0"], workdir: "/home/u",
                                created: Date(), prepareSeconds: 1.5))
        }
        #expect(s.all().map(\.job) == [1, 2, 3])
        #expect(s.load(2)?.guests == ["job2-vm0"])
        s.remove(2)
        #expect(s.load(2) == nil && s.all().count == 2)
        // Nothing but the job files: the temporary files of atomic writes are gone.
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/jobs").sorted() == ["1.json", "3.json"])
        try? FileManager.default.removeItem(atPath: dir)
    }
}
