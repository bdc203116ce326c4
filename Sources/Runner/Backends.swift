// Which backend runs a guest: one choice for `vm run --backend`, the benchmark and slurm-vmd's node
// role, and the way back to a running guest from its record (adoption after a restart, `vm stop`).

import Foundation

/// What choosing a backend has to say: which one and why (for verbose output and logs), or a caution
/// the user should always see.
public enum BackendNote: Sendable, CustomStringConvertible {
    case chosen(String)
    case caution(String)
    public var description: String {
        switch self {
        case .chosen(let s): return s
        case .caution(let s): return "note: " + s
        }
    }
}

public enum BackendChoice: String, Sendable, CaseIterable, Codable {
    /// The embedded VMM where KVM has hardware virtualization (and slurm-vm-vmm is installed), QEMU
    /// otherwise (TCG without vmx/svm).
    case auto
    case qemu
    case embedded

    public init(parsing s: String) throws {
        guard let c = BackendChoice(rawValue: s) else {
            throw RunnerError.invalidRequest("backend '\(s)' is not one of \(BackendChoice.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        self = c
    }

    /// The backend and the accelerator its guests run on. `forced` is QEMU's accelerator when given;
    /// `note` hears what was chosen and why (verbose output, the daemon's log).
    public func make(
        forced: Accelerator? = nil, qemuBinary: String? = nil, records: GuestRecords,
        note: (BackendNote) -> Void = { _ in }
    ) throws -> (any Hypervisor, Accelerator) {
        switch self {
        case .qemu:
            let q = try QEMUBackend(binary: qemuBinary, kernelCache: records.cacheDir, accelerator: forced, stateDir: records.root)
            note(.chosen("backend qemu (\(q.binary)), accelerator \(q.acceleratorReason)"))
            return (q, q.accelerator)
        case .embedded:
            guard forced == nil || forced == .kvm else {
                throw RunnerError.invalidRequest("accelerator \(forced!.rawValue) is QEMU's; the embedded VMM always runs on KVM")
            }
            let e = try EmbeddedBackend()
            if !HostFacts.hasHardwareVirtualization {
                note(
                    .caution(
                        "this host's KVM has no vmx/svm (PVM or nested): guest ring 0 is emulated, so a Linux kernel crawls and never reaches user space; small freestanding guests run"
                    )
                )
            }
            note(.chosen("backend embedded (\(e.binary)), KVM \(HostFacts.hasHardwareVirtualization ? "with" : "without") hardware virtualization"))
            return (e, .kvm)
        case .auto:
            if forced == nil && HostFacts.hasHardwareVirtualization && HostFacts.kvmUsable, let e = try? EmbeddedBackend() {
                note(.chosen("backend embedded (\(e.binary)): KVM with hardware virtualization"))
                return (e, .kvm)
            }
            return try BackendChoice.qemu.make(forced: forced, qemuBinary: qemuBinary, records: records, note: note)
        }
    }

    /// A running guest of either backend, from its record (another process booted it).
    public static func adopt(_ r: GuestRecord) -> RunningGuest {
        r.backend == "embedded"
            ? EmbeddedGuest.adopt(spec: r.spec, pid: r.pid, vcpuThreads: r.vcpuThreads)
            : QEMUGuest.adopt(spec: r.spec, pid: r.pid, vcpuThreads: r.vcpuThreads)
    }
}

/// How guest memory is backed: 2 MiB hugetlbfs pages when the reserved pool has room (`auto`), always
/// (`on`: an error when it has not), or never.
public enum HugepagePolicy: String, Sendable, CaseIterable, Codable {
    case auto, on, off

    public init(parsing s: String) throws {
        guard let p = HugepagePolicy(rawValue: s) else { throw RunnerError.invalidRequest("hugepages must be auto, on or off, not '\(s)'") }
        self = p
    }

    /// Whether `mb` MiB of guest memory go on hugepages now.
    public func use(forMB mb: Int) throws -> Bool {
        let free = HostFacts.freeHugepages2M
        switch self {
        case .off: return false
        case .auto: return free * 2 >= mb
        case .on:
            guard free * 2 >= mb else {
                throw RunnerError.invalidRequest(
                    "hugepages on: the 2 MiB hugepage pool has \(free) free pages (\(free * 2) MiB) but the guests need \(mb) MiB; reserve more (echo N > /proc/sys/vm/nr_hugepages) or use auto"
                )
            }
            return true
        }
    }
}
