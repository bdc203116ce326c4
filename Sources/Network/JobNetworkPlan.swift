// A job's private network, planned: one L2 segment per job spanning its nodes — on each node a bridge
// with one tap per guest, joined to the other nodes by the kernel's VXLAN (VNI from the job id,
// unicast to the job's other nodes) — and every name, address, MAC and MTU derived from the job, so
// each node plans the same network alone and no DHCP server is needed. Pure: tested without a network.

/// An IPv4 subnet, e.g. 10.254.0.0/16.
public struct IPv4Subnet: Sendable, Equatable, Codable, CustomStringConvertible {
    public let base: UInt32
    public let prefix: Int

    /// `prefixes`: the sizes this use allows (a pool needs room for hosts; a deny list takes single hosts).
    public init(_ text: String, prefixes: ClosedRange<Int> = 8...30) throws(NetworkError) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let p = Int(parts[1]), prefixes.contains(p), let a = IPv4Subnet.address(String(parts[0])) else {
            throw .config(
                "'\(text)' is not an IPv4 subnet from /\(prefixes.lowerBound) to /\(prefixes.upperBound) (e.g. 10.254.0.0/16)")
        }
        let mask: UInt32 = p == 0 ? 0 : ~UInt32(0) << (32 - p)
        guard a & ~mask == 0 else { throw .config("'\(text)' has host bits set; write its network address (\(IPv4Subnet.text(a & mask))/\(p))") }
        base = a
        prefix = p
    }

    /// Usable host addresses (network and broadcast excluded).
    public var capacity: Int { (1 << (32 - prefix)) - 2 }
    public var description: String { "\(IPv4Subnet.text(base))/\(prefix)" }
    /// The n-th host address (0-based: the network address + 1 + n).
    public func host(_ n: Int) -> String { IPv4Subnet.text(base + 1 + UInt32(n)) }

    public static func address(_ s: String) -> UInt32? {
        let o = s.split(separator: ".", omittingEmptySubsequences: false)
        guard o.count == 4 else { return nil }
        var v: UInt32 = 0
        for x in o {
            guard !x.isEmpty, x.count <= 3, x.allSatisfy(\.isASCII), let n = UInt32(x), n <= 255 else { return nil }
            v = v << 8 | n
        }
        return v
    }

    public static func text(_ a: UInt32) -> String { "\(a >> 24).\(a >> 16 & 255).\(a >> 8 & 255).\(a & 255)" }
}

public enum NetworkError: Error, CustomStringConvertible, Equatable {
    /// slurm-vmd's [network] settings or a job's numbers cannot make a network.
    case config(String)
    /// The job has more guests than the address pool has addresses.
    case poolExhausted(guests: Int, pool: String, capacity: Int)
    /// A command that sets up or removes the network failed.
    case setup(String)

    public var description: String {
        switch self {
        case .config(let s), .setup(let s): return s
        case .poolExhausted(let g, let pool, let cap):
            return
                "the job's \(g) guests do not fit the guest address pool \(pool) (\(cap) addresses); set network.pool in slurm-vmd.toml to a larger subnet, or ask for fewer guests"
        }
    }
}

/// slurm-vmd.toml's [network]: the defaults work out of the box.
public struct NetworkConfig: Sendable, Equatable {
    /// Every job's segment uses this subnet: segments are separate L2 networks, so jobs reuse it.
    public var pool: IPv4Subnet
    /// VXLAN's UDP port between nodes.
    public var vxlanPort: UInt16 = 4789
    /// The MTU of the nodes' own network; guests get 50 bytes less (VXLAN over IPv4: outer IPv4 20,
    /// UDP 8, VXLAN 8, inner Ethernet 14).
    public var underlayMTU: Int = 1500

    public init(pool: IPv4Subnet? = nil) {
        self.pool = pool ?? (try! IPv4Subnet("10.254.0.0/16"))
    }

    public static let vxlanOverhead = 50

    /// What guests reach beyond their job's network.
    public enum Outbound: String, Sendable, Equatable, Codable {
        /// Nothing: the job's segment is all there is.
        case none
        /// Whatever the node reaches through a gateway, from the node's address (JobRouter), except the
        /// node's own networks and `natDeny`.
        case nat
    }
    public var outbound: Outbound = .none
    /// outbound = nat: each job's router on a node reaches the node over a /30 of this subnet. The
    /// benchmarking range (RFC 2544) by default: never routed on the Internet, rarely used on sites.
    public var natLinks: IPv4Subnet = try! IPv4Subnet("198.18.0.0/16")
    /// outbound = nat: what guests may not reach besides the node's directly connected networks
    /// (e.g. a site's other management networks behind the gateway).
    public var natDeny: [IPv4Subnet] = []
}

/// outbound = nat for one job on one node: the guests' gateway (the job router's address on the
/// segment, the pool's last address), the transfer links' subnet and what stays out of reach.
public struct NATPlan: Sendable, Equatable, Codable {
    public var gateway: String
    public var links: IPv4Subnet
    public var deny: [IPv4Subnet]
}

/// One guest's port on the job network.
public struct GuestNIC: Sendable, Equatable, Codable {
    /// The tap on this node (the VMM's end of the guest's virtio-net).
    public var tap: String
    public var mac: String
    public var address: String
    public var hostname: String
}

