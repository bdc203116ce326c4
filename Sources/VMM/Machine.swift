// A VM assembled from a MachineConfig (the builder) and run: one pinned thread per vCPU, created from
// the housekeeping thread, guest memory populated before the first instruction, exits dispatched to the
// port bus. The VM ends when the guest writes the exit port, resets (i8042, KVM system event), triple
// faults, or KVM cannot emulate what it did — each a distinct, reported end.

import CKVM
import CLinux
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

public struct MachineConfig: Sendable {
    public var kernel: [UInt8]
    public var initrd: [UInt8]?
    public var commandLine: String
    public var vcpus: Int
    public var memoryMB: Int
    /// Host CPU of each vCPU (empty: unpinned, for tests only).
    public var cpus: [Int]
    /// Host CPU for the VMM's own thread (VM creation, devices' host side).
    public var housekeeping: Int?
    public var hugepages: Bool
    /// An in-kernel 8254 PIT (see `VM.init`); also made when the command line has `acpi=off`, since
    /// Linux without ACPI runs the 8254 timer check.
    public var pit = false
    public var console: @Sendable ([UInt8]) -> Void
    /// Called once every vCPU thread is pinned and about to enter the guest, with their thread ids.
    public var running: (@Sendable ([Int32]) -> Void)? = nil
    /// Called once in `run`, after the machine is built and its signal handlers are in, before any
    /// thread is started or guest code runs: where slurm-vm-vmm installs its seccomp filter. An error
    /// ends the VM as failed.
    public var confine: (@Sendable () throws -> Void)? = nil
    /// A Unix socket to listen on for the guest agent's channel (a virtio-console port); nil: none.
    public var agentSocket: String? = nil
    /// An open descriptor of /dev/kvm to use instead of opening it (nil: open it).
    public var kvmFD: Int32? = nil
    /// A root disk (virtio-blk; a path or `fd:N`), read-only unless `diskWritable`.
    public var disk: String? = nil
    public var diskWritable = false
    /// Host directories served by vhost-user back ends (virtiofsd): each back end's socket and the tag
    /// the guest mounts it by. Guest RAM is then a memfd the back ends map.
    public var fileSystems: [(socket: String, tag: String)] = []
    /// A NIC on an open tap (IFF_VNET_HDR; the machine owns the descriptor from here on).
    public var network: (tap: Int32, mac: [UInt8], mtu: Int)? = nil

    public init(
        kernel: [UInt8], initrd: [UInt8]? = nil, commandLine: String = "", vcpus: Int = 1, memoryMB: Int = 64,
        cpus: [Int] = [], housekeeping: Int? = nil, hugepages: Bool = false, console: @escaping @Sendable ([UInt8]) -> Void
    ) {
        self.kernel = kernel; self.initrd = initrd; self.commandLine = commandLine; self.vcpus = vcpus; self.memoryMB = memoryMB
        self.cpus = cpus; self.housekeeping = housekeeping; self.hugepages = hugepages; self.console = console
    }
}

public enum MachineEnd: Sendable, Equatable, CustomStringConvertible {
    /// The guest wrote its status to the exit port.
    case exited(UInt32)
    case reset
    /// A triple fault (KVM_EXIT_SHUTDOWN) or a shutdown system event.
    case shutdown(String)
    /// Something the VM cannot go on from: an emulation failure, a failed entry, a host error.
    case failed(String)

    public var description: String {
        switch self {
        case .exited(let s): return "exited with status \(s)"
        case .reset: return "reset"
        case .shutdown(let why): return "shut down (\(why))"
        case .failed(let why): return "failed: \(why)"
        }
    }
}

public final class Machine: @unchecked Sendable {
    public let config: MachineConfig
    public let kvm: KVM
    public let vm: VM
    public let memory: GuestMemory
    public let vcpus: [VCPU]
    public let ports = PortBus()
    public let pci = PCIBus()
    public let mmio = MMIOBus()
    /// The virtio-mmio devices (virtio-fs), in the order of their windows.
    public private(set) var modern: [VirtioMMIOTransport] = []
    public private(set) var nic: VirtioNet?
    public let kernel: LoadedKernel
    /// The agent channel's host end, when configured.
    public private(set) var channel: HostChannel?
    public private(set) var console: VirtioConsole?
    public private(set) var block: VirtioBlock?
    /// PCI slot and interrupt line of each virtio function, for the MP table.
    var pciInterrupts: [(slot: Int, line: UInt8)] = []
    let end = Mutex<MachineEnd?>(nil)
    /// Host thread id of each vCPU once it runs.
    let tids: Mutex<[Int32]>
    /// Monotonic times: creation started, the bootstrap processor first entered the guest.
    public let created = Clock.now()
    let firstEntry = Mutex<Double?>(nil)
    let started = Mutex(0)
    public private(set) var ended: Double?
    private let threads = Mutex<[PinnedThread]>([])

