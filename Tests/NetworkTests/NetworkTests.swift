// The job network: the plan as pure values, and the real thing between two network namespaces that
// stand for two nodes (a veth pair is their network; addresses 10.78.0.0/24 exist only there). A
// guest's virtio-net is stood in for by a veth on the job's bridge whose other end sits in a guest
// namespace: traffic really crosses the bridge and the kernel's VXLAN.

import Foundation
import Testing
@testable import Network

@Suite struct JobNetworkPlanTests {
    let config = NetworkConfig()

    @Test func everyNodePlansTheSameJobNetwork() throws {
        let nodes = ["10.78.0.1", "10.78.0.2", "10.78.0.3"]
        let plans = try (0..<3).map { i in
            try JobNetworkPlan.make(job: 0x3ff_ffff, config: config, nodes: nodes, index: i, first: [0, 2, 3][i], count: [2, 1, 1][i], total: 4)
        }
        #expect(Set(plans.map(\.vni)).count == 1 && Set(plans.map(\.bridge)).count == 1 && Set(plans.map(\.hostsFile)).count == 1)
        #expect(plans[1].local == "10.78.0.2" && plans[1].peers == ["10.78.0.1", "10.78.0.3"])
        #expect(plans[0].guests.map(\.address) == ["10.254.0.1", "10.254.0.2"] && plans[2].guests.map(\.hostname) == ["vm3-job67108863"])
        #expect(plans[0].guestMTU == 1450)
        #expect(plans[0].vni < 1 << 24 && plans[0].vni >= 4096)
        // Linux device names have at most 15 bytes, for the largest job id and guest index.
        for p in plans { for n in [p.bridge, p.vxlan] + p.guests.map(\.tap) { #expect(n.utf8.count <= 15, "\(n)") } }
        #expect(JobNetworkPlan.tapName(0x3ff_ffff, guest: 4095).utf8.count <= 15)
        // MACs: locally administered unicast, distinct.
        let macs = plans.flatMap(\.guests).map(\.mac)
        #expect(Set(macs).count == 4 && macs.allSatisfy { $0.hasPrefix("02:") })
        #expect(plans[0].hostsFile.contains("10.254.0.4 vm3-job67108863\n"))
        for p in plans { for n in [p.bridge, p.vxlan] + p.guests.map(\.tap) { #expect(JobNetworkPlan.job(ofDevice: n) == 0x3ff_ffff) } }
        #expect(JobNetworkPlan.job(ofDevice: "eth0") == nil && JobNetworkPlan.job(ofDevice: "svm") == nil)
    }

    @Test func badNumbersAndAFullPoolAreRefusedWithWhatToDo() throws {
        let small = NetworkConfig(pool: try IPv4Subnet("10.9.0.0/29"))
        #expect {
            try JobNetworkPlan.make(job: 5, config: small, nodes: ["10.78.0.1"], index: 0, first: 0, count: 7, total: 7)
        } throws: { e in
            guard case NetworkError.poolExhausted(7, "10.9.0.0/29", 6) = e else { return false }
            return "\(e)".contains("set network.pool in slurm-vmd.toml")
        }
        for bad in ["10.0.0.0", "10.0.0.1/24", "300.0.0.0/16", "10.0.0.0/31", "10.0.0.0/7", "a.b.c.d/16", "10.0.0/16"] {
            #expect(throws: NetworkError.self, "\(bad)") { try IPv4Subnet(bad) }
        }
        #expect(throws: NetworkError.self) {
            try JobNetworkPlan.make(job: 5, config: config, nodes: ["node1"], index: 0, first: 0, count: 1, total: 1)
        }
        #expect(throws: NetworkError.self) {
            try JobNetworkPlan.make(job: 0, config: config, nodes: ["10.0.0.1"], index: 0, first: 0, count: 1, total: 1)
        }
        #expect(throws: NetworkError.self) {
            try JobNetworkPlan.make(job: 5, config: config, nodes: ["10.0.0.1"], index: 1, first: 0, count: 1, total: 1)
        }
        // With NAT the pool's last address is the job router's: one guest fewer fits.
        var natSmall = small
        natSmall.outbound = .nat
        let six = try JobNetworkPlan.make(job: 5, config: small, nodes: ["10.78.0.1"], index: 0, first: 0, count: 6, total: 6)
        #expect(six.nat == nil)
        #expect {
            try JobNetworkPlan.make(job: 5, config: natSmall, nodes: ["10.78.0.1"], index: 0, first: 0, count: 6, total: 6)
        } throws: { e in
            if case NetworkError.poolExhausted(6, "10.9.0.0/29", 5) = e { true } else { false }
        }
        let five = try JobNetworkPlan.make(job: 5, config: natSmall, nodes: ["10.78.0.1"], index: 0, first: 0, count: 5, total: 5)
        #expect(five.nat?.gateway == "10.9.0.6" && !five.guests.map(\.address).contains("10.9.0.6"))
        #expect(try IPv4Subnet("10.1.2.3/32", prefixes: 0...32).description == "10.1.2.3/32")
        var tiny = config
        tiny.underlayMTU = 600
        #expect(throws: NetworkError.self) {
            try JobNetworkPlan.make(job: 5, config: tiny, nodes: ["10.0.0.1"], index: 0, first: 0, count: 1, total: 1)
        }
    }
}