public struct JobNetworkPlan: Sendable, Equatable, Codable {
    public var job: UInt32
    /// VXLAN network identifier (24 bits): the job id modulo the VNI space above 4096. Two jobs whose
    /// ids differ by a multiple of 16,773,120 would share one; their tunnels also only reach each
    /// job's own nodes.
    public var vni: UInt32
    public var bridge: String
    public var vxlan: String
    public var port: UInt16
    public var subnet: IPv4Subnet
    public var guestMTU: Int
    /// This node's address on the nodes' network (the VXLAN tunnel's local end).
    public var local: String
    /// The job's other nodes' addresses (the tunnel's unicast peers).
    public var peers: [String]
    /// This node's guests.
    public var guests: [GuestNIC]
    /// Every guest of the job, in job-wide order (each guest's /etc/hosts, SLURM_VM_HOSTS).
    public var hosts: [GuestNIC]
    /// outbound = nat: the job's router on this node; nil: the segment is all the guests reach.
    public var nat: NATPlan? = nil

    /// Names on the host: at most 15 bytes (IFNAMSIZ - 1); Slurm job ids fit 7 hex digits (< 2^26), a
    /// job's guest indexes 3 (at most 4096 guests, VMRequest.maxCount).
    public static let prefix = "svm"
    public static func bridgeName(_ job: UInt32) -> String { prefix + "b" + String(job, radix: 16) }
    public static func vxlanName(_ job: UInt32) -> String { prefix + "x" + String(job, radix: 16) }
    public static func tapName(_ job: UInt32, guest k: Int) -> String { prefix + "t" + String(job, radix: 16) + "." + String(k, radix: 16) }
    /// The job a device of ours belongs to, from its name; nil for any other device.
    public static func job(ofDevice name: String) -> UInt32? {
        guard name.hasPrefix(prefix), name.count > prefix.count + 1 else { return nil }
        let rest = name.dropFirst(prefix.count + 1)
        return UInt32(rest.prefix { $0 != "." }, radix: 16)
    }

    /// Guest k's hostname: the node's guest names and every guest's /etc/hosts use it.
    public static func hostname(job: UInt32, guest k: Int) -> String { "vm\(k)-job\(job)" }

    /// Guest k of the job (job-wide index): its hostname, address, MAC and tap.
    public static func guest(job: UInt32, k: Int, subnet: IPv4Subnet) -> GuestNIC {
        // Locally administered, unicast (02:…), the guest's index in the low 24 bits: unique on the segment.
        let m = [0x02, 0x73, 0x76, (k >> 16) & 255, (k >> 8) & 255, k & 255].map { String($0, radix: 16) }
            .map { $0.count == 1 ? "0" + $0 : $0 }.joined(separator: ":")
        return GuestNIC(tap: tapName(job, guest: k), mac: m, address: subnet.host(k), hostname: hostname(job: job, guest: k))
    }

    /// Network ids from 2^26 on are never Slurm job ids: `vm run --network` takes its local networks there.
    public static let localIDs: Range<UInt32> = (1 << 26)..<(1 << 28)

    /// The plan for this node: `nodes` are the job's nodes' addresses in Slurm's node-list order,
    /// `index` this node's place among them; this node runs guests `first ..< first + count` of `total`.
    /// `hostnames` replaces the guests' default names (vmK-jobJ).
    public static func make(
        job: UInt32, config: NetworkConfig, nodes: [String], index: Int, first: Int, count: Int,
        total: Int, hostnames: [String]? = nil
    ) throws(NetworkError) -> JobNetworkPlan {
        guard job >= 1, job < localIDs.upperBound else { throw .config("network id \(job) is outside 1 to \(localIDs.upperBound - 1)") }
        if let hostnames, hostnames.count != total { throw .config("\(hostnames.count) hostnames for \(total) guests") }
        guard index >= 0, index < nodes.count else { throw .config("node index \(index) is outside the job's \(nodes.count) nodes") }
        guard first >= 0, count >= 0, first + count <= total else {
            throw .config("guests \(first)..<\(first + count) are outside the job's \(total)")
        }
        guard total <= 4096 else { throw .config("a job network holds at most 4096 guests, not \(total)") }
        // With NAT the pool's last address is the job router's (the guests' gateway).
        let room = config.pool.capacity - (config.outbound == .nat ? 1 : 0)
        guard total <= room else {
            throw .poolExhausted(guests: total, pool: config.pool.description, capacity: room)
        }
        for n in nodes where IPv4Subnet.address(n) == nil {
            throw .config("node address '\(n)' is not an IPv4 address (the job network's tunnels run over IPv4)")
        }
        let mtu = config.underlayMTU - NetworkConfig.vxlanOverhead
        guard mtu >= 576 else { throw .config("an underlay MTU of \(config.underlayMTU) leaves guests \(mtu) bytes; IPv4 needs 576") }
        var all = (0..<total).map { guest(job: job, k: $0, subnet: config.pool) }
        if let hostnames { for k in 0..<total { all[k].hostname = hostnames[k] } }
        return JobNetworkPlan(
            job: job, vni: 4096 + job % ((1 << 24) - 4096), bridge: bridgeName(job), vxlan: vxlanName(job), port: config.vxlanPort,
            subnet: config.pool, guestMTU: mtu, local: nodes[index],
            peers: peers(nodes, local: nodes[index]),
            guests: Array(all[first..<(first + count)]), hosts: all,
            nat: config.outbound == .nat
                ? NATPlan(gateway: config.pool.host(config.pool.capacity - 1), links: config.natLinks, deny: config.natDeny) : nil)
    }

    /// The tunnel's peers: the other nodes' addresses, once each. Nodes that share this node's address
    /// (several slurmd on one host, as Debian's Slurm allows) share its bridge instead.
    static func peers(_ nodes: [String], local: String) -> [String] {
        var seen: Set<String> = [local]
        return nodes.filter { seen.insert($0).inserted }
    }

    /// The guests' /etc/hosts lines.
    public var hostsFile: String {
        "127.0.0.1 localhost\n" + hosts.map { "\($0.address) \($0.hostname)\n" }.joined()
    }
}
