// outbound = "nat": a job's way out, as a router of its own on each of its nodes. Every job's segment
// reuses the same pool (JobNetworkPlan), so the host cannot route for them all in one table; each job
// gets a network namespace (svmr<job>-<node>) holding its routing table and connection tracking:
//
//   guests ── svmb<job> ── svmg<job> ═ lan (pool's last address: the guests' gateway)
//                                          [ router namespace: masquerade out of wan, answers back ]
//   node's stack ── svmu<job> (198.18.x.1/30) ═ wan (198.18.x.2/30, default route)
//
// The node then routes the router's traffic through its own gateway and masquerades it to its own
// address (JobFirewall: never to the node's own networks or another job). The router namespace runs
// no program: it is a routing table, two veth ends and an nftables table. Deleting the namespace
// deletes its veth ends and so their peers on the node; `destroy` does that, by name.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

struct JobRouter {
    let driver: LinkDriver

    /// This node's router namespace for `job`: named after the job and the node's network namespace
    /// (its inode), since nodes of one job on one host (the namespace cluster) each have their own.
    func namespace(_ job: UInt32) -> String { "\(Self.prefix)\(String(job, radix: 16))-\(driver.nodeID)" }
    static let prefix = "svmr"

    /// Router namespaces of this node: job by name.
    func namespaces() -> [UInt32: String] {
        guard let out = try? driver.exec([driver.ip, "netns", "list"]) else { return [:] }
        let suffix = "-\(driver.nodeID)"
        var found: [UInt32: String] = [:]
        for line in out.split(separator: "\n") {
            let name = String(line.split(separator: " ").first ?? "")
            guard name.hasPrefix(Self.prefix), name.hasSuffix(suffix),
                let job = UInt32(name.dropFirst(Self.prefix.count).prefix { $0 != "-" }, radix: 16)
            else { continue }
            found[job] = name
        }
        return found
    }

    static func lanPort(_ job: UInt32) -> String { JobNetworkPlan.prefix + "g" + String(job, radix: 16) }
    static func uplink(_ job: UInt32) -> String { JobNetworkPlan.prefix + "u" + String(job, radix: 16) }

    /// Makes the job's router on this node and its bridge port; called under the host lock, after
    /// the bridge exists. Nothing is made twice (slurmd sharing a host share the router as the bridge).
    func attach(_ p: JobNetworkPlan, _ nat: NATPlan, existing: Set<String>) throws(NetworkError) {
        try requireForwarding()
        try JobFirewall(driver).allowNAT(links: nat.links, deny: nat.deny)
        if existing.contains(Self.uplink(p.job)) { return }
        let ns = namespace(p.job)
        let (near, far) = try freeLink(nat.links, job: p.job)
        _ = try? driver.exec([driver.ip, "netns", "del", ns])  // a crash's leftover
        try driver.exec([driver.ip, "netns", "add", ns])
        // The router's side is run as any namespace's is: a driver of its own.
        let router = LinkDriver(namespace: ns)
        let lan = Self.lanPort(p.job), up = Self.uplink(p.job)
        try driver.run(["link", "add", lan, "type", "veth", "peer", "name", "lan", "netns", ns])
        try driver.sysctl("net/ipv6/conf/\(lan)/disable_ipv6", "1")
        try driver.run(["link", "set", lan, "mtu", String(p.guestMTU), "master", p.bridge, "up"])
        try driver.run(["link", "add", up, "type", "veth", "peer", "name", "wan", "netns", ns])
        try driver.sysctl("net/ipv6/conf/\(up)/disable_ipv6", "1")
        try driver.run(["addr", "add", "\(near)/30", "dev", up])
        try driver.run(["link", "set", up, "up"])
        try router.run(["link", "set", "lo", "up"])
        try router.run(["link", "set", "lan", "mtu", String(p.guestMTU), "up"])
        try router.run(["addr", "add", "\(nat.gateway)/\(p.subnet.prefix)", "dev", "lan"])
        try router.run(["addr", "add", "\(far)/30", "dev", "wan"])
        try router.run(["link", "set", "wan", "up"])
        try router.run(["route", "add", "default", "via", near])
        try router.sysctl("net/ipv6/conf/all/disable_ipv6", "1")
        try router.sysctl("net/ipv4/ip_forward", "1")
        try router.inNamespace([try JobFirewall(router).nftPath(), "-f", "-"], input: Data(Self.rules.utf8))
    }

