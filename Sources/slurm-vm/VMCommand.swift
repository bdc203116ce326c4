// `slurm-vm vm …`: boot space-shared guests from catalog images (or a raw kernel) and run commands in
// them; keep guests and come back to them with exec; list and stop them.

import ArgumentParser
import Catalog
import Dispatch
import Foundation
import Network
import Node
import Runner
import Sizes
import Support
#if canImport(Glibc)
import Glibc
#endif

struct VMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vm",
        abstract: "Run commands in pinned, space-shared guests.",
        subcommands: [Run.self, List.self, Exec.self, Stop.self])

    struct BackendOptions: ParsableArguments {
        @Option(help: "auto (embedded where the host has vmx/svm, else qemu), qemu, or embedded (our KVM VMM).") var backend: String = "auto"
        @Option(help: "Force QEMU's accelerator: kvm or tcg (default: kvm where the host has vmx/svm).") var accel: String?
        @Flag(help: "Say which backend and accelerator run the guests.") var verbose = false

        /// The backend for guests (Runner's BackendChoice: `auto` follows the host).
        func make(records: GuestRecords) throws -> (any Hypervisor, Accelerator) {
            let choice: BackendChoice
            do { choice = try BackendChoice(parsing: backend) } catch { throw ValidationError("--backend must be auto, qemu or embedded") }
            var forced: Accelerator? = nil
            if let accel {
                guard let a = Accelerator(rawValue: accel) else { throw ValidationError("--accel must be kvm or tcg") }
                forced = a
            }
            if choice == .embedded && forced == .tcg { throw ValidationError("--accel tcg is QEMU's; the embedded VMM always runs on KVM") }
            let verbose = verbose
            return try choice.make(forced: forced, records: records) { msg in
                if case .caution = msg { warn("\(msg)") } else if verbose { warn("\(msg)") }
            }
        }
    }

    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Boot guests, run a command in each, tear them down.",
            discussion: """
                With --image: K guests of the image, each vCPU pinned to its own CPU from --cpus; the command runs
                in every guest (output prefixed by guest when K > 1) and its exit code is returned.
                  slurm-vm vm run --image mpich --vcpus 2 --cpus 0,1 -- mpiexec -n 2 hostname
                With --kernel (raw mode): boot a kernel without an agent, copy its console to stdout, and exit
                when it powers off, resets or halts.
                """)
        @OptionGroup var catalog: CatalogOption
        @OptionGroup var be: BackendOptions
        @Option(help: "The image (NAME, NAME:VERSION, NAME:TAG, sha256:…).") var image: String?
        @Option(help: "Raw mode: a kernel file.") var kernel: String?
        @Option(help: "Raw mode: an initramfs.") var initrd: String?
        @Option(help: "Kernel command line (appended to the image's).") var append: String?
        @Option(help: "vCPUs per guest.") var vcpus: Int = 1
        @Option(help: "Memory per guest (e.g. 512M, 1G; default: the image's MinMemoryMB).") var mem: String?
        @Option(help: "Host CPUs for the vCPUs, e.g. 0-3 (default: the first ones you may use).") var cpus: String?
        @Option(help: "Host CPUs for the VMM's other threads (default: spare CPUs of --cpus).") var housekeeping: String?
        @Option(help: "Number of guests.") var count: Int = 1
        @Option(help: "Seconds to wait for every guest's agent.") var bootTimeout: Double = 60
        @Option(help: "Environment for the command, NAME=VALUE (repeatable).") var env: [String] = []
        @Option(help: "Working directory in the guest.") var cwd: String = "/"
        @Option(help: "Back guest memory with 2 MiB hugepages: auto (when the reserved pool has room), on, off.") var hugepages: String = "auto"
        @Flag(help: "Keep the guests running after the command (see vm ls, vm exec, vm stop).") var keep = false
        @Option(help: "Largest console log per guest (e.g. 64K, 16M); what a guest writes beyond is dropped.") var consoleLimit: String = "16M"
        @Option(help: "A host directory each guest mounts at the same path over virtio-fs (repeatable; root only).") var share: [String] = []
        @Flag(
            help:
                "Put the guests on one private network: a bridge on this host, addresses from 10.254.0.0/16, each guest's /etc/hosts naming the others (root only)."
        )
        var network = false
        @Argument(parsing: .postTerminator, help: "The command to run in each guest.") var command: [String] = []

        func run() throws {
            let code = try reporting { () throws -> Int32 in
                if kernel != nil { return try raw() }
                guard let image else { throw ValidationError("give --image NAME (or --kernel FILE for raw mode)") }
                return try withImage(image)
            }
            // A stop signal's handler is tearing the guests down; a command that failed because of it
            // is not the outcome to report. The handler exits with 128 + the signal when it is done.
            if Teardown.interrupted { while true { pause() } }
            throw ExitCode(code)
        }

        func memoryMB(default d: Int) throws -> Int {
            guard let mem else { return d }
            return try VMRequest.parseMemory(mem, option: "--mem")
        }

        func plan(_ n: Int) throws -> CPUPlan {
            let allowed = CPUList.callerAffinity()
            // Without --cpus: the first CPUs this process may use, plus one more for housekeeping if there is one.
            let list = try cpus.map { try CPUList(parsing: $0) } ?? CPUList(Array(allowed.cpus.prefix(n * vcpus + 1)))
            let hk = try housekeeping.map { try CPUList(parsing: $0) }
            let p = try CPUPlanner.plan(count: n, vcpus: vcpus, cpus: list, housekeeping: hk, allowed: allowed)
            if cpus != nil || be.verbose { for w in p.warnings { warn("note: \(w)") } }
            return p
        }

        func withImage(_ ref: String) throws -> Int32 {
            guard count >= 1 && count <= 256 else { throw RunnerError.invalidRequest("--count must be between 1 and 256") }
            guard !command.isEmpty || keep else { throw ValidationError("give a command after --, or --keep to leave the guests running") }
            let cat = try catalog.open()
            let rec = try cat.resolve(try ImageReference(ref))
            let image = try BootImage(rec, blobs: cat.blobs)
            let memMB = try memoryMB(default: image.minMemoryMB)
            try ImageGuests.check(image, vcpus: vcpus, memoryMB: memMB)
            let shares = try share.map { dir -> String in
                var isDir: ObjCBool = false
                guard dir.hasPrefix("/"), FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
                    throw RunnerError.invalidRequest("--share \(dir): give an absolute path to an existing directory")
                }
                guard !dir.contains(",") && !dir.contains(":") && !dir.contains(" ") else {
                    throw RunnerError.invalidRequest(
                        "--share \(dir): a shared path cannot contain ',', ':' or spaces (the guest's kernel command line carries it)")
                }
                return dir
            }
            guard let limit = try? ByteSize.parse(consoleLimit, bare: .mebibytes), limit >= 64 << 10 else {
                throw ValidationError("--console-limit '\(consoleLimit)' is not a size of at least 64K (e.g. 64K, 16M)")
            }
            let p = try plan(count)
            let huge = try HugepagePolicy(parsing: hugepages).use(forMB: memMB * count)
            // A blob that no longer matches its digest must never boot.
            for a in rec.artefacts { try cat.blobs.verify(a.digest) }
            let records = try GuestRecords()
            let (hv, accelerator) = try be.make(records: records)
            let names = (0..<count).map { _ in
                let id = records.newID(prefix: rec.name); return (id: id, hostname: id)
            }
            let teardown = Teardown(catalog: cat)
            let ports = try network ? LocalNetwork.create(hostnames: names.map(\.hostname), teardown: teardown) : nil
            var set = ImageGuests(
                image: image, names: names, vcpus: vcpus, memoryMB: memMB, plan: p, hugepages: huge,
                extraCmdline: append, shares: shares, keep: keep, owner: getuid(), group: getgid(), networks: ports)
            set.consoleLimit = UInt64(limit)
            teardown.install()
            let clock = PhaseClock(enabled: be.verbose)
            let guests = try set.boot(on: hv, accelerator: accelerator, records: records, bootTimeout: bootTimeout) { g in
                clock.mark(
                    "VMM started, vCPUs pinned (\(g.spec.id): threads \(g.vcpuThreads.map(String.init).joined(separator: ",")) on CPUs \(CPUList(g.spec.cpus)))"
                )
                teardown.add(g)
                try? cat.lease(rec, holder: g.spec.id, pid: g.pid)
            }
            clock.mark("every agent ready (guest uptime \(guests.map { String($0.info.uptimeMs) }.joined(separator: ",")) ms)")
            var code: Int32 = 0
            if !command.isEmpty {
                let req = ExecRequest(argv: command, env: environment(), cwd: cwd, uid: getuid(), gid: getgid())
                let results = GuestLauncher.run(
                    req, in: guests, stdin: count == 1 ? 0 : nil, prefix: count > 1,
                    out: OutputSink(fd: 1), err: OutputSink(fd: 2))
                for (g, r) in zip(guests, results) {
                    switch r {
                    case .success(let st):
                        if let s = st.signal { warn("\(g.id): command killed by signal \(s)") }
                        code = max(code, st.code)
                    case .failure(let e):
                        warn("\(g.id): \(e)")
                        code = max(code, 255)
                    }
                }
            }
            clock.mark("command done")
            defer { clock.mark("torn down") }
            if keep {
                for g in guests { g.agent.close() }
                teardown.disarm()
                if command.isEmpty { for g in guests { print(g.id) } }
            } else {
                teardown.run()
            }
            return code
        }

        func environment() -> [String] {
            var e = [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=\(getuid() == 0 ? "/root" : "/tmp")",
                "TERM=\(ProcessInfo.processInfo.environment["TERM"] ?? "dumb")",
            ]
            if let u = getpwuid(getuid()) { e.append("USER=\(String(cString: u.pointee.pw_name))") }
            e += env
            return e
        }

        /// Raw mode: no agent; the console is the output; the end of the guest is the end of the run.
        func raw() throws -> Int32 {
            guard let kernel else { return 2 }
            guard FileManager.default.isReadableFile(atPath: kernel) else { throw RunnerError.invalidRequest("cannot read kernel \(kernel)") }
            if let initrd, !FileManager.default.isReadableFile(atPath: initrd) { throw RunnerError.invalidRequest("cannot read initrd \(initrd)") }
            guard count == 1 else { throw RunnerError.invalidRequest("raw mode boots one guest; drop --count") }
            let p = try plan(1)
            let records = try GuestRecords()
            let (hv, accelerator) = try be.make(records: records)
            let id = records.newID(prefix: "raw")
            let spec = GuestSpec(
                id: id, kernel: kernel, initrd: initrd, cmdline: append ?? "", vcpus: vcpus,
                memoryMB: try memoryMB(default: 256), cpus: p.perGuest[0], housekeeping: p.housekeeping,
                agent: false, hugepages: try HugepagePolicy(parsing: hugepages).use(forMB: try memoryMB(default: 256)), runDir: records.dir(id),
                keep: false, accelerator: accelerator)
            let teardown = Teardown(catalog: nil)
            teardown.install()
            let g = try hv.boot(spec)
            teardown.add(g)
            let end = ConsoleFollower.follow(g, to: 1)
            teardown.run()
            warn("guest \(end)")
            switch end {
            case .poweredOff, .halted, .reset: return 0
            case .exitStatus(let s): return Int32(min(s, 255))
            default: return 1
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List running guests on this host.")
        @Flag(help: "JSON output (with each vCPU's host thread).") var json = false

        func run() throws {
            try reporting {
                let live = try GuestRecords().live()
                if json {
                    print(
                        jsonString(
                            live.map { r -> [String: Any] in
                                [
                                    "id": r.spec.id, "image": r.image ?? "", "pid": r.pid, "vcpus": r.spec.vcpus, "cpus": r.spec.cpus,
                                    "housekeeping": r.spec.housekeeping, "memory_mb": r.spec.memoryMB, "vcpu_threads": r.vcpuThreads,
                                    "keep": r.spec.keep, "backend": r.backend, "accelerator": r.spec.accelerator?.rawValue ?? "",
                                    "started": ISO8601DateFormatter().string(from: r.started), "run_dir": r.spec.runDir,
                                ]
                            }))
                    return
                }
                if live.isEmpty { print("no guests running"); return }
                print(
                    table(
                        ["ID", "IMAGE", "PID", "VCPUS", "CPUS", "MEM", "UP", "KEPT"],
                        live.map { r in
                            [
                                r.spec.id, r.image ?? "-", String(r.pid), String(r.spec.vcpus), CPUList(r.spec.cpus).description,
                                "\(r.spec.memoryMB)M", "\(Int(Date().timeIntervalSince(r.started)))s", r.spec.keep ? "yes" : "no",
                            ]
                        }))
            }
        }
    }

    struct Exec: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run a command in a kept guest.")
        @Argument(help: "The guest id (see vm ls).") var guest: String
        @Option(help: "Environment, NAME=VALUE (repeatable).") var env: [String] = []
        @Option(help: "Working directory in the guest.") var cwd: String = "/"
        @Flag(name: .customShort("i"), help: "Pass stdin to the command (otherwise it reads an empty one).") var interactive = false
        @Flag(name: [.customShort("t"), .long], help: "Give the command a terminal, as ssh -t does (stdin and stdout must be one).")
        var tty = false
        @Argument(parsing: .postTerminator) var command: [String] = []

        func run() throws {
            let code = try reporting { () throws -> Int32 in
                guard !command.isEmpty else { throw ValidationError("give the command after --") }
                let terminal = try Terminal.requested(tty)
                let records = try GuestRecords()
                guard let r = records.load(guest), r.alive else { throw RunnerError.noSuchGuest(guest) }
                guard r.spec.agent else { throw RunnerError.invalidRequest("guest \(guest) has no agent (raw mode)") }
                if getuid() != 0 && getuid() != r.owner { throw RunnerError.invalidRequest("guest \(guest) belongs to uid \(r.owner)") }
                // The VMM's agent socket takes one client at a time: queue behind other execs.
                let lock = try FileLock(path: records.dir(guest) + "/agent.lock", mode: .exclusive)
                defer { _ = lock }
                let agent = try AgentConnection.connect(path: r.spec.agentSocket)
                defer { agent.close() }
                _ = try agent.handshake(timeout: 15)
                var e = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + env
                e.append("SLURM_VM_GUEST=\(guest)")
                e += terminal?.env ?? []
                let sinkOut = OutputSink(fd: 1), sinkErr = OutputSink(fd: 2)
                let o = sinkOut.stream(tag: nil), er = sinkErr.stream(tag: nil)
                let cmd = try agent.start(
                    ExecRequest(argv: command, env: e, cwd: cwd, uid: getuid(), gid: getgid(), terminal: terminal?.size),
                    stdin: interactive || tty ? 0 : nil, stdout: { o.write($0) }, stderr: { er.write($0) })
                let forward = SignalForwarder { cmd.signal($0) }
                defer { _ = forward }
                // On a terminal, what is typed goes to the guest's terminal as bytes; its size follows ours.
                if tty { Terminal.makeRaw(0) }
                defer { Terminal.restore() }
                let resizes = tty ? DispatchSource.makeSignalSource(signal: SIGWINCH, queue: .global()) : nil
                if let resizes {
                    signal(SIGWINCH, SIG_IGN)
                    resizes.setEventHandler { if let t = Terminal.size(of: 0) { cmd.resize(t) } }
                    resizes.resume()
                }
                defer { resizes?.cancel() }
                let (st, errs) = try cmd.wait()
                for m in errs { warn(m) }
                return st.code
            }
            throw ExitCode(code)
        }
    }

    struct Stop: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop guests (by id, or --all of yours).")
        @OptionGroup var catalog: CatalogOption
        @Argument var guests: [String] = []
        @Flag(help: "Stop every guest you own.") var all = false

        func run() throws {
            try reporting {
                let records = try GuestRecords()
                var targets = guests
                if all { targets = records.live().filter { getuid() == 0 || $0.owner == getuid() }.map(\.spec.id) }
                guard !targets.isEmpty else {
                    if all { print("no guests running") }; if !all { throw ValidationError("give guest ids or --all") }; return
                }
                let cat = try? catalog.open()
                for id in targets {
                    guard let r = records.load(id), r.alive else { throw RunnerError.noSuchGuest(id) }
                    if getuid() != 0 && getuid() != r.owner { throw RunnerError.invalidRequest("guest \(id) belongs to uid \(r.owner)") }
                    BackendChoice.adopt(r).destroy()
                    cat?.release(holder: id)
                    print("stopped \(id)")
                }
                LocalNetwork.removeUnused(records)
            }
        }
    }
}