    public init(_ c: MachineConfig) throws {
        guard c.vcpus >= 1, c.vcpus <= 254 else { throw VMMError.config("a guest has 1 to 254 vCPUs, not \(c.vcpus)") }
        guard c.cpus.isEmpty || c.cpus.count == c.vcpus else {
            throw VMMError.config("\(c.vcpus) vCPUs need \(c.vcpus) host CPUs, one each; \(c.cpus.count) given")
        }
        guard Set(c.cpus).count == c.cpus.count else { throw VMMError.config("a host CPU was given twice; each vCPU needs its own") }
        let bytes = UInt64(c.memoryMB) << 20
        guard c.memoryMB >= 16, bytes <= Layout.maxMemory else {
            throw VMMError.config("guest memory must be 16 MiB to \(Layout.maxMemory >> 20) MiB, not \(c.memoryMB) MiB")
        }
        // The machine keeps its configuration but not the kernel and initramfs: they are in guest
        // memory once loaded, and holding them would cost their size in RSS for the guest's lifetime.
        var kept = c
        kept.kernel = []
        kept.initrd = nil
        config = kept
        if let h = c.housekeeping {
            // The VM's kernel threads (kvm-nx-lpage-recovery) inherit the creator's affinity: keep them here.
            var cpu = Int32(h)
            let r = clinux_set_affinity(0, &cpu, 1)
            guard r == 0 else { throw VMMError.host("cannot move the VMM to housekeeping CPU \(h): \(String(cString: strerror(-r)))") }
        }
        kvm = try KVM(fd: c.kvmFD)
        vm = try VM(kvm: kvm, pit: c.pit || c.commandLine.split(separator: " ").contains("acpi=off"))
        guard c.fileSystems.count + (c.network == nil ? 0 : 1) <= Layout.virtioMMIOMax else {
            throw VMMError.config("a guest has at most \(Layout.virtioMMIOMax) shared directories and NICs together, not \(c.fileSystems.count)")
        }
        memory = try GuestMemory(size: bytes, hugetlb: c.hugepages, shared: !c.fileSystems.isEmpty)
        try memory.populate(on: c.cpus)
        try vm.map(gpa: 0, size: bytes, host: memory.base)

        kernel = try KernelLoader.load(c.kernel, into: memory)
        let cmdline = Array(c.commandLine.utf8) + [0]
        guard cmdline.count <= Layout.commandLineMax else {
            throw VMMError.config("the kernel command line is longer than \(Layout.commandLineMax - 1) bytes")
        }
        try memory.write(cmdline, at: Layout.commandLine)
        var zero = BootParams(kernel: kernel, ram: bytes, commandLine: Layout.commandLine, commandLineSize: cmdline.count - 1, initrd: nil)
        if let rd = c.initrd {
            let placed = try KernelLoader.placeInitrd(rd, memory: memory, kernelEnd: kernel.end, limit: zero.initrdAddressMax)
            zero = BootParams(kernel: kernel, ram: bytes, commandLine: Layout.commandLine, commandLineSize: cmdline.count - 1, initrd: placed)
        }
        try memory.write(zero.page, at: Layout.zeroPage)

        let supported = try kvm.supportedCPUID()
        var made: [VCPU] = []
        for i in 0..<c.vcpus {
            let v = try VCPU(vm: vm, id: i)
            try v.setCPUID(CPUID.entries(for: i, of: c.vcpus, supported: supported))
            try v.setMSRs(MSRs.boot())
            try v.setupLocalInterrupts()
            made.append(v)
        }
        vcpus = made
        tids = Mutex([Int32](repeating: 0, count: c.vcpus))
        try plugVirtio()
        try plugModernVirtio()
        try memory.write(try MPTable.build(cpus: c.vcpus, pci: pciInterrupts), at: Layout.mpTable)
        let slots = modern.map { VirtioMMIOSlot(base: $0.base, size: VirtioMMIOTransport.windowSize, gsi: $0.gsi) }
        try memory.write(try ACPI.build(cpus: c.vcpus, pci: pciInterrupts, mmio: slots), at: Layout.acpi)
        try bootstrap(made[0])
        try attachDevices()
    }

