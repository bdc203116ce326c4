// Conformance guests (Tests/VMMTests/Guests/*.c): small freestanding programs, built here with the C
// compiler, booted through the real KVM API by the embedded VMM. Each checks one part of what a guest
// sees and reports over the UART and the exit port. Without /dev/kvm they are skipped, loudly.

import Foundation
import Testing
@testable import VMM
import Runner
#if canImport(Glibc)
import Glibc
#endif

enum Guests {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Guests").path
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static let out: String = {
        let d = NSTemporaryDirectory() + "slurm-vm-vmm-guests-\(getpid())"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }()

    static let kvmMissing: String? = {
        let fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        if fd >= 0 { close(fd); return nil }
        let msg =
            "SKIPPED: /dev/kvm cannot be opened (\(String(cString: strerror(errno)))); the embedded VMM's conformance guests need KVM (run as root on a host with /dev/kvm)"
        FileHandle.standardError.write(Data("\n*** \(msg) ***\n\n".utf8))
        return msg
    }()
    static var canRun: Bool { kvmMissing == nil }

    /// Builds Guests/NAME.c into an ELF that loads at 16 MiB.
    static func build(_ name: String) throws -> String {
        let elf = "\(out)/\(name).elf"
        if FileManager.default.fileExists(atPath: elf) { return elf }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [
            "cc", "-O1", "-ffreestanding", "-nostdlib", "-static", "-fno-pic", "-no-pie", "-mno-red-zone", "-mgeneral-regs-only",
            "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-Wl,-T,\(dir)/guest.ld", "-Wl,--build-id=none",
            "-Wl,--no-warn-rwx-segments", "-o", elf + ".tmp", "\(dir)/\(name).c",
        ]
        let err = Pipe()
        p.standardError = err
        try p.run()
        let msg = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw VMMError.host("cc could not build guest \(name): \(String(decoding: msg, as: UTF8.self))") }
        try FileManager.default.moveItem(atPath: elf + ".tmp", toPath: elf)
        return elf
    }

    final class Console: @unchecked Sendable {
        let lock = NSLock()
        var bytes: [UInt8] = []
        var text: String { lock.withLock { String(decoding: bytes, as: UTF8.self) } }
        func append(_ b: [UInt8]) { lock.withLock { bytes += b } }
    }

    /// Boots a guest in this process; returns how it ended and its console.
    static func run(
        _ name: String, cmdline: String = "console=ttyS0", vcpus: Int = 1, memoryMB: Int = 64,
        cpus: [Int] = [], running: (@Sendable ([Int32]) -> Void)? = nil,
        configure: (inout MachineConfig) -> Void = { _ in },
        beforeRun: (Machine) throws -> Void = { _ in }
    ) throws -> (MachineEnd, String, Machine) {
        let elf = try build(name)
        let console = Console()
        var c = MachineConfig(
            kernel: [UInt8](try Data(contentsOf: URL(fileURLWithPath: elf))), commandLine: cmdline, vcpus: vcpus,
            memoryMB: memoryMB, cpus: cpus, console: { console.append($0) })
        c.running = running
        configure(&c)
        let m = try Machine(c)
        try beforeRun(m)
        let end = m.run()
        return (end, console.text, m)
    }
}

@Suite(.serialized) struct ConformanceTests {
    @Test(.enabled(if: Guests.canRun, "needs /dev/kvm")) func theZeroPageE820AndCommandLineAreAsDocumented() throws {
        let (end, console, _) = try Guests.run("bootparams", cmdline: "console=ttyS0 conformance=bootparams")
        #expect(end == .exited(0), "\(console)")
        #expect(console.contains("bootparams: ok"))
        #expect(console.contains("cmdline: console=ttyS0 conformance=bootparams"))
    }

    @Test(.enabled(if: Guests.canRun, "needs /dev/kvm")) func unassignedPortsAndMMIOAreHarmlessAndTheExitPortCarriesTheStatus() throws {
        let (end, console, _) = try Guests.run("ports")
        #expect(end == .exited(42), "\(console)")
        #expect(console.contains("ports: ok"))
    }

    @Test(.enabled(if: Guests.canRun, "needs /dev/kvm")) func theRTCGivesTheHostsTime() throws {
        let before = Date()
        let (end, console, _) = try Guests.run("rtc")
        #expect(end == .exited(0), "\(console)")
        let line = console.split(separator: "\n").first { $0.hasPrefix("rtc: ") }.map { String($0.dropFirst(5)) } ?? ""
        let f = DateFormatter()
        f.dateFormat = "yyyy-MM-dd HH:mm:ss"
        f.timeZone = TimeZone(identifier: "UTC")
        let t = try #require(f.date(from: line), "the guest printed '\(line)'")
        #expect(abs(t.timeIntervalSince(before)) < 120, "guest \(t), host \(before)")
    }

