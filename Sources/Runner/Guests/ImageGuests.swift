// The one path from an image to booted, recorded, ready guests: `vm run` and slurm-vmd's prolog both
// come here (the guest benchmark measures `vm run`). The caller decides the numbers (vCPUs, memory,
// CPUs, names); this file checks them against the image's limits, builds the specs, boots them in
// parallel on the chosen backend, records each guest on disk and waits for every agent.

import Foundation
import Support

/// An image as the runner boots it: its artefacts' paths (resolved and verified by the catalog or
/// the node's cache), its kernel command line and the sizes it allows.
public struct BootImage: Sendable, Equatable {
    public var name: String
    /// NAME:VERSION.
    public var label: String
    public var digest: String
    public var kernel: String
    public var kernelDigest: String
    public var initrd: String?
    public var disk: String?
    public var cmdline: String
    public var minMemoryMB: Int
    public var maxVCPUs: Int

    public init(
        name: String, label: String, digest: String, kernel: String, kernelDigest: String, initrd: String?,
        disk: String?, cmdline: String, minMemoryMB: Int, maxVCPUs: Int
    ) {
        self.name = name; self.label = label; self.digest = digest; self.kernel = kernel; self.kernelDigest = kernelDigest
        self.initrd = initrd; self.disk = disk; self.cmdline = cmdline; self.minMemoryMB = minMemoryMB; self.maxVCPUs = maxVCPUs
    }
}

public struct ImageGuests: Sendable {
    public var image: BootImage
    /// Each guest's id (unique on the host: its run directory) and hostname, by index.
    public var names: [(id: String, hostname: String)]
    public var vcpus: Int
    public var memoryMB: Int
    public var plan: CPUPlan
    public var hugepages: Bool
    /// Appended to the image's kernel command line.
    public var extraCmdline: String?
    /// Host directories shared into every guest at the same path.
    public var shares: [String]
    /// The guests outlive the process that boots them.
    public var keep: Bool
    /// Who owns the guests (their records say so; `vm ls` and the node's job state use it).
    public var owner: UInt32
    /// The owner's group: with `owner`, the identity shared directories are served as.
    public var group: UInt32
    /// The job's control groups every guest's processes start in (nil: none).
    public var cgroups: [String]?
    /// Each guest's console log limit (nil: GuestSpec's default).
    public var consoleLimit: UInt64?
    /// Each guest's port on the job network, by index (nil: no network).
    public var networks: [GuestNetwork]?

    public init(
        image: BootImage, names: [(id: String, hostname: String)], vcpus: Int, memoryMB: Int, plan: CPUPlan,
        hugepages: Bool, extraCmdline: String? = nil, shares: [String] = [], keep: Bool, owner: UInt32,
        group: UInt32, networks: [GuestNetwork]? = nil
    ) {
        self.image = image; self.names = names; self.vcpus = vcpus; self.memoryMB = memoryMB; self.plan = plan
        self.hugepages = hugepages; self.extraCmdline = extraCmdline; self.shares = shares; self.keep = keep; self.owner = owner
        self.group = group; self.networks = networks
    }

    /// The image's own limits. A job's request already passed them at matching (the job ad's
    /// `TARGET.MaxVCPUs >= MY.VCPUs`, `TARGET.MinMemoryMB <= MY.MemoryMB`); `vm run` meets them here.
    public static func check(_ image: BootImage, vcpus: Int, memoryMB: Int) throws {
        if memoryMB < image.minMemoryMB {
            throw RunnerError.invalidRequest(
                "\(memoryMB) MiB per guest is below image \(image.label)'s minimum of \(image.minMemoryMB) MiB (MinMemoryMB); give at least \(image.minMemoryMB)M"
            )
        }
        if vcpus > image.maxVCPUs {
            throw RunnerError.invalidRequest("\(vcpus) vCPUs per guest is more than image \(image.label) supports (MaxVCPUs = \(image.maxVCPUs))")
        }
    }