    /// The router's own rules: guests' connections out, their answers back, nothing else — nothing
    /// from outside reaches a guest, and the router itself answers only pings from its segment.
    static let rules = """
        table ip router {
            chain forward {
                type filter hook forward priority filter; policy drop;
                iifname "lan" oifname "wan" accept
                iifname "wan" oifname "lan" ct state established,related accept
            }
            chain input {
                type filter hook input priority filter; policy drop;
                ct state established,related accept
                iifname "lan" icmp type echo-request accept
            }
            chain postrouting {
                type nat hook postrouting priority srcnat; policy accept;
                oifname "wan" masquerade
            }
        }

        """

    /// NAT routes through the node, and a node that does not forward IPv4 is the admin's choice:
    /// slurm-vmd does not turn routing on behind their back.
    func requireForwarding() throws(NetworkError) {
        let on = (try? driver.inNamespace(["/bin/cat", "/proc/sys/net/ipv4/ip_forward"]))?.trimmingCharacters(in: .whitespacesAndNewlines)
        guard on == "1" else {
            throw .setup(
                "network.outbound = \"nat\" needs IPv4 forwarding on the node, and it is off: run sysctl -w net.ipv4.ip_forward=1 and keep it in /etc/sysctl.d/, or set network.outbound = \"none\""
            )
        }
    }

    /// A /30 of `links` no other job router of this node uses: the job's own slot (job modulo the
    /// slots), else the next free one. Near end (the node's), far end (the router's).
    func freeLink(_ links: IPv4Subnet, job: UInt32) throws(NetworkError) -> (String, String) {
        let used = Set(driver.uplinkAddresses().compactMap { IPv4Subnet.address($0) }.map { $0 & ~UInt32(3) })
        let slots = UInt32(1) << UInt32(30 - links.prefix)
        for i in 0..<slots {
            let base = links.base + ((job &+ i) % slots) * 4
            if !used.contains(base) { return (IPv4Subnet.text(base + 1), IPv4Subnet.text(base + 2)) }
        }
        throw .setup("network.nat_links \(links) has no free /30 for another job router on this node; set a larger subnet")
    }
}

extension LinkDriver {
    /// Names this node's network namespace, so router namespaces of different nodes on one host
    /// (the namespace cluster) don't collide: the namespace's inode.
    var nodeID: String {
        var st = stat()
        let path = namespace.map { "/run/netns/\($0)" } ?? "/proc/self/ns/net"
        return stat(path, &st) == 0 ? String(st.st_ino) : "0"
    }

    /// The IPv4 subnets this node reaches directly (not through a gateway), but job devices and lo.
    func connectedSubnets() throws(NetworkError) -> [String] {
        let out = try run(["-4", "-o", "route", "show", "table", "main", "scope", "link"])
        return out.split(separator: "\n").compactMap { line -> String? in
            let f = line.split(separator: " ").map(String.init)
            guard let dst = f.first, dst != "default", let dev = f.firstIndex(of: "dev").map({ f[$0 + 1] }),
                !dev.hasPrefix(JobNetworkPlan.prefix), dev != "lo"
            else { return nil }
            return dst.contains("/") ? dst : dst + "/32"
        }
    }

    /// The node-side addresses of the job routers' uplinks here.
    func uplinkAddresses() -> [String] {
        guard let out = try? run(["-4", "-o", "addr", "show"]) else { return [] }
        return out.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ").map(String.init)
            guard f.count > 3, f[1].hasPrefix(JobNetworkPlan.prefix + "u"), let i = f.firstIndex(of: "inet") else { return nil }
            return f[i + 1].split(separator: "/").first.map(String.init)
        }
    }
}
