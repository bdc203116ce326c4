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

import Foundation

public struct JobFirewall: Sendable {
    public static let table = "slurm_vm"
    /// The interface-name pattern of every job device (JobNetworkPlan's names).
    public static let devices = "svm*"
    /// Names this version of the rules (in a rule comment), so `ensure` replaces an older table.
    static let version = "slurm-vm wall 2"

    /// Runs nft where the job devices are (the driver's namespace, if any).
    let driver: LinkDriver
    let nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"].first { FileManager.default.isExecutableFile(atPath: $0) }

    init(_ driver: LinkDriver) { self.driver = driver }

    /// The table, whole. Loaded as one nft transaction, so a reader never sees it half made.
    public static var ruleset: String {
        """
        table inet \(table) {
            chain input {
                type filter hook input priority filter - 10; policy accept;
                iifname "\(devices)" counter drop comment "guests never reach the host (\(version))"
            }
            chain forward {
                type filter hook forward priority filter - 10; policy accept;
                iifname "\(devices)" oifname != "\(devices)" counter drop comment "nothing is routed out of a job network"
                oifname "\(devices)" iifname != "\(devices)" counter drop comment "nor into one"
            }
        }

        """
    }

    /// Installs the table unless it is there already, as this version writes it; an older or partial
    /// table is replaced in the same nft transaction.
    func ensure() throws(NetworkError) {
        guard let nft else {
            throw .setup("nftables' nft is missing: it walls job networks off from the host (apt-get install nftables)")
        }
        if let current = try? driver.inNamespace([nft, "list", "table", "inet", Self.table]), current.contains(Self.version) { return }
        let script = "table inet \(Self.table)\ndelete table inet \(Self.table)\n" + Self.ruleset
        try driver.inNamespace([nft, "-f", "-"], input: Data(script.utf8))
    }
}
