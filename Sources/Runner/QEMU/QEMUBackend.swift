// The QEMU backend: `-M microvm` (no firmware, virtio-mmio devices described by ACPI), KVM where the
// host has hardware virtualization and TCG otherwise. QEMU starts paused (-S) on the housekeeping CPUs,
// so memory preallocation and helper threads never touch the guest's CPUs; once its monitor is up,
// each vCPU thread (query-cpus-fast) is pinned to its own CPU, the agent channel is connected, and the
// guest is let run.

import Foundation
import Support
#if canImport(Glibc)
import Glibc
#endif

public struct QEMUBackend: Hypervisor {
    public let name = "qemu"
    public let binary: String
    /// Where unpacked kernels are cached (see DirectKernel); nil disables direct boot.
    public let kernelCache: String?
    public let accelerator: Accelerator
    public let acceleratorReason: String
    public let tscKHz: UInt64

    /// Finds QEMU; throws a message that says how to install it when it is missing.
    public init(binary: String? = nil, kernelCache: String?, accelerator forced: Accelerator? = nil, stateDir: String?) throws {
        let want = binary ?? ProcessInfo.processInfo.environment["SLURM_VM_QEMU"] ?? "qemu-system-x86_64"
        guard let found = HostFacts.which(want) else {
            throw RunnerError.vmmMissing(
                "QEMU (\(want)) is not installed or not on PATH; install Debian's qemu-system-x86 package (apt-get install qemu-system-x86), or set SLURM_VM_QEMU"
            )
        }
        self.binary = found
        self.kernelCache = kernelCache
        (accelerator, acceleratorReason) = HostFacts.chooseAccelerator(forced: forced)
        tscKHz = accelerator == .tcg ? HostFacts.tscKHz(cacheDir: stateDir) : 0
    }

    /// Kernel options only this backend knows are needed.
    func platformCmdline(_ spec: GuestSpec) -> String {
        var o = ["console=ttyS0", "panic=-1", "slurmvm.hostname=\(spec.hostname)"]
        if let sh = FileServers.cmdline(spec) { o.append(sh) }
        if accelerator == .tcg && tscKHz > 0 {
            // Under TCG the kernel's TSC calibration against the PIT fails or hangs; tell it the rate,
            // skip the timer and delay-loop checks that emulation makes slow and flaky.
            o += ["tsc_early_khz=\(tscKHz)", "tsc=reliable", "no_timer_check", "lpj=\(tscKHz * 1000 / 250)"]
        }
        return o.joined(separator: " ")
    }

    /// The strictest `-sandbox` (QEMU's own seccomp filter) it runs under: no obsolete calls, no change
    /// of identity, no fork or exec, no change of scheduling, affinity or memory policy (we pin its
    /// threads from outside).
    static let sandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

    /// Managed boots name the image's files by `files` (/dev/fd/N of descriptors handed to QEMU);
    /// `tapFD`: the descriptor number QEMU gets the guest's tap as; nil: QEMU opens the tap by name
    /// itself (the benchmark's unmanaged command line, which has no network).
    func arguments(_ spec: GuestSpec, kernel: String, managed: Bool = true, tapFD: Int? = nil, files: ImageFiles? = nil) -> [String] {
        var a = ["-name", "\(spec.id),debug-threads=on", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]
        if managed { a += ["-S", "-sandbox", Self.sandbox] }
        a += ["-M", "microvm,rtc=on,memory-backend=ram"]
        switch accelerator {
        case .kvm: a += ["-accel", "kvm", "-cpu", "host"]
        // qemu64 is the cheapest CPU model to emulate (measured: 0.3-0.5 s faster boots than `max`) and
        // runs every x86-64 binary Debian builds.
        case .tcg: a += ["-accel", "tcg,thread=multi", "-cpu", "qemu64"]
        }
        a += ["-smp", "\(spec.vcpus)", "-m", "\(spec.memoryMB)M"]
        var mem = "memory-backend-memfd,id=ram,size=\(spec.memoryMB)M,share=on,prealloc=on,prealloc-threads=\(max(1, spec.housekeeping.count))"
        if spec.hugepages { mem += ",hugetlb=on,hugetlbsize=2M" }
        a += ["-object", mem]
        a += ["-kernel", files?.kernel ?? kernel]
        if let i = files?.initrd ?? spec.initrd { a += ["-initrd", i] }
        a += ["-append", [platformCmdline(spec), spec.cmdline].filter { !$0.isEmpty }.joined(separator: " ")]
        a += ["-chardev", "file,id=con,path=\(files?.console ?? spec.consolePath)", "-serial", "chardev:con"]
        // A managed QEMU runs in its run directory (VMMLaunch) as a uid that may not pass through the
        // directories above it: its sockets are named relative to it.
        let here = files == nil ? spec.runDir + "/" : ""
        if managed { a += ["-chardev", "socket,id=qmp,path=\(here)qmp.sock,server=on,wait=off", "-mon", "chardev=qmp,mode=control"] }
        if spec.agent {
            a += [
                "-device", "virtio-serial-device",
                "-chardev", "socket,id=agent,path=\(here)agent.sock,server=on,wait=off",
                "-device", "virtserialport,chardev=agent,name=org.slurm-vm.agent",
            ]
        }
        // vhost-user devices need modern virtio; microvm's virtio-mmio defaults to legacy.
        if !(spec.shares ?? []).isEmpty { a += ["-global", "virtio-mmio.force-legacy=false"] }
        for (i, _) in (spec.shares ?? []).enumerated() {
            a += [
                "-chardev", "socket,id=fs\(i),path=\(here)fs\(i).sock", "-device",
                "vhost-user-fs-device,chardev=fs\(i),tag=\(FileServers.tag(i))",
            ]
        }
        if let d = files?.disk ?? spec.disk {
            a += ["-drive", "file=\(d),if=none,id=root,format=raw,readonly=on", "-device", "virtio-blk-device,drive=root"]
        }
        // The job network: virtio-net on the tap the node made, handed to QEMU as an open descriptor (so
        // QEMU needs no right to open it; no vhost-net on these hosts). host_mtu tells the guest's
        // driver the segment's MTU.
        if let n = spec.network {
            a += [
                "-netdev", tapFD.map { "tap,id=net0,fd=\($0)" } ?? "tap,id=net0,ifname=\(n.tap),script=no,downscript=no",
                "-device", "virtio-net-device,netdev=net0,mac=\(n.mac),host_mtu=\(n.mtu)",
            ]
        }
        return a
    }

