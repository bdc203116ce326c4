// The seam between what a guest is (GuestSpec) and what runs it. Backends: QEMU today (QEMU/); the
// embedded KVM VMM later, behind the same protocol. Whatever the backend, a guest has its vCPUs pinned
// one-to-one on dedicated host CPUs, its memory preallocated, a console log, and an agent channel that
// is a plain connected byte stream.

import Foundation
import Support

public struct GuestSpec: Sendable, Codable {
    /// Unique id of the guest on this host; also its hostname unless `hostname` is set.
    public var id: String
    public var hostname: String
    public var kernel: String
    /// Digest of `kernel` (lets a backend cache what it derives from it).
    public var kernelDigest: String?
    public var initrd: String?
    public var disk: String?
    /// The whole kernel command line the image wants; the backend adds only its own device options.
    public var cmdline: String
    public var vcpus: Int
    public var memoryMB: Int
    /// Host CPU of each vCPU (count == vcpus).
    public var cpus: [Int]
    /// Host CPUs for every other VMM thread (I/O, monitor, preallocation).
    public var housekeeping: [Int]
    /// Give the guest an agent channel (images have one; raw kernels usually do not).
    public var agent: Bool
    /// Back guest memory with hugetlbfs pages (a pool must be reserved).
    public var hugepages: Bool
    /// Where the backend keeps sockets and logs of this guest.
    public var runDir: String
    /// The guest outlives the process that started it.
    public var keep: Bool
    public var accelerator: Accelerator?
    /// Host directories exported into the guest over virtio-fs, mounted at the same path there.
    public var shares: [String]?
    /// The guest's port on its job's network (a virtio-net NIC on a tap); nil: no network but lo.
    public var network: GuestNetwork?
    /// Whom the shared directories are served as: what the guest creates there belongs to this uid and
    /// gid, whatever its own ids (nil: the runner's own).
    public var shareOwner: HostIdentity?
    /// Control group directories (a job's, JobCgroup) the VMM and its file servers are started in.
    public var cgroups: [String]?
    /// Largest console log (and VMM log) in bytes: what a guest writes beyond it is dropped (nil: the
    /// default, 16 MiB).
    public var consoleLimit: UInt64?
    public static let defaultConsoleLimit: UInt64 = 16 << 20

    public init(
        id: String, hostname: String? = nil, kernel: String, kernelDigest: String? = nil, initrd: String?, disk: String? = nil,
        cmdline: String, vcpus: Int, memoryMB: Int, cpus: [Int], housekeeping: [Int], agent: Bool,
        hugepages: Bool = false, runDir: String, keep: Bool = false, accelerator: Accelerator? = nil, shares: [String] = [],
        network: GuestNetwork? = nil, shareOwner: HostIdentity? = nil, cgroups: [String]? = nil, consoleLimit: UInt64? = nil
    ) {
        self.shareOwner = shareOwner; self.cgroups = cgroups; self.consoleLimit = consoleLimit
        self.id = id; self.hostname = hostname ?? id; self.kernel = kernel; self.kernelDigest = kernelDigest
        self.initrd = initrd; self.disk = disk; self.cmdline = cmdline; self.vcpus = vcpus; self.memoryMB = memoryMB
        self.cpus = cpus; self.housekeeping = housekeeping; self.agent = agent; self.hugepages = hugepages
        self.runDir = runDir; self.keep = keep; self.accelerator = accelerator
        self.shares = shares.isEmpty ? nil : shares
        self.network = network
    }

    public var consolePath: String { runDir + "/console.log" }
    public var agentSocket: String { runDir + "/agent.sock" }

    /// A share's path travels on the kernel command line: absolute, no blanks, no list separators.
    public static func isShareablePath(_ p: String) -> Bool {
        p.hasPrefix("/") && !p.contains(where: { $0 == "," || $0 == ":" || $0.isWhitespace })
    }

    /// The space-sharing invariants: one dedicated CPU per vCPU, never shared within the guest.
    public func validate() throws {
        guard vcpus >= 1 else { throw RunnerError.invalidRequest("a guest needs at least one vCPU") }
        guard cpus.count == vcpus else {
            throw RunnerError.invalidRequest("guest \(id) has \(vcpus) vCPUs but \(cpus.count) host CPUs; each vCPU needs its own CPU")
        }
        guard Set(cpus).count == cpus.count else { throw RunnerError.invalidRequest("guest \(id) was given the same CPU twice") }
        guard memoryMB >= 16 else { throw RunnerError.invalidRequest("guest \(id): \(memoryMB) MiB is too little memory") }
        for d in shares ?? [] {
            // The path travels on the kernel command line: no blanks, no list separators.
            guard Self.isShareablePath(d) else {
                throw RunnerError.invalidRequest("cannot share \(d) into guest \(id): the path must be absolute and contain no blanks, ',' or ':'")
            }
            guard Files.isDirectory(d) else { throw RunnerError.invalidRequest("cannot share \(d) into guest \(id): not a directory") }
        }
    }
}

