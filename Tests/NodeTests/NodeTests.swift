// Placement of a job's guests over its nodes and cores, the daemon's configuration, and the node's job
// state on disk: pure parts of the Slurm path, tested without Slurm or guests.

import Catalog
import Daemon
import Foundation
import Logging
import Network
import Node
import Runner
import Support
import Testing

@Suite struct PlacementTests {
    @Test func guestsAreSpreadEvenlyFirstNodesTakeTheRest() throws {
        let shares = try (0..<3).map { try Placement.share(count: 7, nodes: 3, index: $0) }
        #expect(shares.map(\.guests) == [3, 2, 2])
        #expect(shares.map(\.firstIndex) == [0, 3, 5])
        #expect(try Placement.share(count: nil, nodes: 4, index: 2) == NodeShare(guests: 1, firstIndex: 2))
        #expect { try Placement.share(count: 1, nodes: 2, index: 0) } throws: { if case NodeError.placement = $0 { true } else { false } }
        #expect { try Placement.share(count: 4, nodes: 2, index: 2) } throws: { if case NodeError.placement = $0 { true } else { false } }
    }

    func sizing(_ vcpus: Int, given: Bool = true) -> Sizing {
        Sizing(guests: 2, vcpus: vcpus, vcpusGiven: given, nodes: 1, coresPerNode: 2 * vcpus)
    }

    @Test func eachVCPUGetsItsOwnCoreOfTheJob() throws {
        let all = CPUList(Array(0..<64))
        let p = try Placement.place(
            share: NodeShare(guests: 2, firstIndex: 0), sizing: sizing(2), jobCPUs: [4, 5, 6, 7, 8],
            node: "n1", allowed: all)
        #expect(p.perGuest == [[4, 5], [6, 7]])
        #expect(p.housekeeping == [8])
        #expect(Set(p.perGuest.flatMap { $0 }).count == 4)
        // The vCPUs decided at submission are placed as they are, whatever else the job has here.
        let q = try Placement.place(
            share: NodeShare(guests: 2, firstIndex: 0), sizing: sizing(1, given: false), jobCPUs: [0, 1, 2, 3],
            node: "n1", allowed: all)
        #expect(q.vcpus == 1 && q.perGuest == [[0], [1]])
    }

