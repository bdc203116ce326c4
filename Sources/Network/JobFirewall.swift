// The wall around job networks, in nftables (Debian's nft). One table serves every job of the host:
// its rules match the job devices by name (svmb…, svmx…, svmt…), so there is no per-job rule to add in
// the prolog or to leave behind after a crash, and a job's network is walled off from the moment its
// first device exists. The table is installed (idempotently, under the host's network lock) by every
// attach; `scripts/cluster down` and an admin remove it with `nft delete table inet slurm_vm`.
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
import Support
#if canImport(Glibc)
import Glibc
#endif

public struct JobFirewall: Sendable {
    public static let table = "slurm_vm"
    /// The interface-name pattern of every job device (JobNetworkPlan's names).
    public static let devices = "svm*"
    /// Names this version of the rules (in a rule comment), so `ensure` replaces an older table.
    static let version = "slurm-vm wall 2"

    public var namespace: String?
    public var nft: String

    public init(namespace: String? = nil) {
        self.namespace = namespace
        nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "nft"
    }

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

    /// Installs the table unless it is there already, as this version writes it.
    public func ensure() throws(NetworkError) {
        if let current = try? run(["list", "table", "inet", Self.table]), current.contains(Self.version) { return }
        // Replaces an older or partial table in the same transaction.
        let script = "table inet \(Self.table)\ndelete table inet \(Self.table)\n" + Self.ruleset
        let tmp = NSTemporaryDirectory() + "slurm-vm-nft-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).nft"
        guard FileManager.default.createFile(atPath: tmp, contents: Data(script.utf8)) else {
            throw .setup("cannot write the nftables ruleset to \(tmp)")
        }
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        try run(["-f", tmp])
    }

    /// Removes the table (every job network of the host loses its wall: only when none is left).
    public func remove() { _ = try? run(["delete", "table", "inet", Self.table]) }

    public var installed: Bool { (try? run(["list", "table", "inet", Self.table])) != nil }

    @discardableResult
    func run(_ args: [String]) throws(NetworkError) -> String {
        guard FileManager.default.isExecutableFile(atPath: nft) else {
            throw .setup("nftables' nft is missing: it walls job networks off from the host (apt-get install nftables)")
        }
        let argv = (namespace.map { ["/usr/sbin/ip", "netns", "exec", $0] } ?? []) + [nft] + args
        let r: SubprocessResult
        do { r = try Subprocess.run(argv) } catch { throw .setup("cannot run nft: \(error)") }
        guard r.status == 0 else { throw .setup("nft \(args.joined(separator: " ")) failed: \(r.error)") }
        return r.text
    }
}