/// With --verbose: when each phase of a run ended, relative to the start.
final class PhaseClock: @unchecked Sendable {
    let start = Date()
    let enabled: Bool
    let lock = NSLock()
    init(enabled: Bool) { self.enabled = enabled }
    func mark(_ what: String) {
        guard enabled else { return }
        lock.lock(); defer { lock.unlock() }
        warn(String(format: "[%6.3f s] ", Date().timeIntervalSince(start)) + what)
    }
}

/// Destroys guests on every way out: normal end, error, Ctrl-C, SIGTERM, SIGHUP.
final class Teardown: @unchecked Sendable {
    let lock = NSLock()
    var guests: [RunningGuest] = []
    var armed = true
    let catalog: Catalog?
    var sources: [DispatchSourceSignal] = []

    init(catalog: Catalog?) { self.catalog = catalog }

    /// Set once a stop signal arrived (read by `reporting`, which then leaves the exit to the handler).
    nonisolated(unsafe) static var interruptedFlag = false
    static let flagLock = NSLock()
    static var interrupted: Bool { flagLock.withLock { interruptedFlag } }

    func add(_ g: RunningGuest) { lock.lock(); guests.append(g); lock.unlock() }

    func install() {
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler { [self] in
                Self.flagLock.withLock { Self.interruptedFlag = true }
                warn("signal \(sig): stopping the guests")
                run()
                exit(128 + sig)
            }
            s.resume()
            sources.append(s)
        }
    }

    func disarm() { lock.lock(); armed = false; lock.unlock() }

    /// A `vm run --network` network to remove once its guests are gone.
    var network: UInt32?

    func run() {
        lock.lock()
        let gs = armed ? guests : []
        let net = armed ? network : nil
        guests = []
        network = nil
        lock.unlock()
        DispatchQueue.concurrentPerform(iterations: gs.count) { i in
            gs[i].destroy()
            catalog?.release(holder: gs[i].spec.id)
        }
        if let net { LinkDriver().destroy(job: net) }
    }

    deinit { if armed { run() } }
}

