// slurm-vmd's configuration: one TOML file (default /etc/slurm-vm/slurm-vmd.toml), read strictly —
// an unknown key or a wrong type is an error naming it. docs/slurm.md documents every key.
//
//   socket = "/run/slurm-vm/slurm-vmd.sock"   # the Unix-socket API
//   slurm_user = "slurm"                       # may prepare/tear down guests, as root may
//   metrics = "127.0.0.1:9469"                 # Prometheus endpoint, GET /metrics (default: none)
//   [catalog]                                  # the catalog role (matching, image blobs)
//   path = "/var/lib/slurm-vm"
//   listen = "0.0.0.0:7420"                    # blob service for the nodes
//   [node]                                     # the node role (guests)
//   name = "node1"                             # default: the short host name
//   catalog = "head:7420"                      # where to fetch images from
//   state = "/var/lib/slurm-vm/node"  run = "/run/slurm-vm"  cache = "/var/cache/slurm-vm"
//   boot_timeout = 120  hugepages = "auto"  accelerator = "kvm"|"tcg"  qemu = "/usr/bin/qemu-system-x86_64"
//   backend = "auto"                           # embedded where vmx/svm exist, else qemu; or force "qemu"/"embedded"
//   cache_quota = "20G"                        # least recently used images are evicted beyond it
//   listen = "0.0.0.0:7421"                    # push listener for `slurm-vm image push` (MUNGE-authenticated)
//   cgroups = true  guest_overhead = "256M"    # each job's guests in a cgroup: RAM + overhead per guest
//   console_limit = "16M"                      # a guest's console log is cut off there
//   vmm_uids = "4200000000-4200099999"         # each VMM's own uid comes from here ("off": VMMs run as root)
//   [network]                                  # the jobs' private networks (node role; docs/network.md)
//   enabled = true  pool = "10.254.0.0/16"  vxlan_port = 4789  underlay_mtu = 1500
//   outbound = "none"                          # guests reach nothing beyond their job's network, or
//   outbound = "nat"                           # also what the node reaches through its gateway
//   nat_links = "198.18.0.0/16"  nat_deny = ["10.0.0.0/8"]   # (nat) router links; also out of reach

import Foundation
import Network
import Node
import Runner
import Sizes
import StrictTOML
import Support

public struct DaemonConfig: Sendable {
    public struct CatalogRole: Sendable {
        public var path: String
        public var listen: String
    }

    public var socket: String
    public var slurmUser: String?
    /// HOST:PORT of the Prometheus endpoint; nil: none.
    public var metrics: String?
    public var catalog: CatalogRole?
    public var node: NodeConfig?
    public var path: String

    public static let defaultPath = "/etc/slurm-vm/slurm-vmd.toml"