    /// The bootstrap processor starts at the kernel's 64-bit entry in long mode; the others wait in KVM
    /// for INIT/SIPI from the guest, as on hardware.
    func bootstrap(_ v: VCPU) throws {
        var s = try v.sregs()
        try GDT.enterLongMode(&s, memory: memory)
        try v.setSregs(s)
        var r = kvm_regs()
        r.rflags = 0x2
        r.rip = kernel.entry
        r.rsi = Layout.zeroPage
        r.rsp = Layout.bootStack
        r.rbp = Layout.bootStack
        try v.setRegs(r)
    }

    /// ISA lines nothing else uses, for the virtio functions' INTA# (so a guest on the 8259s alone
    /// can use them too).
    static let virtioLines: [UInt8] = [10, 11, 5, 9]

    /// The virtio functions the config asks for, each with its BAR in the PCI I/O window.
    func plugVirtio() throws {
        var devices: [VirtioDevice] = []
        if let path = config.agentSocket {
            let ch = try HostChannel(path: path, bus: ports)
            let con = VirtioConsole(wake: { [weak ch] in ch?.wake() })
            channel = ch; console = con
            devices.append(con)
        }
        if let path = config.disk {
            let b = try VirtioBlock(path: path, writable: config.diskWritable)
            block = b
            devices.append(b)
        }
        let vm = self.vm
        for (i, d) in devices.enumerated() {
            let line = Self.virtioLines[i]
            let base = try pci.allocateIO(VirtioTransport.ioSize(for: d))
            let t = VirtioTransport(
                d, memory: memory, ioBase: base, irq: UInt32(line),
                line: { irq, level in vm.irqLine(irq, level) },
                fault: { [unowned self] why in finish(.failed(why)) })
            pciInterrupts.append((try pci.plug(t), line))
        }
    }

    /// The virtio-mmio devices: one virtio-fs per shared directory and the NIC, each with its window
    /// and GSI.
    func plugModernVirtio() throws {
        let vm = self.vm
        var devices: [ModernVirtioDevice] = try config.fileSystems.map { try VirtioFS(socket: $0.socket, tag: $0.tag) }
        if let n = config.network {
            guard clinux_tap_prepare(n.tap, Int32(VirtioNet.headerSize)) == 0 else {
                throw VMMError.device("the descriptor given for the NIC is not a tap opened with IFF_VNET_HDR")
            }
            devices.append(try VirtioNet(tap: n.tap, mac: n.mac, mtu: n.mtu))
        }
        for (i, d) in devices.enumerated() {
            let base = Layout.virtioMMIO + UInt64(i) * Layout.virtioMMIOStride
            let gsi = Layout.virtioMMIOFirstGSI + UInt32(i)
            let t = VirtioMMIOTransport(
                d, memory: memory, base: base, gsi: gsi,
                pulse: {
                    vm.irqLine(gsi, true); vm.irqLine(gsi, false)
                },
                fault: { [unowned self] why in finish(.failed(why)) })
            try d.plugged(base: base, gsi: gsi, vm: vm)
            try mmio.attach(t, base: base, count: VirtioMMIOTransport.windowSize)
            modern.append(t)
            if let net = d as? VirtioNet { nic = net; try net.startIO(transport: t, bus: mmio, cpu: config.housekeeping) }
        }
    }

    static let pollRDHUP: Int32 = 0x2000  // <poll.h> with _GNU_SOURCE: the peer closed its end