    @Test(.enabled(if: Guests.canRun, "needs /dev/kvm")) func thePITCountsOnlyWhenAskedFor() throws {
        // Linux under our hardware-reduced ACPI never uses the 8254, so it is off by default.
        let (plain, without, _) = try Guests.run("pit")
        #expect(plain == .exited(0), "\(without)")
        #expect(without.contains("pit: absent"), "\(without)")
        let (asked, with, _) = try Guests.run("pit", configure: { $0.pit = true })
        #expect(asked == .exited(0), "\(with)")
        #expect(with.contains("pit: counting"), "\(with)")
        let (noACPI, implied, _) = try Guests.run("pit", cmdline: "console=ttyS0 acpi=off")
        #expect(noACPI == .exited(0), "\(implied)")
        #expect(implied.contains("pit: counting"), "acpi=off implies the PIT: \(implied)")
    }

    @Test(.enabled(if: Guests.canRun, "needs /dev/kvm")) func theI8042AnswersLinuxsProbeAndItsResetEndsTheVMAsAReset() throws {
        let (end, console, _) = try Guests.run("reset")
        #expect(end == .reset, "\(console)")
        #expect(console.contains("i8042 probe answered"), "\(console)")
        #expect(!console.contains("FAIL"), "\(console)")
    }

    @Test(.enabled(if: Guests.canRun, "needs /dev/kvm")) func aTripleFaultEndsTheVMWithAClearReason() throws {
        let (end, console, _) = try Guests.run("triplefault")
        guard case .shutdown(let why) = end else { Issue.record("ended \(end); console: \(console)"); return }
        #expect(why.contains("triple fault"), "\(why)")
    }