    public static func load(_ path: String) throws -> DaemonConfig {
        let t = try StrictTable.load(path, hint: "docs/slurm.md")
        var c = DaemonConfig(
            socket: try t.optionalString("socket") ?? "/run/slurm-vm/slurm-vmd.sock",
            slurmUser: try t.optionalString("slurm_user"), metrics: nil, catalog: nil, node: nil, path: path)
        if let m = try t.optionalString("metrics") {
            guard let hp = HostPort.split(m), !hp.host.isEmpty else {
                throw TOMLConfigError("\(path): metrics must be HOST:PORT for the Prometheus endpoint (e.g. \"127.0.0.1:9469\"), not \"\(m)\"")
            }
            c.metrics = m
        }
        if let ct = try t.optionalTable("catalog") {
            c.catalog = CatalogRole(
                path: try ct.optionalString("path") ?? "/var/lib/slurm-vm",
                listen: try ct.optionalString("listen") ?? "0.0.0.0:7420")
            try ct.done()
        }
        if let nt = try t.optionalTable("node") {
            let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "localhost"
            guard
                let source = try nt.optionalString("catalog")
                    ?? c.catalog.map({ "127.0.0.1:" + ($0.listen.split(separator: ":").last.map(String.init) ?? "7420") })
            else {
                throw TOMLConfigError("\(path): node.catalog is missing (HOST:PORT of the catalog role's blob service)")
            }
            var n = NodeConfig(
                name: try nt.optionalString("name") ?? host,
                stateDir: try nt.optionalString("state") ?? "/var/lib/slurm-vm/node",
                runDir: try nt.optionalString("run") ?? "/run/slurm-vm",
                cacheDir: try nt.optionalString("cache") ?? "/var/cache/slurm-vm",
                catalogAddress: source)
            if let b = try nt.optionalInt("boot_timeout") {
                guard b >= 1 && b <= 3600 else { throw TOMLConfigError("\(path): node.boot_timeout must be 1 to 3600 seconds") }
                n.bootTimeout = TimeInterval(b)
            }
            if let h = try nt.optionalString("hugepages") {
                guard let p = HugepagePolicy(rawValue: h) else {
                    throw TOMLConfigError("\(path): node.hugepages must be \"auto\", \"on\" or \"off\"")
                }
                n.hugepages = p
            }
            if let a = try nt.optionalString("accelerator") {
                guard let acc = Accelerator(rawValue: a) else { throw TOMLConfigError("\(path): node.accelerator must be \"kvm\" or \"tcg\"") }
                n.accelerator = acc
            }
            n.qemu = try nt.optionalString("qemu")
            if let b = try nt.optionalString("backend") {
                guard let choice = BackendChoice(rawValue: b) else {
                    throw TOMLConfigError("\(path): node.backend must be \"qemu\", \"embedded\" or \"auto\", not \"\(b)\"")
                }
                n.backend = choice
            }
            if let q = try nt.optionalString("cache_quota") {
                guard let b = try? ByteSize.parse(q, bare: .bytes), b > 0 else {
                    throw TOMLConfigError("\(path): node.cache_quota must be a size like \"20G\" or \"512M\", not \"\(q)\"")
                }
                n.cacheQuota = b
            }
            if let l = try nt.optionalString("listen") {
                guard HostPort.split(l) != nil else {
                    throw TOMLConfigError("\(path): node.listen must be HOST:PORT (e.g. \"0.0.0.0:7421\"), not \"\(l)\"")
                }
                n.pushListen = l
            }
            if let on = try nt.optionalBool("cgroups") { n.cgroups = on }
            if let o = try nt.optionalString("guest_overhead") {
                guard let b = try? ByteSize.parse(o, bare: .mebibytes), b >= 16 << 20, b <= 64 << 30 else {
                    throw TOMLConfigError("\(path): node.guest_overhead must be a size from 16M to 64G like \"256M\", not \"\(o)\"")
                }
                n.guestOverheadMB = Int(b >> 20)
            }
            if let l = try nt.optionalString("console_limit") {
                guard let b = try? ByteSize.parse(l, bare: .mebibytes), b >= 64 << 10 else {
                    throw TOMLConfigError("\(path): node.console_limit must be a size of at least 64K like \"16M\", not \"\(l)\"")
                }
                n.consoleLimit = UInt64(b)
            }
            if let u = try nt.optionalString("vmm_uids") {
                do { _ = try VMMIdentities.parse(u) } catch { throw TOMLConfigError("\(path): node.vmm_uids: \(error)") }
                n.vmmUIDs = u
            }
            try nt.done()
            c.node = n
        }
        if let nt = try t.optionalTable("network") {
            var net = NetworkConfig()
            if let p = try nt.optionalString("pool") {
                do { net.pool = try IPv4Subnet(p) } catch { throw TOMLConfigError("\(path): network.pool: \(error)") }
            }
            if let port = try nt.optionalInt("vxlan_port") {
                guard (1...65535).contains(port) else { throw TOMLConfigError("\(path): network.vxlan_port must be 1 to 65535") }
                net.vxlanPort = UInt16(port)
            }
            if let mtu = try nt.optionalInt("underlay_mtu") {
                guard (626...65535).contains(mtu) else {
                    throw TOMLConfigError("\(path): network.underlay_mtu must be 626 to 65535 (guests get 50 bytes less, and IPv4 needs 576)")
                }
                net.underlayMTU = mtu
            }
            if let o = try nt.optionalString("outbound") {
                guard let out = NetworkConfig.Outbound(rawValue: o) else {
                    throw TOMLConfigError("\(path): network.outbound must be \"none\" or \"nat\", not \"\(o)\"")
                }
                net.outbound = out
            }
            if let l = try nt.optionalString("nat_links") {
                do { net.natLinks = try IPv4Subnet(l, prefixes: 8...30) } catch {
                    throw TOMLConfigError("\(path): network.nat_links: \(error)")
                }
            }
            if let deny = try nt.optionalStrings("nat_deny") {
                net.natDeny = try deny.map { d in
                    do { return try IPv4Subnet(d, prefixes: 0...32) } catch { throw TOMLConfigError("\(path): network.nat_deny: \(error)") }
                }
            }
            let enabled = try nt.optionalBool("enabled") ?? true
            try nt.done()
            if c.node == nil { throw TOMLConfigError("\(path): [network] configures the node role's job networks; add [node] or drop it") }
            c.node?.network = enabled ? net : nil
        }
        try t.done()
        guard c.catalog != nil || c.node != nil else {
            throw TOMLConfigError("\(path): neither [catalog] nor [node] is configured; slurm-vmd needs at least one role")
        }
        return c
    }
}