    /// Ends the VM when a vhost-user back end goes away (its socket hangs up): the guest's file
    /// system would hang otherwise. Polls until the VM ends.
    func watchBackends() throws -> PinnedThread? {
        let watched = modern.compactMap { t in (t.device as? VirtioFS).map { ($0.backendSocket, $0.tag) } }
        guard !watched.isEmpty else { return nil }
        return try PinnedThread(cpu: config.housekeeping) { [self] in
            var fds = watched.map { pollfd(fd: $0.0, events: Int16(Self.pollRDHUP), revents: 0) }
            while end.withLock({ $0 }) == nil {
                let n = poll(&fds, nfds_t(fds.count), 200)
                guard n > 0 else { continue }
                if let i = fds.firstIndex(where: { $0.revents & Int16(Self.pollRDHUP | POLLHUP | POLLERR) != 0 }) {
                    return finish(.failed("the virtio-fs back end for tag \(watched[i].1) closed its socket (virtiofsd ended)"))
                }
            }
        }
    }

    func attachDevices() throws {
        let vm = self.vm
        let console = config.console
        try ports.attach(Serial(output: console, interrupt: { vm.edge(4) }), base: 0x3f8, count: 8)
        try ports.attach(CMOS(), base: 0x70, count: 2)
        try ports.attach(I8042(reset: { [unowned self] in finish(.reset) }), base: 0x60, count: 5)
        try ports.attach(Sink(), base: 0x80, count: 1)
        try ports.attach(ExitPort(exit: { [unowned self] s in finish(.exited(s)) }), base: ExitPort.port, count: 4)
        try ports.attach(pci, base: PCIBus.configPorts, count: 8)
        try ports.attach(pci.window, base: PCIBus.ioWindow, count: PCIBus.ioWindowSize)
    }

    /// Records how the VM ends (the first reason wins) and makes every vCPU leave the guest.
    public func finish(_ e: MachineEnd) {
        let first = end.withLock { cur -> Bool in
            guard cur == nil else { return false }
            cur = e
            return true
        }
        guard first else { return }
        for v in vcpus { v.requestExit() }
        threads.withLock { for t in $0 { pthread_kill(t.pthread, SIGUSR1) } }
    }

    public var vcpuThreadIDs: [Int32] { tids.withLock { $0 } }
    public var timeToFirstEntry: Double? { firstEntry.withLock { $0 }.map { $0 - created } }

    /// Runs the guest until it ends.
    public func run() -> MachineEnd {
        Kick.install()
        if let confine = config.confine {
            do { try confine() } catch { return .failed("\(error)") }
        }
        if let ch = channel, let con = console {
            do { try ch.start(console: con, cpu: config.housekeeping) } catch { finish(.failed("\(error)")) }
        }
        defer { channel?.stop() }
        var watcher: PinnedThread?
        do { watcher = try watchBackends() } catch { finish(.failed("cannot watch the virtio-fs back ends: \(error)")) }
        defer { watcher?.join() }
        defer { nic?.stopIO() }
        for (i, v) in vcpus.enumerated() {
            let cpu = config.cpus.isEmpty ? nil : config.cpus[i]
            do {
                let t = try PinnedThread(cpu: nil) { [self] in vcpuLoop(v, cpu: cpu) }
                // A thread started after `finish` kicked the others is kicked here, so none waits in
                // KVM_RUN (an application processor sits there until a SIPI that will never come).
                let over = threads.withLock { list -> Bool in
                    list.append(t); return end.withLock { $0 } != nil
                }
                if over { pthread_kill(t.pthread, SIGUSR1) }
            } catch {
                finish(.failed("\(error)"))
                break
            }
        }
        for t in threads.withLock({ $0 }) { t.join() }
        ended = Clock.now()
        return end.withLock { $0 } ?? .failed("the vCPUs stopped without a reason")
    }

    func vcpuLoop(_ v: VCPU, cpu: Int?) {
        var mask = sigset_t()
        sigemptyset(&mask)
        sigaddset(&mask, SIGUSR1)
        pthread_sigmask(SIG_UNBLOCK, &mask, nil)
        let tid = clinux_gettid()
        tids.withLock { $0[v.id] = tid }
        if let cpu {
            var c = Int32(cpu)
            let r = clinux_set_affinity(0, &c, 1)
            guard r == 0 else { return finish(.failed("cannot pin vCPU \(v.id) to host CPU \(cpu): \(String(cString: strerror(-r)))")) }
        }
        if started.withLock({
            $0 += 1; return $0
        }) == vcpus.count {
            config.running?(vcpuThreadIDs)
        }
        if v.id == 0 { firstEntry.withLock { $0 = Clock.now() } }
        while end.withLock({ $0 }) == nil {
            let exited: Bool
            do { exited = try v.enter() } catch { return finish(.failed("\(error)")) }
            guard exited else { continue }  // kicked: look at `end` again
            handleExit(v)
        }
    }