/// Two nodes as network namespaces, each with a job's bridge, tunnel and taps made by LinkDriver.
@Suite(.serialized, .enabled(if: getuid() == 0, "SKIPPED: the job network tests create network namespaces and need root"))
struct JobNetworkNamespaceTests {
    let tag = String(getpid() % 100_000, radix: 36)

    func sh(_ args: String...) -> (code: Int32, out: String) { sh(args) }

    func sh(_ args: [String]) -> (code: Int32, out: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try? p.run()
        let d = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: d, as: UTF8.self))
    }

    @discardableResult
    func must(_ args: String...) -> String {
        let r = sh(args)
        #expect(r.code == 0, "\(args.joined(separator: " ")): \(r.out)")
        return r.out
    }

    /// Node i's namespace, with 10.78.0.(i+1) on its end of the nodes' network.
    func node(_ i: Int) -> String { "svmnt\(tag)n\(i)" }
    func guestNS(_ job: UInt32, _ k: Int) -> String { "svmnt\(tag)g\(job)x\(k)" }

    func makeNodes() {
        for i in 0..<2 { must("ip", "netns", "add", node(i)); must("ip", "-n", node(i), "link", "set", "lo", "up") }
        must("ip", "-n", node(0), "link", "add", "u0", "type", "veth", "peer", "name", "u1", "netns", node(1))
        for i in 0..<2 {
            must("ip", "-n", node(i), "addr", "add", "10.78.0.\(i + 1)/24", "dev", "u\(i)")
            must("ip", "-n", node(i), "link", "set", "u\(i)", "up")
        }
    }

    /// A stand-in guest: a namespace whose eth0 (the guest's MAC, address and MTU) is a veth on the job's bridge.
    func attachGuest(_ plan: JobNetworkPlan, _ g: GuestNIC, on nodeNS: String, port: String) {
        let ns = guestNS(plan.job, Int(g.hostname.dropFirst(2).prefix { $0 != "-" })!)
        must("ip", "netns", "add", ns)
        must("ip", "-n", nodeNS, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        must("ip", "-n", nodeNS, "link", "set", port, "mtu", String(plan.guestMTU), "master", plan.bridge, "up")
        must("ip", "-n", ns, "link", "set", "eth0", "address", g.mac, "mtu", String(plan.guestMTU), "up")
        must("ip", "-n", ns, "addr", "add", "\(g.address)/\(plan.subnet.prefix)", "dev", "eth0")
        must("ip", "-n", ns, "link", "set", "lo", "up")
    }

    func ping(from ns: String, _ to: String, size: Int? = nil) -> Bool {
        var args = ["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2"]
        if let size { args += ["-M", "do", "-s", String(size)] }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args + [to]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try? p.run()
        p.waitUntilExit()
        return p.terminationStatus == 0
    }

    func cleanup() {
        let list = sh("ip", "netns", "list").out
        for line in list.split(separator: "\n") {
            let name = String(line.split(separator: " ").first ?? "")
            if name.hasPrefix("svmnt\(tag)") { _ = sh("ip", "netns", "del", name) }
        }
    }

    @Test func guestsOfOneJobReachEachOtherAcrossNodesAndNothingElse() throws {
        cleanup()
        defer { cleanup() }
        makeNodes()
        let nodes = ["10.78.0.1", "10.78.0.2"]
        let config = NetworkConfig()
        // Job 7: guests 0 and 1, one per node. Job 8 on the same nodes: guests 0, 1 (node 0) and 2 (node 1).
        let a = try (0..<2).map { try JobNetworkPlan.make(job: 7, config: config, nodes: nodes, index: $0, first: $0, count: 1, total: 2) }
        let b = try (0..<2).map {
            try JobNetworkPlan.make(job: 8, config: config, nodes: nodes, index: $0, first: $0 * 2, count: $0 == 0 ? 2 : 1, total: 3)
        }
        for i in 0..<2 {
            try LinkDriver(namespace: node(i)).create(a[i])
            try LinkDriver(namespace: node(i)).create(b[i])
        }
        #expect(LinkDriver(namespace: node(0)).jobs() == [7, 8])
        let vx = must("ip", "-n", node(0), "-d", "link", "show", a[0].vxlan)
        #expect(vx.contains("vxlan id \(a[0].vni)") && vx.contains("mtu 1450"), "\(vx)")
        #expect(must("ip", "-n", node(0), "-d", "link", "show", a[0].guests[0].tap).contains("master \(a[0].bridge)"))
        for i in 0..<2 { for g in a[i].guests { attachGuest(a[i], g, on: node(i), port: "pa\(g.hostname.dropFirst(2).prefix(1))") } }
        for i in 0..<2 { for (n, g) in b[i].guests.enumerated() { attachGuest(b[i], g, on: node(i), port: "pb\(i)\(n)") } }
        let g7x0 = guestNS(7, 0), g8x0 = guestNS(8, 0)

        // Within a job, across the nodes' network: yes, up to the guests' MTU (1450 - 28 bytes of headers).
        #expect(ping(from: g7x0, "10.254.0.2"))
        #expect(ping(from: g7x0, "10.254.0.2", size: 1422))
        #expect(!ping(from: g7x0, "10.254.0.2", size: 1423))
        #expect(ping(from: g8x0, "10.254.0.3"))
        #expect(ping(from: guestNS(8, 2), "10.254.0.2"))
        // Job 7 has no guest 2: job 8's 10.254.0.3 is on another segment, out of reach.
        #expect(!ping(from: g7x0, "10.254.0.3"))
        // The nodes themselves: no route, and with one forced, nobody on the segment answers for them.
        #expect(!ping(from: g7x0, "10.78.0.1"))
        must("ip", "-n", g7x0, "route", "add", "default", "dev", "eth0")
        #expect(!ping(from: g7x0, "10.78.0.1"))
        #expect(!ping(from: g7x0, "10.78.0.2"))
        // They did reach node 0's own stack (Linux answers ARP for its addresses on every interface);
        // the nftables wall every attach installs is what dropped them.
        let wall = must("ip", "netns", "exec", node(0), "nft", "list", "chain", "inet", JobFirewall.table, "input")
        let dropped = wall.firstMatch(of: /counter packets (\d+)/).flatMap { Int($0.1) } ?? 0
        #expect(dropped >= 1, "\(wall)")
        // The bridge has no address of either family: the host is not on the segment.
        let addrs = must("ip", "-n", node(0), "addr", "show", "dev", a[0].bridge)
        #expect(!addrs.contains("inet"), "\(addrs)")

        // Teardown removes exactly the job's devices.
        LinkDriver(namespace: node(0)).destroy(job: 7)
        #expect(LinkDriver(namespace: node(0)).jobs() == [8])
        #expect(!ping(from: g7x0, "10.254.0.2"))
        #expect(ping(from: g8x0, "10.254.0.3"))
        LinkDriver(namespace: node(0)).destroy(job: 8)
        #expect(LinkDriver(namespace: node(0)).devices().isEmpty)
    }

    /// Several slurmd on one host (Debian's MULTIPLE_SLURMD, the local cluster) share the job's bridge:
    /// no tunnel between them, and the bridge goes with the last node's taps.
    @Test func nodesOnOneHostShareTheJobsBridge() throws {
        cleanup()
        defer { cleanup() }
        makeNodes()
        let host = ["10.78.0.1", "10.78.0.1"]
        let p = try (0..<2).map { try JobNetworkPlan.make(job: 11, config: NetworkConfig(), nodes: host, index: $0, first: $0, count: 1, total: 2) }
        #expect(p[0].peers.isEmpty && p[1].peers.isEmpty)
        let d = LinkDriver(namespace: node(0))
        try d.attach(p[0])
        try d.attach(p[1])
        #expect(Set(d.devices()) == [p[0].bridge, p[0].guests[0].tap, p[1].guests[0].tap])
        d.detach(job: 11, taps: p[0].guests.map(\.tap))
        #expect(Set(d.devices()) == [p[0].bridge, p[1].guests[0].tap])
        d.detach(job: 11, taps: p[1].guests.map(\.tap))
        #expect(d.devices().isEmpty)
    }

    @Test func aFailedSetupLeavesNothing() throws {
        cleanup()
        defer { cleanup() }
        makeNodes()
        // A local address this node does not have: the tunnel cannot be made, and nothing of the job stays.
        var p = try JobNetworkPlan.make(job: 9, config: NetworkConfig(), nodes: ["10.78.0.1", "10.78.0.2"], index: 0, first: 0, count: 1, total: 2)
        p.vxlan = String(repeating: "x", count: 20)
        #expect { try LinkDriver(namespace: node(0)).create(p) } throws: { if case NetworkError.setup = $0 { true } else { false } }
        #expect(LinkDriver(namespace: node(0)).devices().isEmpty)
    }

    /// outbound = nat: guests reach what the node reaches through its gateway, from the node's address,
    /// and still neither the node's own network, the node itself, nor another job; without IPv4
    /// forwarding on the node the job is refused with what to do. Node 1 stands for the outside world
    /// (203.0.113.1, a documentation address, on its loopback) and is node 0's gateway.
    @Test func natReachesTheOutsideButNotTheNodesNetworks() throws {
        cleanup()
        defer { cleanup() }
        makeNodes()
        must("ip", "-n", node(1), "addr", "add", "203.0.113.1/32", "dev", "lo")
        must("ip", "-n", node(0), "route", "add", "default", "via", "10.78.0.2")
        let count =
            "table ip seen { chain input { type filter hook input priority 0; "
            + "ip daddr 203.0.113.1 ip saddr 10.78.0.1 counter; ip daddr 203.0.113.1 ip saddr != 10.78.0.1 counter; }; }"
        must("ip", "netns", "exec", node(1), "nft", count)
        var config = NetworkConfig()
        config.outbound = .nat
        let plan = try JobNetworkPlan.make(job: 21, config: config, nodes: ["10.78.0.1"], index: 0, first: 0, count: 2, total: 2)
        let other = try JobNetworkPlan.make(job: 22, config: config, nodes: ["10.78.0.1"], index: 0, first: 0, count: 1, total: 1)
        let d = LinkDriver(namespace: node(0))
        #expect { try d.create(plan) } throws: { "\($0)".contains("net.ipv4.ip_forward=1") }
        #expect(d.devices().isEmpty && d.jobs().isEmpty)
        must("ip", "netns", "exec", node(0), "sysctl", "-qw", "net.ipv4.ip_forward=1")
        try d.create(plan)
        try d.create(other)
        #expect(Set(d.devices()).isSuperset(of: ["svmg15", "svmu15", "svmg16", "svmu16"]))
        for (n, g) in plan.guests.enumerated() { attachGuest(plan, g, on: node(0), port: "pn\(n)") }
        attachGuest(other, other.guests[0], on: node(0), port: "po0")
        // attachGuest names guest namespaces by guest index: job 22's guest 0 is guestNS(22, 0).
        for (job, k) in [(UInt32(21), 0), (21, 1), (22, 0)] { must("ip", "-n", guestNS(job, k), "route", "add", "default", "via", "10.254.255.254") }
        let g0 = guestNS(21, 0)
        #expect(ping(from: g0, "10.254.255.254"))  // its router
        #expect(ping(from: g0, "203.0.113.1"))  // out through node 0's gateway
        #expect(ping(from: guestNS(22, 0), "203.0.113.1"))  // the other job too, through its own router
        #expect(ping(from: g0, "10.254.0.2"))  // its own job, still bridged
        // Out of reach: the node's network (its neighbour, which is also the gateway), the node
        // itself on every address, the routers' links, the other job.
        // (Job 21's link is 198.18.0.84/30 by its id, job 22's .88/30: .85 and .89 are the node's ends.)
        for target in ["10.78.0.2", "10.78.0.1", "198.18.0.85", "198.18.0.89", "198.18.0.90"] {
            #expect(!ping(from: g0, target), "\(target)")
        }
        // What the outside saw came from node 0's own address (masqueraded twice: router, node).
        let seen = must("ip", "netns", "exec", node(1), "nft", "list", "chain", "ip", "seen", "input")
        let counts = seen.matches(of: /counter packets (\d+)/).compactMap { Int($0.1) }
        #expect(counts.count == 2 && counts[0] >= 2 && counts[1] == 0, "\(seen)")
        // The node's network was refused by the wall's management set, not for want of a route.
        let forward = must("ip", "netns", "exec", node(0), "nft", "list", "chain", "inet", JobFirewall.table, "forward")
        let refused = forward.firstMatch(of: /@management counter packets (\d+)/).flatMap { Int($0.1) } ?? 0
        #expect(refused >= 1, "\(forward)")
        let wall = must("ip", "netns", "exec", node(0), "nft", "list", "chain", "inet", JobFirewall.table, "postrouting")
        #expect((wall.firstMatch(of: /counter packets (\d+)/).flatMap { Int($0.1) } ?? 0) >= 2, "\(wall)")
        // Teardown takes the router with it, and only the job's.
        d.destroy(job: 21)
        #expect(!sh("ip", "netns", "list").out.contains("svmr15-"))
        #expect(!ping(from: g0, "203.0.113.1"))
        #expect(ping(from: guestNS(22, 0), "203.0.113.1"))
        d.destroy(job: 22)
        #expect(d.devices().isEmpty && d.jobs().isEmpty)
    }
}
