// A planned job network made real with iproute2 (ip(8), bridge(8)) and removed again. Every device
// carries the job in its name (JobNetworkPlan), so what a crashed daemon left behind is found by name.
// The bridge has no address and no IPv6: the host is not on the job's segment.

import Foundation
import Support
#if canImport(Glibc)
import Glibc
#endif

public struct LinkDriver: Sendable {
    /// Run inside this network namespace (tests and the namespace cluster); nil: the caller's own.
    public var namespace: String?
    public var ip: String

    public init(namespace: String? = nil) {
        self.namespace = namespace
        ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "ip"
    }

    /// Creates the job's bridge, VXLAN tunnel (unicast to the peers) and one tap per guest of this node,
    /// all up with the guests' MTU; for a network this caller owns alone (`vm run --network`, tests).
    /// What an earlier attempt left of the same network is removed first.
    public func create(_ p: JobNetworkPlan, tapOwner: UInt32? = nil) throws(NetworkError) {
        destroy(job: p.job)
        try attach(p, tapOwner: tapOwner)
    }

    /// This node's share of the job's network: the bridge and tunnel made if no other node on this host
    /// (several slurmd per host) made them already, then this node's taps. On failure, this node's
    /// share is removed again. `tapOwner`: the uid that may open the taps (the VMM's), nil for root only.
    public func attach(_ p: JobNetworkPlan, tapOwner: UInt32? = nil) throws(NetworkError) {
        try withHostLock { () throws(NetworkError) in
            // The wall first: the job's devices are cut off from the host from the moment they exist.
            try JobFirewall(self).ensure()
            do {
                let have = Set(devices())
                if !have.contains(p.bridge) {
                    try run(["link", "add", p.bridge, "type", "bridge"])
                    try sysctl("net/ipv6/conf/\(p.bridge)/disable_ipv6", "1")
                    try run(["link", "set", p.bridge, "mtu", String(p.guestMTU)])
                }
                // One host (`vm run --network`, a job on one node or on slurmd sharing a host): the
                // bridge is the whole segment.
                if !p.peers.isEmpty && !have.contains(p.vxlan) {
                    try run([
                        "link", "add", p.vxlan, "type", "vxlan", "id", String(p.vni), "local", p.local, "dstport", String(p.port),
                        "nolearning", "ttl", "64",
                    ])
                    try run(["link", "set", p.vxlan, "mtu", String(p.guestMTU), "master", p.bridge, "up"])
                    // Broadcast and unknown unicast go to every peer (head-end replication); guests' MACs
                    // are learned on the bridge as usual.
                    for peer in p.peers {
                        try inNamespace([bridgeTool, "fdb", "append", "00:00:00:00:00:00", "dev", p.vxlan, "dst", peer])
                    }
                }
                for g in p.guests {
                    if have.contains(g.tap) { try run(["link", "del", g.tap]) }  // left by a crash
                    try run(["tuntap", "add", "dev", g.tap, "mode", "tap"] + (tapOwner.map { ["user", String($0)] } ?? []))
                    try run(["link", "set", g.tap, "mtu", String(p.guestMTU), "master", p.bridge, "up"])
                }
                // outbound = nat: the job's router, on the bridge like a guest.
                if let nat = p.nat { try JobRouter(driver: self).attach(p, nat, existing: have) }
                try run(["link", "set", p.bridge, "up"])
            } catch let e as NetworkError {
                detachLocked(job: p.job, taps: p.guests.map(\.tap))
                throw e
            } catch {
                detachLocked(job: p.job, taps: p.guests.map(\.tap))
                throw .setup("\(error)")
            }
        }
    }

    /// Removes this node's taps of the job, and the bridge and tunnel once no other tap hangs from the
    /// bridge (the last node of the job on this host).
    public func detach(job: UInt32, taps: [String]) {
        try? withHostLock { () throws(NetworkError) in detachLocked(job: job, taps: taps) }
    }