    /// The same QEMU command line, unmanaged: not paused, no monitor, no pinning. The benchmark's
    /// baseline boots an image this way with `slurmvm.bootonly=1` (the agent powers off at once).
    public func unmanagedCommand(_ spec: GuestSpec) -> [String] {
        let kernel = DirectKernel.vmlinux(for: spec.kernel, digest: spec.kernelDigest, cacheDir: kernelCache) ?? spec.kernel
        return [binary] + arguments(spec, kernel: kernel, managed: false)
    }

    /// The image's files as QEMU opens them in a managed boot.
    struct ImageFiles { var kernel: String; var initrd: String?; var disk: String?; var console: String? }

    public func boot(_ spec: GuestSpec) throws -> RunningGuest {
        try spec.validate()
        try Files.mkdirs(spec.runDir, mode: 0o700)
        let kernel = DirectKernel.vmlinux(for: spec.kernel, digest: spec.kernelDigest, cacheDir: kernelCache) ?? spec.kernel
        // QEMU runs as the guest's own uid (VMMLaunch): the tap and the image's files are handed to it
        // open, and it reopens the files as /dev/fd/N, which needs no way through their directories.
        var launch = try VMMLaunch(spec)
        defer { launch.closeHeld() }
        let pid: Int32
        do {
            let tap = try launch.handTap()
            let console = try launch.handBoundedConsole()
            var files = ImageFiles(kernel: "/dev/fd/\(try launch.hand(kernel, O_RDONLY, "the kernel"))")
            if let i = spec.initrd { files.initrd = "/dev/fd/\(try launch.hand(i, O_RDONLY, "the initramfs"))" }
            if let d = spec.disk { files.disk = "/dev/fd/\(try launch.hand(d, O_RDONLY, "the disk"))" }
            files.console = "/dev/fd/\(console)"
            try launch.startFileServers()
            let args = arguments(spec, kernel: kernel, tapFD: tap.map(Int.init), files: files)
            try? Data(([binary] + args).map { "'\($0)'" }.joined(separator: " ").utf8).write(
                to: URL(fileURLWithPath: spec.runDir + "/qemu.cmdline"))
            // With KVM it opens /dev/kvm itself (QEMU takes no KVM descriptor): through the device's group.
            var groups: [gid_t] = []
            if accelerator == .kvm, launch.identity != nil {
                var st = stat()
                guard stat("/dev/kvm", &st) == 0, st.st_mode & 0o060 == 0o060 else {
                    throw RunnerError.bootFailed(
                        "QEMU runs as a uid of its own and reaches /dev/kvm through its group, but /dev/kvm is not read-write for its group (mode \(String(st.st_mode & 0o777, radix: 8))); make it root:kvm 0660 as Debian's udev does (a kvm group, the rule in 50-udev-default.rules), or let VMMs keep root (vmm_uids = \"off\")",
                        consoleTail: "")
                }
                groups = [st.st_gid]
            }
            let jail = launch.jail(dynamic: true, devices: accelerator == .kvm ? ["/dev/kvm"] : [])
            pid = try launch.spawn(binary, args, log: "qemu.log", jail: jail, groups: groups)
        } catch {
            launch.abandon()
            throw error
        }
        let guest = QEMUGuest(spec: spec, pid: pid)
        do {
            try guest.attach(alive: { Processes.poll(pid) == nil })
            try guest.pin()
            // Connected before the guest runs, so nothing the agent says at boot is lost.
            if spec.agent { guest.firstAgent = try AgentConnection.connect(path: spec.agentSocket) }
            try guest.qmp!.execute("cont")
        } catch {
            let qemuLog = Console.tail(spec.runDir + "/qemu.log", lines: 10)
            guest.destroy()
            throw RunnerError.bootFailed("cannot start guest \(spec.id) under QEMU: \(error)", consoleTail: qemuLog)
        }
        return guest
    }
}