    @Test func aRequestThatDoesNotFitSaysWhatToAskFor() {
        #expect {
            try Placement.place(
                share: NodeShare(guests: 2, firstIndex: 0), sizing: sizing(2), jobCPUs: [0, 1], node: "n1",
                allowed: CPUList(Array(0..<8)))
        } throws: { "\($0)".contains("need 4, one core per vCPU") && "\($0)".contains("--ntasks-per-node=4") && "\($0)".contains("--vm-vcpus=2") }
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
        let c = try DaemonConfig.load(
            try write(
                """
                socket = "/tmp/x.sock"
                slurm_user = "slurm"
                [catalog]
                path = "/tmp/cat"
                listen = "127.0.0.1:7000"
                [node]
                name = "n7"
                boot_timeout = 30
                hugepages = "off"
                backend = "auto"
                """))
        #expect(c.socket == "/tmp/x.sock" && c.slurmUser == "slurm")
        #expect(c.catalog?.listen == "127.0.0.1:7000")
        #expect(c.node?.name == "n7" && c.node?.catalogAddress == "127.0.0.1:7000" && c.node?.bootTimeout == 30)
        #expect(c.node?.hugepages == .off && c.node?.backend == .auto)
        // The job network is on by default; [network] tunes it or turns it off.
        #expect(c.node?.network == NetworkConfig())
        let net = try DaemonConfig.load(
            try write("[node]\ncatalog = \"h:1\"\n[network]\npool = \"10.9.0.0/24\"\nvxlan_port = 8472\nunderlay_mtu = 9000\n"))
        #expect(
            net.node?.network?.pool.description == "10.9.0.0/24" && net.node?.network?.vxlanPort == 8472 && net.node?.network?.underlayMTU == 9000)
        #expect(try DaemonConfig.load(try write("[node]\ncatalog = \"h:1\"\n[network]\nenabled = false\n")).node?.network == nil)
        // The node picks its backend as `vm run --backend auto` does, unless told.
        #expect(try DaemonConfig.load(try write("[node]\ncatalog = \"h:1\"\n")).node?.backend == .auto)
        #expect(try DaemonConfig.load(try write("[node]\ncatalog = \"h:1\"\nbackend = \"qemu\"\n")).node?.backend == .qemu)
    }

    @Test func unknownKeysAndBadValuesAreErrorsNamingThem() throws {
        #expect { try DaemonConfig.load(try write("sokcet = \"/x\"\n[node]\ncatalog = \"h:1\"\n")) } throws: {
            "\($0)".contains("unknown key sokcet")
        }
        #expect { try DaemonConfig.load(try write("[node]\ncatalog = \"h:1\"\nhugepages = \"maybe\"\n")) } throws: {
            "\($0)".contains("node.hugepages")
        }
        #expect { try DaemonConfig.load(try write("[node]\ncatalog = \"h:1\"\nbackend = \"xen\"\n")) } throws: {
            "\($0)".contains("node.backend must be")
        }
        #expect { try DaemonConfig.load(try write("[node]\ncatalog = \"h:1\"\n[network]\npool = \"10.0.0.1/8\"\n")) } throws: {
            "\($0)".contains("network.pool") && "\($0)".contains("host bits")
        }
        #expect { try DaemonConfig.load(try write("[catalog]\n[network]\n")) } throws: { "\($0)".contains("add [node]") }
        #expect(try DaemonConfig.load(try write("[node]\ncatalog = \"h:1\"\n[network]\noutbound = \"none\"\n")).node?.network != nil)
        let nat = try DaemonConfig.load(
            try write("[node]\ncatalog = \"h:1\"\n[network]\noutbound = \"nat\"\nnat_deny = [\"192.168.0.0/16\", \"10.1.2.3/32\"]\n")
        ).node?.network
        #expect(nat?.outbound == .nat && nat?.natLinks.description == "198.18.0.0/16")
        #expect(nat?.natDeny.map(\.description) == ["192.168.0.0/16", "10.1.2.3/32"])
        #expect { try DaemonConfig.load(try write("[node]\ncatalog = \"h:1\"\n[network]\noutbound = \"open\"\n")) } throws: {
            "\($0)".contains("must be \"none\" or \"nat\"")
        }
        #expect { try DaemonConfig.load(try write("[node]\ncatalog = \"h:1\"\n[network]\nnat_links = \"198.18.0.0/31\"\n")) } throws: {
            "\($0)".contains("network.nat_links") && "\($0)".contains("/8 to /30")
        }
        #expect { try DaemonConfig.load(try write("[node]\ncatalog = \"h:1\"\n[network]\nnat_deny = [\"10.0.0.0\"]\n")) } throws: {
            "\($0)".contains("network.nat_deny") && "\($0)".contains("'10.0.0.0'")
        }
        #expect { try DaemonConfig.load(try write("[node]\ncatalog = \"h:1\"\n[network]\nmtu = 9000\n")) } throws: {
            "\($0)".contains("unknown key")
        }
        #expect { try DaemonConfig.load(try write("[node]\ncatalog = 7\n")) } throws: { "\($0)".contains("node.catalog must be a string") }
        #expect { try DaemonConfig.load(try write("socket = \"/x\"\n")) } throws: { "\($0)".contains("needs at least one role") }
        #expect { try DaemonConfig.load(try write("[node]\n")) } throws: { "\($0)".contains("node.catalog is missing") }
    }

    @Test func theConfinementKeys() throws {
        let n = try DaemonConfig.load(
            try write(
                "[node]\ncatalog = \"h:1\"\ncgroups = false\nguest_overhead = \"64M\"\nconsole_limit = \"1M\"\nvmm_uids = \"5000-5999\"\n"
            )
        ).node
        #expect(n?.cgroups == false && n?.guestOverheadMB == 64 && n?.consoleLimit == 1 << 20 && n?.vmmUIDs == "5000-5999")
        let d = try DaemonConfig.load(try write("[node]\ncatalog = \"h:1\"\n")).node
        #expect(d?.cgroups == true && d?.guestOverheadMB == 256 && d?.consoleLimit == nil && d?.vmmUIDs == nil)
        #expect(try DaemonConfig.load(try write("[node]\ncatalog = \"h:1\"\nvmm_uids = \"off\"\n")).node?.vmmUIDs == "off")
        for (key, value, says) in [
            ("guest_overhead", "\"1M\"", "node.guest_overhead must be a size from 16M"), ("console_limit", "\"1K\"", "node.console_limit"),
            ("vmm_uids", "\"0-10\"", "node.vmm_uids"), ("cgroups", "\"yes\"", "node.cgroups"),
        ] {
            #expect { try DaemonConfig.load(try write("[node]\ncatalog = \"h:1\"\n\(key) = \(value)\n")) } throws: { "\($0)".contains(says) }
        }
    }
}