    public func specs(records: GuestRecords, accelerator: Accelerator) -> [GuestSpec] {
        let cmdline = [image.cmdline, extraCmdline ?? ""].filter { !$0.isEmpty }.joined(separator: " ")
        return names.enumerated().map { i, n in
            GuestSpec(
                id: n.id, hostname: n.hostname, kernel: image.kernel, kernelDigest: image.kernelDigest, initrd: image.initrd,
                disk: image.disk, cmdline: cmdline, vcpus: vcpus, memoryMB: memoryMB, cpus: plan.perGuest[i],
                housekeeping: plan.housekeeping, agent: true, hugepages: hugepages, runDir: records.dir(n.id), keep: keep,
                accelerator: accelerator, shares: shares, network: networks?[i],
                shareOwner: HostIdentity(uid: owner, gid: group), cgroups: cgroups, consoleLimit: consoleLimit)
        }
    }

    /// Boots every guest on `hv`, records each on disk as soon as its VMM runs (so a crash leaves
    /// nothing unaccounted for), and returns them once every agent is ready; if any fails, all are
    /// destroyed and the first failure is thrown. `onBooted` runs for each guest as its VMM starts.
    public func boot(
        on hv: any Hypervisor, accelerator: Accelerator, records: GuestRecords, bootTimeout: TimeInterval,
        onBooted: @escaping @Sendable (RunningGuest) -> Void = { _ in }
    ) throws -> [ReadyGuest] {
        try Self.check(image, vcpus: vcpus, memoryMB: memoryMB)
        guard plan.perGuest.count == names.count else {
            throw RunnerError.invalidRequest("\(names.count) guests but CPUs planned for \(plan.perGuest.count)")
        }
        if let networks, networks.count != names.count {
            throw RunnerError.invalidRequest("\(names.count) guests but network ports for \(networks.count)")
        }
        let image = image, owner = owner, backend = hv.name
        let ready = try GuestLauncher.bootAll(specs(records: records, accelerator: accelerator), on: hv, bootTimeout: bootTimeout) { g in
            try? records.save(
                GuestRecord(
                    spec: g.spec, backend: backend, pid: g.pid, pidStart: ProcessIdentity.startTime(of: g.pid) ?? 0,
                    vcpuThreads: g.vcpuThreads, image: image.label, imageDigest: image.digest, started: Date(),
                    owner: owner, ready: nil))
            onBooted(g)
        }
        for g in ready { if var r = records.load(g.id) { r.ready = g.info; try? records.save(r) } }
        do { try Self.configureNetworks(ready) } catch {
            for g in ready { g.agent.close(); g.guest.destroy() }
            throw error
        }
        return ready
    }

    /// Inside each guest with a job network: its NIC up with its address and MTU, and /etc/hosts naming
    /// every guest of the network (through the agent, as root in the guest).
    static func configureNetworks(_ guests: [ReadyGuest]) throws {
        final class Failure: @unchecked Sendable { var error: Error?; let lock = NSLock() }
        let failure = Failure()
        DispatchQueue.concurrentPerform(iterations: guests.count) { i in
            let g = guests[i]
            guard let n = g.guest.spec.network else { return }
            final class Err: @unchecked Sendable { var text: [UInt8] = [] }
            let err = Err()
            do {
                let cmd = try g.agent.start(
                    ExecRequest(argv: n.setupCommand, env: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]), stdin: nil,
                    stdout: { _ in }, stderr: { err.text += $0 })
                let (status, _) = try cmd.wait()
                guard status.code == 0 else {
                    throw RunnerError.bootFailed(
                        "guest \(g.id): its network could not be configured (\(status)): \(String(decoding: err.text, as: UTF8.self))",
                        consoleTail: "")
                }
            } catch { failure.lock.withLock { if failure.error == nil { failure.error = error } } }
        }
        if let e = failure.error { throw e }
    }
}