public final class QEMUGuest: RunningGuest, @unchecked Sendable {
    public let spec: GuestSpec
    public let pid: Int32
    public private(set) var vcpuThreads: [Int32] = []
    var qmp: QMPClient?
    let lock = NSLock()
    var ended: GuestEnd?
    var firstAgent: AgentConnection?

    init(spec: GuestSpec, pid: Int32) { self.spec = spec; self.pid = pid }

    /// Reattaches to a kept guest (another process started it).
    public static func adopt(spec: GuestSpec, pid: Int32, vcpuThreads: [Int32]) -> QEMUGuest {
        let g = QEMUGuest(spec: spec, pid: pid)
        g.vcpuThreads = vcpuThreads
        return g
    }

    func attach(alive: () -> Bool) throws {
        qmp = try QMPClient(path: spec.runDir + "/qmp.sock", timeout: 20, alive: alive)
    }

    /// vCPU i on CPU i of the spec; everything else stays on the housekeeping CPUs it started on.
    func pin() throws {
        guard let list = try qmp!.execute("query-cpus-fast") as? [[String: Any]] else {
            throw RunnerError.qmp("query-cpus-fast returned nothing")
        }
        var tids = [Int32](repeating: 0, count: spec.vcpus)
        for c in list {
            guard let idx = c["cpu-index"] as? Int, let tid = c["thread-id"] as? Int, idx < spec.vcpus else { continue }
            tids[idx] = Int32(tid)
        }
        guard !tids.contains(0) else { throw RunnerError.qmp("QEMU did not report a thread for every vCPU: \(list)") }
        let vcpuSet = Set(tids)
        for t in Processes.threads(of: pid) where !vcpuSet.contains(t) {
            try? CPUList.pin(thread: t, to: spec.housekeeping)
        }
        for (i, t) in tids.enumerated() { try CPUList.pin(thread: t, to: [spec.cpus[i]]) }
        vcpuThreads = tids
    }

    public func connectAgent() throws -> AgentConnection {
        lock.lock()
        let a = firstAgent
        firstAgent = nil
        lock.unlock()
        return try a ?? AgentConnection.connect(path: spec.agentSocket)
    }

    public func waitForEnd(timeout: TimeInterval?) -> GuestEnd? {
        Processes.waitFor(timeout: timeout, interval: 0.02) { reapedEnd() }
    }

    func reapedEnd() -> GuestEnd? {
        lock.lock(); defer { lock.unlock() }
        if let ended { return ended }
        guard let status = Processes.endStatus(pid) else { return nil }
        // QEMU reports why in its last SHUTDOWN event.
        let reason = qmp?.events(named: "SHUTDOWN").last.flatMap { ($0["data"] as? [String: Any])?["reason"] as? String }
        switch reason {
        case "guest-shutdown": ended = .poweredOff
        case "guest-reset": ended = .reset
        case "guest-panic": ended = .panicked
        default: ended = status == 0 ? .poweredOff : .vmmExited(status)
        }
        // The console reaches its log through a pipe and a separate sink (handBoundedConsole): let the
        // sink copy what QEMU wrote last before anyone reads the log for why the guest ended. Under
        // load it lagged, and a kernel panic was reported as a plain reset (seen in CI).
        VMMLaunch.stopConsoleSink(for: spec)
        return ended
    }

    /// Quit over QMP (instant: the guest's memory is discarded, nothing in it needs flushing), then
    /// SIGKILL if QEMU does not go; then the run directory goes.
    public func destroy() {
        if reapedEnd() == nil {
            if let q = qmp {
                _ = try? q.execute("quit", timeout: 2)
            } else if let q = try? QMPClient(path: spec.runDir + "/qmp.sock", timeout: 1, alive: { true }) {
                _ = try? q.execute("quit", timeout: 2)
            }
            if !Processes.wait(pid, timeout: 3) { kill(pid, SIGKILL); _ = Processes.wait(pid, timeout: 5) }
        }
        qmp?.close()
        FileServers.stop(for: spec)
        VMMLaunch.stopConsoleSink(for: spec)
        VMMIdentities.release(for: spec)
        Files.remove(spec.runDir)
    }
}