@Suite struct JobStoreTests {
    @Test func statesAreWrittenWholeAndListed() throws {
        let dir = NSTemporaryDirectory() + "jobstore-\(UUID().uuidString)"
        let s = try JobStore(stateDir: dir)
        for j in [3, 1, 2] as [UInt32] {
            try s.save(
                JobState(
                    job: j, uid: 1000, gid: 1000, node: "n1", phase: .ready, error: nil, image: "sha256:00",
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

/// The request's real wire path through the daemon's socket API: the match call exactly as the plugin's
/// submit.c writes it, the answer's request carried as the prolog's prepare call carries it (prolog.c).
@Suite struct RequestWireTests {
    @Test func whatSbatchSendsComesBackAsWhatThePrologSends() throws {
        let root = NSTemporaryDirectory() + "slurm-vm-wire-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let cat = try Catalog(root: root + "/catalog")
        try FileManager.default.createDirectory(atPath: root + "/src", withIntermediateDirectories: true)
        try Data("kernel".utf8).write(to: URL(fileURLWithPath: root + "/src/k"))
        let k = try cat.blobs.ingest(root + "/src/k")
        try cat.add(
            ImageRecord(
                name: "tiny1", version: "1", artefacts: [Artefact(role: "kernel", digest: k.digest, size: k.size)],
                cmdline: "", derived: [Attribute("Arch", "\"x86_64\""), Attribute("MaxVCPUs", "1"), Attribute("MinMemoryMB", "96")],
                source: "test"))
        let conf = root + "/vmd.toml"
        try "socket = \"\(root)/vmd.sock\"\n[catalog]\npath = \"\(root)/catalog\"\nlisten = \"127.0.0.1:0\"\n".write(
            toFile: conf, atomically: true, encoding: .utf8)
        let api = try API(config: DaemonConfig.load(conf), logger: Logger(label: "test"))

        func call(_ line: String) throws -> [String: Any] {
            var fds: [Int32] = [0, 0]
            #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
            let server = fds[0]
            let t = Thread { api.serve(LineConnection(fd: server)) }
            t.start()
            let client = LineConnection(fd: fds[1])
            _ = (line + "\n").utf8CString.withUnsafeBufferPointer { write(fds[1], $0.baseAddress!, $0.count - 1) }
            let reply = try #require(try client.readLine())
            return try #require(try JSONSerialization.jsonObject(with: Data(reply.utf8)) as? [String: Any])
        }
        // sbatch -N1 --ntasks-per-node=2 --vm-image=tiny1: one guest with 2 cores, more than tiny1 holds.
        let cmd =
            #""command": {"tool": "sbatch", "arguments": ["-N1", "--ntasks-per-node=2", "--vm-image=tiny1", "--wrap", "srun nproc"], "directives": [], "environment": {"SLURM_CONF": "/etc/slurm/slurm.conf"}}, "node_cpus": {"smallest": 2, "largest": 2}"#
        let refused = try call(#"{"op": "match", "options": {"image": "tiny1"}, "# + cmd + "}")
        #expect(refused["ok"] as? Bool == false)
        #expect((refused["error"] as? String)?.contains("MaxVCPUs") == true, "\(refused)")
        let ok = try call(#"{"op": "match", "options": {"image": "tiny1", "count": "2"}, "# + cmd + "}")
        #expect(ok["ok"] as? Bool == true, "\(ok)")
        #expect(ok["image"] as? String == "tiny1:1")
        // VM_REQUEST travels as the JSON text of "request"; the prolog nests it in its prepare call.
        let vmRequest = try JSONSerialization.data(withJSONObject: try #require(ok["request"]))
        let prepare =
            #"{"job": 7, "uid": 1000, "gid": 1000, "request": "# + String(decoding: vmRequest, as: UTF8.self)
            + #", "node": "node1", "nodeIndex": 0, "nodeCount": 1, "cpus": "0-1", "workdir": "/tmp"}"#
        let p = try JSONDecoder().decode(PrepareRequest.self, from: Data(prepare.utf8))
        #expect(p.request.sizing == Sizing(guests: 2, vcpus: 1, vcpusGiven: false, nodes: 1, coresPerNode: 2))
        #expect(p.request.memoryMB == 96 && p.request.imageLabel == "tiny1:1")
        // A malformed call says so rather than guessing.
        let bad = try call(#"{"op": "match", "options": {"image": 7}}"#)
        #expect((bad["error"] as? String)?.contains("malformed") == true, "\(bad)")
    }
}

/// The socket API's messages keep the shape the plugin's C code writes and reads.
@Suite struct MessageTests {
    func json<T: Encodable>(_ v: T) throws -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try e.encode(v), as: UTF8.self)
    }

    @Test func everyCallRoundTripsWithItsOp() throws {
        let accepted = AcceptedRequest(
            request: VMRequest(count: 2), sizing: Sizing(guests: 2, vcpus: 1, vcpusGiven: false, nodes: 1, coresPerNode: 2),
            memoryMB: 256, image: "sha256:" + String(repeating: "b", count: 64), imageLabel: "minimal:1")
        let calls: [Call] = [
            .ping, .jobs, .teardown(job: 5),
            .match(
                MatchCall(
                    options: ["image": "x"], command: SubmitCommand(tool: "sbatch", arguments: ["-N1"]), nodeCPUs: NodeCPUs(smallest: 2, largest: 4))),
            .exec(ExecCall(job: 3, argv: ["true"], env: ["A=1"], cwd: "/", localid: 1)),
            .prepare(
                PrepareRequest(job: 9, uid: 1000, gid: 1000, request: accepted, node: "n1", nodeIndex: 0, nodeCount: 1, cpus: "0-1", workdir: nil)),
        ]
        for c in calls {
            let text = try json(c)
            #expect(try JSONDecoder().decode(Call.self, from: Data(text.utf8)) == c, "\(text)")
        }
        // What prolog.c and the Slurm test write by hand.
        #expect(try json(Call.teardown(job: 5)) == #"{"job":5,"op":"teardown"}"#)
        #expect(
            try json(Call.match(MatchCall(options: ["count": "2"], nodeCPUs: NodeCPUs(smallest: 1, largest: 2))))
                == #"{"node_cpus":{"largest":2,"smallest":1},"op":"match","options":{"count":"2"}}"#)
        #expect(try json(ExecEnd(exit: 3, signal: nil)) == #"{"exit":3,"signal":null}"#)
    }

    @Test func aBadCallSaysWhatIsWrong() {
        for (text, says) in [
            (#"{"op": "reboot"}"#, "unknown operation 'reboot'"), (#"{"job": 1}"#, "unknown operation ''"),
            (#"{"op": "exec", "job": 1, "argv": [], "env": [], "cwd": "/", "localid": 0}"#, "non-empty \"argv\""),
            (#"{"op": "teardown"}"#, "job"),
        ] {
            #expect { try JSONDecoder().decode(Call.self, from: Data(text.utf8)) } throws: { "\($0)".contains(says) }
        }
    }
}

/// The blob service's protocol, as both ends parse and write it.
@Suite struct BlobProtocolTests {
    let d = "sha256:" + String(repeating: "ab", count: 32)

    @Test func requestsAndRepliesRoundTrip() throws {
        for r in [
            BlobRequest.get(digest: d), .record(digest: d, label: "minimal:1.3"), .record(digest: d, label: nil),
            .broadcast(digest: d, job: "42", jobNodes: 3, node: "node1", address: "10.0.0.1:7000"),
            .broadcast(digest: d, job: "push-x", jobNodes: 1, node: "n", address: nil),
        ] {
            #expect(try BlobRequest.parse(r.line) == r, "\(r.line)")
        }
        for r in [BlobReply.ok(size: 123), .error("no blob"), .held, .plan(transfer: "t1", rank: 2, chunkSize: 1 << 20, addresses: ["a:1", "b:2"])] {
            #expect(try BlobReply.parse(r.line) == r, "\(r.line)")
        }
        #expect(BlobRequest.broadcast(digest: d, job: "1", jobNodes: 2, node: "n1", address: nil).line.hasSuffix(" HAVE"))
        #expect(BlobReply.error("two\nlines").line == "ERR two lines")
    }

    @Test func malformedLinesAreProtocolViolations() {
        for line in ["GET sha256:abc", "GET " + d.uppercased(), "PUT " + d, "GET", "BROADCAST \(d) 1 x n1 HAVE", "RECORD \(d) a b", ""] {
            #expect { try BlobRequest.parse(line) } throws: { if case NodeError.protocolViolation = $0 { true } else { false } }
        }
        for line in ["OK", "OK -1", "PLAN t x 1 a", "hello"] {
            #expect { try BlobReply.parse(line) } throws: { if case NodeError.protocolViolation = $0 { true } else { false } }
        }
    }

    @Test func oneDigestCheck() {
        #expect(Digests.isSHA256(d))
        #expect(!Digests.isSHA256("sha256:" + String(repeating: "g", count: 64)))
        #expect(!Digests.isSHA256(String(d.dropLast())))
        #expect(!Digests.isSHA256("sha512:" + String(repeating: "a", count: 64)))
    }
}