/// Forwards Ctrl-C and SIGTERM to a command in a guest while it runs.
final class SignalForwarder: @unchecked Sendable {
    var sources: [DispatchSourceSignal] = []
    init(_ deliver: @escaping @Sendable (Int32) -> Void) {
        for sig in [SIGINT, SIGTERM, SIGHUP, SIGQUIT] {
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler { deliver(sig) }
            s.resume()
            sources.append(s)
        }
    }
}

/// Copies a guest's console log to a descriptor until the guest ends. Linux's "System halted" (a halt
/// without power-off) counts as the end: the guest will never do anything again.
enum ConsoleFollower {
    static func follow(_ g: RunningGuest, to out: Int32) -> GuestEnd {
        var fd: Int32 = -1
        var tail = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 65536)
        var haltSeen: Date?
        while true {
            if fd < 0 { fd = open(g.spec.consolePath, O_RDONLY | O_CLOEXEC) }
            var n = 0
            if fd >= 0 {
                n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n > 0 {
                    _ = buf.withUnsafeBytes { write(out, $0.baseAddress, n) }
                    tail = Array((tail + buf[0..<n]).suffix(256))
                    if haltSeen == nil, String(decoding: tail, as: UTF8.self).contains("reboot: System halted") { haltSeen = Date() }
                }
            }
            if n <= 0 {
                if let end = g.waitForEnd(timeout: 0) {
                    // Drain what is left.
                    while fd >= 0, case let m = buf.withUnsafeMutableBytes({ read(fd, $0.baseAddress, $0.count) }), m > 0 {
                        _ = buf.withUnsafeBytes { write(out, $0.baseAddress, m) }
                    }
                    if fd >= 0 { close(fd) }
                    return end
                }
                if let h = haltSeen, Date().timeIntervalSince(h) > 0.5 { if fd >= 0 { close(fd) }; return .halted }
                usleep(20_000)
            }
        }
    }
}

