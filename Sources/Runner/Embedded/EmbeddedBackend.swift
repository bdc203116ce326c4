// The embedded VMM as a backend: one slurm-vm-vmm process per guest (Sources/VMM), started on the
// housekeeping CPUs; it pins each vCPU thread to its CPU itself and reports their ids once they run.
// An image's guest gets the agent channel as a virtio-console port behind the run directory's
// agent.sock, and its root disk as virtio-blk; both are legacy virtio-pci functions. Shared
// directories are virtio-fs devices on virtio-mmio, served by virtiofsd as under QEMU; the job network's
// NIC is virtio-net on virtio-mmio over the tap the node made, opened here and handed in. Without ACPI the
// guest powers off by writing the paravirtual exit port (the agent does, told so on the command line)
// and reboots through the i8042.

import Foundation
import Support
#if canImport(Glibc)
import Glibc
#endif

public struct EmbeddedBackend: Hypervisor {
    public let name = "embedded"
    public let binary: String
    /// Whether the VMM binary needs the distribution's libraries in its jail (built as this package
    /// builds it, statically, it does not); read once, not at every boot.
    let dynamic: Bool

    public init(binary: String? = nil) throws {
        guard FileManager.default.fileExists(atPath: "/dev/kvm") else {
            throw RunnerError.unsupported("the embedded VMM needs /dev/kvm, which this host lacks; use --backend qemu")
        }
        self.binary = try binary ?? Self.find()
        dynamic = Jail.isDynamicallyLinked(self.binary)
    }

    /// The slurm-vm-vmm to run: SLURM_VM_VMM, else beside us, else where `make install` puts it.
    static func find() throws -> String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
        // Beside us (a build tree, or bin/ for the CLI), or in bin/ beside sbin/ (an installed slurm-vmd).
        let beside = dir.appendingPathComponent("slurm-vm-vmm").path
        let installed = dir.deletingLastPathComponent().appendingPathComponent("bin/slurm-vm-vmm").path
        let candidates = [
            ProcessInfo.processInfo.environment["SLURM_VM_VMM"], beside, installed, "/usr/local/bin/slurm-vm-vmm", "/usr/bin/slurm-vm-vmm",
        ]
        .compactMap { $0 }
        guard let b = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw RunnerError.vmmMissing(
                "slurm-vm-vmm is not installed (looked in \(candidates.joined(separator: ", "))); build it with swift build, or use --backend qemu")
        }
        return b
    }

    public func boot(_ spec: GuestSpec) throws -> RunningGuest {
        try spec.validate()
        try Files.mkdirs(spec.runDir, mode: 0o700)
        // The VMM runs as a uid of its own in its run directory, which it owns; what it may not open
        // itself (/dev/kvm, the image's files, the tap) it gets as open descriptors (VMMLaunch).
        var launch = try VMMLaunch(spec)
        defer { launch.closeHeld() }
        let pid: Int32
        do {
            let tap = try launch.handTap()  // descriptor 3, as QEMU's is
            let kvm = try launch.hand("/dev/kvm", O_RDWR, "the KVM device")
            var args = [
                "--kvm-fd", String(kvm), "--kernel", "fd:\(try launch.hand(spec.kernel, O_RDONLY, "the kernel"))",
                "--append", [platformCmdline(spec), spec.cmdline].filter { !$0.isEmpty }.joined(separator: " "),
                "--vcpus", String(spec.vcpus), "--mem", String(spec.memoryMB), "--cpus", spec.cpus.map(String.init).joined(separator: ","),
                // Relative to the run directory, the VMM's working directory.
                "--console", "console.log", "--console-limit", String(spec.consoleLimit ?? GuestSpec.defaultConsoleLimit),
                "--report", "report", "--ready", "vcpus",
            ]
            if let rd = spec.initrd { args += ["--initrd", "fd:\(try launch.hand(rd, O_RDONLY, "the initramfs"))"] }
            if let h = spec.housekeeping.first { args += ["--housekeeping", String(h)] }
            if spec.hugepages { args.append("--hugepages") }
            if spec.agent { args += ["--agent-socket", "agent.sock"] }
            if let d = spec.disk { args += ["--disk", "fd:\(try launch.hand(d, O_RDONLY, "the disk"))"] }
            if let n = spec.network, let tap { args += ["--net-fd", String(tap), "--mac", n.mac, "--mtu", String(n.mtu)] }
            try launch.startFileServers()
            for i in (spec.shares ?? []).indices {
                args += ["--fs", URL(fileURLWithPath: FileServers.socket(i, of: spec)).lastPathComponent + "," + FileServers.tag(i)]
            }
            // Handed every file it reads; built statically, it needs nothing else of the node's.
            pid = try launch.spawn(binary, args, log: "vmm.log", jail: launch.jail(dynamic: dynamic))
        } catch {
            launch.abandon()
            throw error
        }
        let g = EmbeddedGuest(spec: spec, pid: pid)
        // The vCPU thread ids appear once every vCPU runs pinned; a VM that fails to build ends instead.
        let deadline = Date(timeIntervalSinceNow: 20)
        while Date() < deadline {
            if let t = try? String(contentsOfFile: spec.runDir + "/vcpus", encoding: .utf8) {
                g.vcpuThreads = t.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",").compactMap { Int32($0) }
                return g
            }
            if let end = g.waitForEnd(timeout: 0) {
                let why = Console.tail(spec.runDir + "/vmm.log", lines: 10)
                // A guest that ends before every vCPU ran is still a run (a one-vCPU guest that exits at once).
                if case .exitStatus = end { return g }
                g.destroy()
                throw RunnerError.bootFailed("the embedded VMM could not start guest \(spec.id) (\(end))", consoleTail: why)
            }
            usleep(2_000)
        }
        g.destroy()
        throw RunnerError.bootFailed(
            "the embedded VMM did not start guest \(spec.id)'s vCPUs within 20 s", consoleTail: Console.tail(spec.runDir + "/vmm.log", lines: 10))
    }
}