    @Test(.enabled(if: Guests.canRun, "needs /dev/kvm")) func eachVCPUThreadRunsOnItsOwnHostCPU() throws {
        let cpus = Array(0..<min(2, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))))
        // Read each vCPU thread's affinity from /proc while it runs (the callback comes just before entry).
        let seen = Guests.Console()
        // The smp guest: every vCPU runs guest code (the APs after INIT/SIPI), each on its own CPU.
        let (end, console, m) = try Guests.run(
            "smp", vcpus: cpus.count, cpus: cpus,
            running: { tids in
                for t in tids {
                    let status = (try? String(contentsOfFile: "/proc/self/task/\(t)/status", encoding: .utf8)) ?? ""
                    let line = status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") } ?? ""
                    seen.append(Array("\(t)=\(line.split(separator: "\t").last ?? "")\n".utf8))
                }
            })
        #expect(end == .exited(0), "\(console)")
        #expect(console.contains("smp: \(cpus.count - 1) application processors checked in"), "\(console)")
        let tids = m.vcpuThreadIDs
        #expect(tids.count == cpus.count && !tids.contains(0))
        for (i, t) in tids.enumerated() { #expect(seen.text.contains("\(t)=\(cpus[i])\n"), "vCPU \(i): \(seen.text)") }
    }

    @Test(.enabled(if: Guests.canRun, "needs /dev/kvm")) func theUARTsTHREmptyInterruptReachesTheGuest() throws {
        let (end, console, _) = try Guests.run("serialirq")
        #expect(end == .exited(0), "\(console)")
        #expect(console.contains("interrupts"))
    }

    @Test(.enabled(if: Guests.canRun, "needs /dev/kvm")) func applicationProcessorsStartByINITAndSIPIFromTheMPTable() throws {
        // Four vCPUs, unpinned (this machine may have fewer cores): the MP table lists four, and three APs
        // check in, each with its own APIC id.
        let (end, console, _) = try Guests.run("smp", vcpus: 4)
        #expect(end == .exited(0), "\(console)")
        #expect(console.contains("smp: 4 processors in the MP table"))
        #expect(console.contains("smp: 3 application processors checked in"))
    }

    @Test(.enabled(if: Guests.canRun, "needs /dev/kvm")) func theACPITablesDescribeEveryProcessorAndTheIOAPIC() throws {
        // Three vCPUs (the cloud kernel takes its processors from the MADT); the guest validates every
        // checksum and entry and prints the count.
        let (end, console, _) = try Guests.run("acpi", vcpus: 3)
        #expect(end == .exited(0), "\(console)")
        #expect(console.contains("acpi: 3 processors in the MADT"))
    }

    /// The virtio guest against the real host ends: the agent socket (spoken to with the runner's own
    /// frame codec) and a disk file. The guest answers HELLO with READY and echoes 20000 bytes; it reads
    /// sector 5 as written here, and what it writes to sector 9 lands in the file.
    @Test(.enabled(if: Guests.canRun, "needs /dev/kvm")) func virtioPCIConsoleAndDiskWorkFromAGuestDriver() throws {
        try virtioGuest(helloFirst: false)
    }

    /// A runner that connects and speaks before the guest has run at all (as the QEMU backend's runner
    /// does when the VMM is slow to start): its HELLO waits in the socket through the driver's device
    /// reset and is read once the guest opens its port. Taking it earlier lost it to the reset, and the
    /// guest waited for a frame that never came (an intermittent hang under load).
    @Test(.enabled(if: Guests.canRun, "needs /dev/kvm")) func aHelloSentBeforeTheGuestRunsSurvivesTheDriversReset() throws {
        try virtioGuest(helloFirst: true)
    }

    func virtioGuest(helloFirst: Bool) throws {
        let dir = Guests.out + "/virtio-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var disk = [UInt8](repeating: 0, count: 64 * 512)
        for s in 0..<64 { for i in 0..<512 { disk[s * 512 + i] = UInt8(truncatingIfNeeded: s + i) } }
        _ = FileManager.default.createFile(atPath: dir + "/disk", contents: Data(disk))
        let sock = dir + "/agent.sock"
        let host = AgentHost(sock)
        let (end, console, _) = try Guests.run(
            "virtio",
            configure: { c in
                c.agentSocket = sock
                c.disk = dir + "/disk"
                c.diskWritable = true
            },
            beforeRun: { m in
                // The machine listens from its creation, though no thread serves the socket until run().
                // A host side that gives up (30 s without a frame) stops the guest too, so a lost frame
                // fails the test in seconds instead of leaving the guest to spin out its own long wait.
                let stopIfStuck = { @Sendable in
                    if !host.log.text.contains("intact") { m.finish(.failed("the host side gave up: \(host.log.text)")) }
                }
                if helloFirst {
                    let fd = AgentHost.connect(sock)
                    try #require(fd >= 0, "connect to the listening agent socket")
                    Thread {
                        host.converse(fd); stopIfStuck()
                    }.start()
                    host.helloSent.wait()
                } else {
                    Thread {
                        host.converse(); stopIfStuck()
                    }.start()
                }
            })
        host.done.wait()
        #expect(end == .exited(0), "\(console)")
        #expect(console.contains("virtio: ok"), "\(console)")
        #expect(host.log.text.contains("ready nonce ok, hostname conformance"), "\(host.log.text)")
        #expect(host.log.text.contains("echo 20000 bytes intact"), "\(host.log.text)")
        let after = [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/disk")))
        #expect(Array(after[(9 * 512)..<(10 * 512)]) == (0..<512).map { UInt8(truncatingIfNeeded: 0xa5 ^ $0) }, "sector 9 as the guest wrote it")
        #expect(after[0..<(9 * 512)] == disk[0..<(9 * 512)], "nothing else changed")
    }

    @Test(.enabled(if: Guests.canRun, "needs /dev/kvm")) func theCLIRunsAConformanceGuestEndToEnd() throws {
        let elf = try Guests.build("ports")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: ProcessInfo.processInfo.environment["SLURM_VM_BIN"] ?? Guests.repo + "/.build/debug/slurm-vm")
        p.arguments = ["vm", "run", "--backend", "embedded", "--kernel", elf, "--mem", "64M", "--append", "console=ttyS0"]
        var env = ProcessInfo.processInfo.environment
        env["SLURM_VM_RUNDIR"] = Guests.out + "/run"
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out; p.standardError = err
        try p.run()
        let o = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let e = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 42, "stdout: \(o)\nstderr: \(e)")
        #expect(o.contains("ports: ok"))
        #expect(e.contains("exited with status 42"))
    }

    /// slurm-vm-vmm confines itself before guest code runs: a conformance guest with 4 vCPUs runs to its end
    /// under the filter, and a system call outside the allowlist (socket(2), made on purpose by --seccomp-selftest)
    /// stops the VMM with status 159, naming the call.
    @Test(.enabled(if: Guests.canRun, "needs /dev/kvm")) func theVMMsSeccompFilterStopsACallOutsideItsAllowlist() throws {
        func vmm(_ guest: String, _ extra: [String]) throws -> (Int32, String) {
            let elf = try Guests.build(guest)
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Guests.repo + "/.build/debug/slurm-vm-vmm")
            p.arguments = ["--kernel", elf, "--mem", "64", "--append", "console=ttyS0", "--console", "/dev/null"] + extra
            let err = Pipe()
            p.standardError = err
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            let e = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            return (p.terminationStatus, e)
        }
        // Four vCPU threads started, woken by INIT and SIPI, and stopped, all under the filter.
        let (ok, okErr) = try vmm("smp", ["--vcpus", "4"])
        #expect(ok == 0, "\(okErr)")
        #expect(!okErr.contains("seccomp"), "\(okErr)")
        let (stopped, why) = try vmm("ports", ["--seccomp-selftest"])
        #expect(stopped == 159, "\(why)")
        #expect(why.contains("system call 41 (socket) is outside the VMM's allowlist"), "\(why)")
    }

    @Test(.enabled(if: Guests.canRun, "needs /dev/kvm")) func badMachineRequestsAreClearErrors() throws {
        let elf = [UInt8](try Data(contentsOf: URL(fileURLWithPath: try Guests.build("ports"))))
        func error(_ c: MachineConfig) -> String {
            do { _ = try Machine(c); return "" } catch { return "\(error)" }
        }
        #expect(error(MachineConfig(kernel: elf, vcpus: 2, cpus: [0], console: { _ in })).contains("need 2 host CPUs"))
        #expect(error(MachineConfig(kernel: elf, vcpus: 2, cpus: [0, 0], console: { _ in })).contains("given twice"))
        #expect(error(MachineConfig(kernel: elf, memoryMB: 8, console: { _ in })).contains("16 MiB"))
        #expect(error(MachineConfig(kernel: [1, 2, 3], console: { _ in })).contains("neither an ELF vmlinux nor a bzImage"))
        #expect(error(MachineConfig(kernel: elf, memoryMB: 16, console: { _ in })).contains("does not fit in 16 MiB of guest memory"))
        #expect(error(MachineConfig(kernel: elf, memoryMB: 32, console: { _ in })).isEmpty)
        #expect(
            error(MachineConfig(kernel: elf, initrd: [UInt8](repeating: 0, count: 20 << 20), memoryMB: 32, console: { _ in })).contains(
                "does not fit"))
    }
}