/// `vm run --network`: the guests of one run on a private segment of this host (a bridge and a tap per
/// guest, no tunnel), made and removed by the Network module as a job's network is. Its id lies above
/// Slurm's job ids, so it never collides with a job's network on a node.
enum LocalNetwork {
    static func create(hostnames: [String], teardown: Teardown) throws -> [GuestNetwork] {
        guard getuid() == 0 else { throw ValidationError("--network makes a bridge and taps on this host: run it as root") }
        let driver = LinkDriver()
        let used = driver.jobs()
        guard let id = (0..<64).lazy.map({ _ in UInt32.random(in: JobNetworkPlan.localIDs) }).first(where: { !used.contains($0) }) else {
            throw RunnerError.invalidRequest("no free network id for --network")
        }
        let plan = try JobNetworkPlan.make(
            job: id, config: NetworkConfig(), nodes: ["127.0.0.1"], index: 0, first: 0,
            count: hostnames.count, total: hostnames.count, hostnames: hostnames)
        teardown.lock.withLock { teardown.network = id }
        try driver.create(plan)
        return plan.guests.map {
            GuestNetwork(
                network: id, tap: $0.tap, mac: $0.mac, mtu: plan.guestMTU, address: "\($0.address)/\(plan.subnet.prefix)",
                hosts: plan.hostsFile)
        }
    }

    /// Removes the `vm run --network` networks no live guest is on any more (after `vm stop` of kept guests).
    static func removeUnused(_ records: GuestRecords) {
        guard getuid() == 0 else { return }
        let driver = LinkDriver()
        let inUse = Set(records.live().compactMap { $0.spec.network?.network })
        for id in driver.jobs() where JobNetworkPlan.localIDs.contains(id) && !inUse.contains(id) { driver.destroy(job: id) }
    }
}