extension EmbeddedBackend {
    /// What the VMM adds to an image's command line (raw kernels get theirs as given): the serial
    /// console, reboot through the i8042 (no ACPI), a panic ends the guest at once, the agent's
    /// hostname and its way to power off.
    func platformCmdline(_ spec: GuestSpec) -> String {
        guard spec.agent else { return "" }
        let base = "console=ttyS0 reboot=k panic=-1 slurmvm.hostname=\(spec.hostname) slurmvm.exitport=0x501"
        return FileServers.cmdline(spec).map { base + " " + $0 } ?? base
    }
}

public final class EmbeddedGuest: RunningGuest, @unchecked Sendable {
    public let spec: GuestSpec
    public let pid: Int32
    public internal(set) var vcpuThreads: [Int32] = []
    let lock = NSLock()
    var ended: GuestEnd?

    init(spec: GuestSpec, pid: Int32) { self.spec = spec; self.pid = pid }

    /// Reattaches to a kept guest (another process started it).
    public static func adopt(spec: GuestSpec, pid: Int32, vcpuThreads: [Int32]) -> EmbeddedGuest {
        let g = EmbeddedGuest(spec: spec, pid: pid)
        g.vcpuThreads = vcpuThreads
        return g
    }

    public func connectAgent() throws -> AgentConnection {
        guard spec.agent else { throw RunnerError.unsupported("guest \(spec.id) was booted without an agent channel") }
        return try AgentConnection.connect(path: spec.agentSocket)
    }

    public func waitForEnd(timeout: TimeInterval?) -> GuestEnd? {
        Processes.waitFor(timeout: timeout, interval: 0.005) { reapedEnd() }
    }

    /// How the VMM said the guest ended (its report), else what its exit status tells.
    func reapedEnd() -> GuestEnd? {
        lock.lock(); defer { lock.unlock() }
        if let ended { return ended }
        guard let status = Processes.endStatus(pid) else { return nil }
        let report = (try? String(contentsOfFile: spec.runDir + "/report", encoding: .utf8)) ?? ""
        let end = report.split(separator: "\n").first { $0.hasPrefix("end=") }.map { String($0.dropFirst(4)) } ?? ""
        if end.hasPrefix("exited with status "), let s = UInt32(end.dropFirst("exited with status ".count)) {
            ended = s == 0 ? .poweredOff : .exitStatus(s)
        } else if end == "reset" {
            ended = .reset
        } else if end.hasPrefix("shut down") {
            ended = end.contains("powered off") ? .poweredOff : .failed(end)
        } else if end.hasPrefix("failed: ") {
            ended = .failed(String(end.dropFirst(8)))
        } else {
            let log = Console.tail(spec.runDir + "/vmm.log", lines: 3)
            ended = .failed("\(WaitStatus.describe(status, what: "slurm-vm-vmm")) without a report\(log.isEmpty ? "" : ":\n" + log)")
        }
        return ended
    }

    public func destroy() {
        if reapedEnd() == nil {
            kill(pid, SIGKILL)
            _ = Processes.wait(pid, timeout: 5)
        }
        FileServers.stop(for: spec)
        VMMIdentities.release(for: spec)
        Files.remove(spec.runDir)
    }
}