    func detachLocked(job: UInt32, taps: [String]) {
        let have = Set(devices())
        for t in taps where have.contains(t) { _ = try? run(["link", "del", t]) }
        let bridge = JobNetworkPlan.bridgeName(job)
        let ports = (try? run(["-o", "link", "show", "master", bridge])) ?? ""
        let tapsLeft = ports.split(separator: "\n").contains { $0.contains(": \(JobNetworkPlan.prefix)t") }
        if !tapsLeft { destroy(job: job) }
    }

    /// Serializes changes to job networks on this host: the slurmd of one host share its bridges.
    func withHostLock(_ body: () throws(NetworkError) -> Void) throws(NetworkError) {
        let path = FileManager.default.isWritableFile(atPath: "/run/lock") ? "/run/lock/slurm-vm-network.lock" : "/tmp/slurm-vm-network.lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .setup("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        while flock(fd, LOCK_EX) != 0 && errno == EINTR {}
        defer { flock(fd, LOCK_UN) }
        try body()
    }

    /// Removes every device of the job (bridge, tunnel, taps, its router); missing ones are fine.
    public func destroy(job: UInt32) {
        let mine = devices().filter { JobNetworkPlan.job(ofDevice: $0) == job }
        // Taps and the tunnel first, then the bridge they hang from.
        let bridge = JobNetworkPlan.bridgeName(job)
        for d in mine.filter({ $0 != bridge }) + mine.filter({ $0 == bridge }) {
            _ = try? run(["link", "del", d])
        }
        // The router's namespace last, once its veths are gone with their ends here (a namespace
        // is destroyed asynchronously, and its devices with it: deleting them here is synchronous).
        if let ns = JobRouter(driver: self).namespaces()[job] { _ = try? exec([ip, "netns", "del", ns]) }
    }

    /// The jobs that have devices here (reconciliation after a restart, `cluster down`).
    public func jobs() -> Set<UInt32> {
        Set(devices().compactMap(JobNetworkPlan.job(ofDevice:))).union(JobRouter(driver: self).namespaces().keys)
    }

    /// Names of our devices here.
    public func devices() -> [String] {
        guard let out = try? run(["-o", "link", "show"]) else { return [] }
        return out.split(separator: "\n").compactMap { line -> String? in
            // "12: svmb7@NONE: <…" or "13: svmt7.0: <…"
            let f = line.split(separator: ":", maxSplits: 2)
            guard f.count >= 2 else { return nil }
            let name = f[1].trimmingCharacters(in: .whitespaces).split(separator: "@").first.map(String.init) ?? ""
            return JobNetworkPlan.job(ofDevice: name) != nil ? name : nil
        }
    }

    /// ip(8) with `args`, in the namespace if there is one.
    @discardableResult
    func run(_ args: [String]) throws(NetworkError) -> String {
        try exec([ip] + (namespace.map { ["-n", $0] } ?? []) + args)
    }

    /// Another program (bridge(8), sh), in the namespace if there is one.
    @discardableResult
    func inNamespace(_ argv: [String], input: Data? = nil) throws(NetworkError) -> String {
        try exec((namespace.map { [ip, "netns", "exec", $0] } ?? []) + argv, input: input)
    }

    var bridgeTool: String { (ip as NSString).deletingLastPathComponent + "/bridge" }

    func exec(_ argv: [String], input: Data? = nil) throws(NetworkError) -> String {
        let r: SubprocessResult
        do { r = try Subprocess.run(argv, input: input) } catch { throw .setup("cannot run \(argv[0]): \(error)") }
        guard r.status == 0 else {
            throw .setup("\((argv[0] as NSString).lastPathComponent) \(argv.dropFirst().joined(separator: " ")) failed: \(r.error)")
        }
        return r.text
    }

    func sysctl(_ key: String, _ value: String) throws(NetworkError) {
        try inNamespace(["/bin/sh", "-c", "echo \(value) > /proc/sys/\(key)"])
    }
}