/// A guest's port on its job's network, made by the Network module: the tap its VMM attaches the
/// guest's virtio-net to, and what the guest is told (MAC, MTU, address, the other guests' names).
public struct GuestNetwork: Sendable, Codable, Equatable {
    /// The network's id (a Slurm job id, or a `vm run --network` id): its devices carry it.
    public var network: UInt32
    public var tap: String
    public var mac: String
    public var mtu: Int
    /// ADDRESS/PREFIX.
    public var address: String
    /// The guest's /etc/hosts: every guest of the network.
    public var hosts: String
    /// The default route's next hop (the job's router, outbound = nat); nil: no way off the segment.
    public var gateway: String?
    public init(network: UInt32, tap: String, mac: String, mtu: Int, address: String, hosts: String, gateway: String? = nil) {
        self.network = network; self.tap = tap; self.mac = mac; self.mtu = mtu; self.address = address; self.hosts = hosts
        self.gateway = gateway
    }

    /// The shell command (busybox's sh and ip) that configures the NIC with this MAC inside the guest,
    /// writes /etc/hosts, and /etc/slurm-vm/hostfile (the guests' names, one a line, for users who
    /// start MPI themselves). The values are ours (names, addresses, MACs we generated), never a user's.
    public var setupCommand: [String] {
        let entries = hosts.split(separator: "\n")
        let lines = entries.map { "'\($0)'" }.joined(separator: " ")
        let names = entries.compactMap { $0.split(separator: " ").dropFirst().first }.filter { $0 != "localhost" }
            .map { "'\($0)'" }.joined(separator: " ")
        let script = """
            set -e; d=; for i in /sys/class/net/*; do [ "$(cat $i/address)" = \(mac) ] && d=${i##*/}; done; \
            [ -n "$d" ] || { echo "no network interface with MAC \(mac): is virtio_net in the image?" >&2; exit 1; }; \
            ip link set "$d" mtu \(mtu) up; ip addr add \(address) dev "$d"; \(gateway.map { "ip route add default via \($0); " } ?? "")printf '%s\\n' \(lines) > /etc/hosts; \
            mkdir -p /etc/slurm-vm; printf '%s\\n' \(names) > /etc/slurm-vm/hostfile
            """
        return ["/bin/sh", "-c", script]
    }
}

/// How a guest ended.
public enum GuestEnd: Sendable, Equatable, CustomStringConvertible {
    case poweredOff, reset, halted, panicked
    case vmmExited(Int32)
    /// The guest wrote its own status to the embedded VMM's exit port.
    case exitStatus(UInt32)
    /// The VMM could not go on (an emulation failure, a triple fault, a host error); why.
    case failed(String)
    public var description: String {
        switch self {
        case .exitStatus(let s): return "exited with status \(s)"
        case .failed(let why): return "failed: \(why)"
        case .poweredOff: return "powered off"
        case .reset: return "reset"
        case .halted: return "halted"
        case .panicked: return "kernel panic"
        case .vmmExited(let s): return WaitStatus.describe(s, what: "VMM")
        }
    }
}

public protocol RunningGuest: AnyObject, Sendable {
    var spec: GuestSpec { get }
    /// The VMM process.
    var pid: Int32 { get }
    /// Host thread id of each vCPU, in vCPU order.
    var vcpuThreads: [Int32] { get }
    /// Opens the agent channel (the guest must have been booted with `agent`).
    func connectAgent() throws -> AgentConnection
    /// Blocks until the guest ends or `timeout` passes (nil).
    func waitForEnd(timeout: TimeInterval?) -> GuestEnd?
    /// Ends the guest now and removes its run directory.
    func destroy()
}

public protocol Hypervisor: Sendable {
    var name: String { get }
    /// Starts a guest: memory preallocated, vCPUs pinned, paused until everything is in place, then run.
    func boot(_ spec: GuestSpec) throws -> RunningGuest
}

public enum Console {
    /// The last `lines` lines of a console log, for error messages.
    public static func tail(_ path: String, lines: Int = 25) -> String {
        guard let d = FileManager.default.contents(atPath: path) else { return "" }
        let text = String(decoding: d.suffix(64 << 10), as: UTF8.self).replacingOccurrences(of: "\r", with: "")
        let last = text.split(separator: "\n").suffix(lines)
        return last.map { "  | " + $0 }.joined(separator: "\n")
    }
}