/// The runner's side of the agent channel for the virtio guest: connect, HELLO, READY, a STDIN frame
/// of 20000 bytes and its echo.
final class AgentHost: @unchecked Sendable {
    let path: String
    let log = Guests.Console()
    let done = DispatchSemaphore(value: 0)
    init(_ p: String) { path = p }

    func say(_ s: String) { log.append(Array((s + "\n").utf8)) }

    let helloSent = DispatchSemaphore(value: 0)

    func converse() {
        var fd: Int32 = -1
        for _ in 0..<500 {
            fd = Self.connect(path)
            if fd >= 0 { break }
            usleep(10_000)
        }
        guard fd >= 0 else {
            say("could not connect to \(path)")  // before the signal, so the test reads it
            done.signal()
            return
        }
        converse(fd)
    }

    func converse(_ fd: Int32) {
        defer { done.signal() }
        defer { close(fd) }
        var tv = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var decoder = AgentFrameDecoder()
        func send(_ f: AgentFrame) { let b = f.encoded; _ = b.withUnsafeBytes { write(fd, $0.baseAddress!, b.count) } }
        func next() -> AgentFrame? {
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                if let f = decoder.next() { return f }
                let n = read(fd, &buf, buf.count)
                guard n > 0 else { return nil }
                decoder.feed(buf[0..<n])
            }
        }
        let nonce = UInt64.random(in: 1...UInt64.max)
        send(AgentCodec.hello(nonce: nonce))
        helloSent.signal()
        guard let r = next(), r.type == AgentFrameType.ready.rawValue, let info = AgentCodec.ready(r) else { return say("no READY") }
        say("ready nonce \(info.nonce == nonce ? "ok" : "wrong"), hostname \(info.hostname)")
        let payload = (0..<20000).map { UInt8(truncatingIfNeeded: $0 * 7 + 3) }
        send(AgentFrame(.stdin, session: 7, payload: payload))
        guard let e = next() else { return say("no echo") }
        say(
            "echo \(e.payload.count) bytes \(e.type == AgentFrameType.stdout.rawValue && e.session == 7 && e.payload == payload ? "intact" : "wrong")"
        )
    }

    static func connect(_ path: String) -> Int32 {
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var a = sockaddr_un()
        a.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &a.sun_path) { p in for (i, b) in path.utf8.enumerated() { p[i] = b } }
        let r = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if r != 0 { close(s); return -1 }
        return s
    }
}