    func handleExit(_ v: VCPU) {
        let e = v.exitInfo()
        switch Int32(e.reason) {
        case KVM_EXIT_IO:
            let data = v.ioData(e)
            let size = Int(e.io_size)
            guard size == 1 || size == 2 || size == 4 else { return }
            for i in 0..<Int(e.io_count) {
                let off = i * size
                guard off + size <= data.count else { break }
                if e.io_direction == UInt8(KVM_EXIT_IO_IN) {
                    let val = ports.read(e.io_port, size: size)
                    for b in 0..<size { data[off + b] = UInt8(truncatingIfNeeded: val >> (8 * UInt32(b))) }
                } else {
                    var val: UInt32 = 0
                    for b in 0..<size { val |= UInt32(data[off + b]) << (8 * UInt32(b)) }
                    ports.write(e.io_port, size: size, value: val)
                }
            }
        case KVM_EXIT_MMIO:
            // The virtio-mmio windows; anywhere else (the APICs are in KVM) reads see all ones and
            // writes are dropped.
            let d = v.mmioData(e)
            let size = min(Int(e.mmio_length), d.count)
            guard size == 1 || size == 2 || size == 4 || size == 8 else { return }
            if e.mmio_is_write == 0 {
                let val = mmio.read(e.mmio_address, size: size)
                for i in 0..<size { d[i] = UInt8(truncatingIfNeeded: val >> (8 * UInt64(i))) }
            } else {
                var val: UInt64 = 0
                for i in 0..<size { val |= UInt64(d[i]) << (8 * UInt64(i)) }
                mmio.write(e.mmio_address, size: size, value: val)
            }
        case KVM_EXIT_HLT:
            finish(.shutdown("vCPU \(v.id) halted"))
        case KVM_EXIT_SHUTDOWN:
            finish(.shutdown("triple fault on vCPU \(v.id)\(registers(v))"))
        case KVM_EXIT_SYSTEM_EVENT:
            switch Int32(e.event_type) {
            case KVM_SYSTEM_EVENT_RESET: finish(.reset)
            case KVM_SYSTEM_EVENT_SHUTDOWN: finish(.shutdown("the guest powered off"))
            default: finish(.failed("system event \(e.event_type) on vCPU \(v.id) (a guest crash)"))
            }
        case KVM_EXIT_INTERNAL_ERROR:
            // The instruction bytes name the culprit (under PVM, e.g., an x87 or SMAP instruction in ring 0).
            let bytes = withUnsafeBytes(of: e.insn_bytes) { Array($0.prefix(Int(e.insn_size))) }
            let insn = bytes.isEmpty ? "" : " (bytes " + bytes.map { hex2($0) }.joined(separator: " ") + ")"
            let what = e.suberror == 1 ? "KVM could not emulate an instruction\(insn)" : "KVM internal error \(e.suberror)"
            finish(.failed("\(what) on vCPU \(v.id)\(registers(v))"))
        case KVM_EXIT_FAIL_ENTRY:
            finish(.failed("KVM could not enter vCPU \(v.id) (hardware reason \(hex(e.hardware_reason)))\(registers(v))"))
        default:
            finish(.failed("unexpected KVM exit \(e.reason) on vCPU \(v.id)\(registers(v))"))
        }
    }

    func registers(_ v: VCPU) -> String {
        guard let r = try? v.regs() else { return "" }
        return " at rip \(hex(r.rip)), rsp \(hex(r.rsp))"
    }
}

/// SIGUSR1 takes a vCPU thread out of KVM_RUN (with immediate_exit set first, none is lost).
enum Kick {
    nonisolated(unsafe) static var installed = false
    static func install() {
        guard !installed else { return }
        installed = true
        var sa = sigaction()
        sa.__sigaction_handler.sa_handler = { _ in }
        sigemptyset(&sa.sa_mask)
        sa.sa_flags = 0  // no SA_RESTART: KVM_RUN must return EINTR
        sigaction(SIGUSR1, &sa, nil)
    }
}
