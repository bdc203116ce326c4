// The wall around job networks, in nftables (Debian's nft). One table serves every job of the host:
// its rules match the job devices by name (svmb…, svmx…, svmt…), so there is no per-job rule to add in
// the prolog or to leave behind after a crash, and a job's network is walled off from the moment its
// first device exists. The table is installed (idempotently, under the host's network lock) by every
// attach (LinkDriver); `scripts/cluster down` and an admin remove it with `nft delete table inet slurm_vm`.
//
// What it enforces, with the bridges carrying no address (LinkDriver):
//   - input: nothing arriving on a job device reaches the host's own stack: not slurmd, slurmctld,
//     munged, slurm-vmd's blob and push ports or anything else listening, on any of the host's
//     addresses (a guest could otherwise route to the host's management address through the bridge,
//     since Linux answers ARP for all its addresses on every interface);
//   - forward: nothing is routed from a job segment anywhere else, or into one. Where br_netfilter is
//     loaded (Docker hosts) bridged frames pass this hook too, in and out through the job's bridge,
//     so a packet is dropped only when one side is not a job device (a bridge's own setting cannot
//     opt out while the global bridge-nf-call-iptables is on). Nothing is routed between two job
//     bridges: they carry no address, so the host has no route into either.
// Guests of one job still reach each other: that traffic is bridged (and tunnelled), never routed.
// Another job's guests are on another bridge and another VNI, so they are out of reach at layer 2.
//
// With outbound = "nat" (JobRouter) one exception is made, for the routers' uplinks (svmu…) alone:
// what a job's router sends on is routed and masqueraded to the node's address, unless it is for the
// node's own networks (the `management` set: the node's directly connected subnets and the admin's
// network.nat_deny, refreshed by every attach) or for another job's router; and what comes back on
// those connections is let in. The routers' sources are the `nat_links` set (network.nat_links).

import Foundation

public struct JobFirewall: Sendable {
    public static let table = "slurm_vm"
    /// The interface-name pattern of every job device (JobNetworkPlan's names).
    public static let devices = "svm*"
    /// The job routers' uplinks (JobRouter), the only job devices whose traffic may be routed.
    public static let uplinks = "svmu*"
    /// Names this version of the rules (in a rule comment), so `ensure` replaces an older table.
    static let version = "slurm-vm wall 3"

    /// Runs nft where the job devices are (the driver's namespace, if any).
    let driver: LinkDriver
    let nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"].first { FileManager.default.isExecutableFile(atPath: $0) }

    init(_ driver: LinkDriver) { self.driver = driver }

    /// nft, or what to install.
    func nftPath() throws(NetworkError) -> String {
        guard let nft else { throw .setup("nftables' nft is missing: it walls job networks off from the host (apt-get install nftables)") }
        return nft
    }

    /// The table, whole. Loaded as one nft transaction, so a reader never sees it half made.
    public static var ruleset: String {
        """
        table inet \(table) {
            chain input {
                type filter hook input priority filter - 10; policy accept;
                iifname "\(devices)" counter drop comment "guests never reach the host (\(version))"
            }
            set management {
                type ipv4_addr; flags interval; auto-merge
            }
            set nat_links {
                type ipv4_addr; flags interval; auto-merge
            }
            chain forward {
                type filter hook forward priority filter - 10; policy accept;
                iifname "\(uplinks)" oifname "\(devices)" counter drop comment "a job router never reaches another job"
                iifname "\(uplinks)" ip daddr @management counter drop comment "nor the node's own networks"
                iifname "\(uplinks)" meta nfproto ipv4 accept comment "outbound = nat: out through the node's gateway"
                oifname "\(uplinks)" ct state established,related accept comment "and its answers back"
                iifname "\(devices)" oifname != "\(devices)" counter drop comment "nothing is routed out of a job network"
                oifname "\(devices)" iifname != "\(devices)" counter drop comment "nor into one"
            }
            chain postrouting {
                type nat hook postrouting priority srcnat; policy accept;
                ip saddr @nat_links oifname != "\(devices)" counter masquerade comment "job routers leave as the node"
            }
        }

        """
    }

    /// Installs the table unless it is there already, as this version writes it; an older or partial
    /// table is replaced in the same nft transaction.
    func ensure() throws(NetworkError) {
        let nft = try nftPath()
        if let current = try? driver.inNamespace([nft, "list", "table", "inet", Self.table]), current.contains(Self.version) { return }
        let script = "table inet \(Self.table)\ndelete table inet \(Self.table)\n" + Self.ruleset
        try driver.inNamespace([nft, "-f", "-"], input: Data(script.utf8))
    }

    /// outbound = nat: what the routers may not reach (the node's connected subnets now, and `deny`)
    /// and where they send from, replaced in one transaction.
    func allowNAT(links: IPv4Subnet, deny: [IPv4Subnet]) throws(NetworkError) {
        let nft = try nftPath()
        let connected = try driver.connectedSubnets()
        let blocked = (connected + deny.map(\.description)).joined(separator: ", ")
        var script = "flush set inet \(Self.table) management\nflush set inet \(Self.table) nat_links\n"
        if !blocked.isEmpty { script += "add element inet \(Self.table) management { \(blocked) }\n" }
        script += "add element inet \(Self.table) nat_links { \(links) }\n"
        try driver.inNamespace([nft, "-f", "-"], input: Data(script.utf8))
    }
}
