// End-to-end tests drive the built `slurm-vm` binary as an admin and a user would, against a catalog
// and a run directory of their own, with real QEMU guests. Without QEMU they are skipped, and say so.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

enum Harness {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static let binary: String = ProcessInfo.processInfo.environment["SLURM_VM_BIN"] ?? repo + "/.build/debug/slurm-vm"
    static let root: String = {
        let d = NSTemporaryDirectory() + "slurm-vm-guests-\(getpid())"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }()
    /// SLURM_VM_TEST_CATALOG: a catalog that already holds the images (the SVM sandbox stage builds
    /// them on the host, where building is fast, and shares them); else one of the harness's own.
    static let sharedCatalog = ProcessInfo.processInfo.environment["SLURM_VM_TEST_CATALOG"]
    static var catalog: String { sharedCatalog ?? root + "/catalog" }
    static var runDir: String { root + "/run" }

    static let qemuMissing: String? = {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for d in path.split(separator: ":") where access("\(d)/qemu-system-x86_64", X_OK) == 0 { return nil }
        let msg = "SKIPPED: qemu-system-x86_64 is not installed; guest tests need Debian's qemu-system-x86 (scripts/deps.sh installs it)"
        FileHandle.standardError.write(Data("\n*** \(msg) ***\n\n".utf8))
        return msg
    }()
    static var canBoot: Bool { qemuMissing == nil }

    /// vmx or svm in /proc/cpuinfo.
    static let hardwareVirtualization: Bool = {
        let info = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let flags = info.split(separator: "\n").first { $0.hasPrefix("flags") }.map { $0.split(separator: " ") } ?? []
        return flags.contains("vmx") || flags.contains("svm")
    }()

    /// The backends the guest suite runs on: SLURM_VM_TEST_BACKENDS (e.g. "embedded", as the SVM
    /// sandbox stage of scripts/test.sh sets it), else QEMU, and the embedded VMM where the host has
    /// vmx/svm. Where it has neither (these CI hosts' KVM is PVM), the embedded cases run in the SVM
    /// sandbox instead (scripts/sandbox.py), which says so here rather than skipping.
    static let backends: [String] = {
        if let list = ProcessInfo.processInfo.environment["SLURM_VM_TEST_BACKENDS"] {
            return list.split(separator: ",").map(String.init)
        }
        if !hardwareVirtualization {
            FileHandle.standardError.write(
                Data(
                    "\n*** no vmx/svm on this host (its KVM is PVM): the guest suite runs on QEMU here, and on the embedded VMM in the SVM sandbox stage of scripts/test.sh ***\n\n"
                        .utf8))
        }
        return hardwareVirtualization ? ["qemu", "embedded"] : ["qemu"]
    }()

    /// The suite's cases that only the embedded VMM has.
    static var embeddedOnly: [String] { backends.filter { $0 == "embedded" } }

    struct Result {
        var code: Int32
        var err: String
        var outBytes: Data
        /// Decoded when asked for: 10 MB of random bytes decode slowly in a debug build, and much more
        /// slowly under the SVM sandbox's emulation.
        var out: String { String(decoding: outBytes, as: UTF8.self) }
    }

    /// Runs slurm-vm with the harness's catalog and run directory (plus `env`).
    @discardableResult
    /// A command still running after `timeout` seconds is killed (SIGTERM: it tears its guests down), so
    /// a hang fails the test with exit code 143 instead of stalling the suite.
    static func run(
        _ args: [String], env: [String: String] = [:], stdin: Data? = nil, catalog: String? = nil,
        timeout: TimeInterval = 300
    ) -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        var e = ProcessInfo.processInfo.environment
        e["SLURM_VM_CATALOG"] = catalog ?? Harness.catalog
        e["SLURM_VM_RUNDIR"] = runDir
        for (k, v) in env { e[k] = v }
        p.environment = e
        let o = Pipe(), er = Pipe(), i = Pipe()
        p.standardOutput = o; p.standardError = er; p.standardInput = i
        try! p.run()
        let pid = p.processIdentifier
        let watchdog = DispatchWorkItem { kill(pid, SIGTERM) }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: watchdog)
        defer { watchdog.cancel() }
        if let stdin { i.fileHandleForWriting.write(stdin) }
        try? i.fileHandleForWriting.close()
        final class Box: @unchecked Sendable { var d = Data() }
        let eb = Box()
        let t = Thread { eb.d = er.fileHandleForReading.readDataToEndOfFile() }
        t.start()
        let od = o.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        while !t.isFinished { usleep(1000) }
        return Result(code: p.terminationStatus, err: String(decoding: eb.d, as: UTF8.self), outBytes: od)
    }

    /// Runs the CLI on a pseudo-terminal of rows x cols (its stdin, stdout and stderr), typing `keys`
    /// once it has started; its exit status and everything it showed.
    static func runOnTerminal(
        _ args: [String], keys: String, rows: UInt16 = 33, cols: UInt16 = 97, timeout: TimeInterval = 120
    ) -> (code: Int32, shown: String) {
        // posix_openpt and friends by hand (Glibc's Swift module leaves them out): /dev/ptmx, unlock
        // (TIOCSPTLCK), the number of the other side (TIOCGPTN); Linux x86-64's ioctl numbers.
        let master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC)
        var unlock: Int32 = 0, number: UInt32 = 0
        let unlocked = withUnsafeMutablePointer(to: &unlock) { ioctl(master, 0x4004_5431, $0) }
        let numbered = withUnsafeMutablePointer(to: &number) { ioctl(master, 0x8004_5430, $0) }
        precondition(master >= 0 && unlocked == 0 && numbered == 0, "no pseudo-terminal")
        let slave = open("/dev/pts/\(number)", O_RDWR | O_NOCTTY | O_CLOEXEC)
        var ws = winsize(ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0)
        _ = withUnsafeMutablePointer(to: &ws) { ioctl(slave, UInt(TIOCSWINSZ), $0) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        p.environment = ProcessInfo.processInfo.environment.merging(["SLURM_VM_CATALOG": catalog, "SLURM_VM_RUNDIR": runDir, "TERM": "dumb"]) { $1 }
        let t = FileHandle(fileDescriptor: slave, closeOnDealloc: false)
        p.standardInput = t; p.standardOutput = t; p.standardError = t
        try! p.run()
        close(slave)
        usleep(500_000)
        _ = Array(keys.utf8).withUnsafeBytes { write(master, $0.baseAddress, $0.count) }
        var shown = [UInt8](), buf = [UInt8](repeating: 0, count: 4096)
        let deadline = Date(timeIntervalSinceNow: timeout)
        var status: Int32? = nil
        while Date() < deadline {
            var pf = pollfd(fd: master, events: Int16(POLLIN), revents: 0)
            guard poll(&pf, 1, 100) > 0 else { continue }
            let n = buf.withUnsafeMutableBytes { read(master, $0.baseAddress, $0.count) }
            if n > 0 { shown += buf[0..<n]; continue }
            // EIO: nothing holds the terminal's other side any more, so the command has ended.
            p.waitUntilExit()
            status = p.terminationStatus
            break
        }
        close(master)
        if status == nil { p.terminate(); p.waitUntilExit(); status = -1 }
        return (status!, String(decoding: shown, as: UTF8.self))
    }

    /// The minimal image, built once per test process (the .deb cache makes later builds quick).
    static let minimal: Result = {
        if sharedCatalog != nil { return Result(code: 0, err: "", outBytes: Data()) }
        let r = run(["image", "build", repo + "/Images/minimal.toml"], timeout: 1800)
        precondition(r.code == 0, "building Images/minimal.toml failed:\n\(r.err)")
        return r
    }()

    /// Guests this harness's run directory holds, from `vm ls --json`.
    static func guests() -> [[String: Any]] {
        let r = run(["vm", "ls", "--json"])
        return (try? JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [[String: Any]]) ?? []
    }

    /// VMM processes (QEMU or slurm-vm-vmm) started from this harness's run directory — they run in
    /// their guest's run directory, and name their files relative to it — and file servers of its
    /// shared directories.
    static func strayVMMs() -> [Int32] {
        let pids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }
        return pids.filter { pid in
            let comm = (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            switch comm {
            case "qemu-system-x86", "slurm-vm-vmm":
                return (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/cwd"))?.hasPrefix(runDir) == true
            case "virtiofsd":
                let cmd = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline").map { String(decoding: $0, as: UTF8.self) } ?? ""
                return cmd.contains("source=" + root)
            default: return false
            }
        }
    }

    /// Nothing left behind: no guest records, no VMM processes, no guest directories.
    static func expectClean(_ sourceLocation: SourceLocation = #_sourceLocation) {
        var vmms: [Int32] = []
        for _ in 0..<50 { vmms = strayVMMs(); if vmms.isEmpty { break }; usleep(100_000) }
        #expect(vmms.isEmpty, "VMM processes left running: \(vmms)", sourceLocation: sourceLocation)
        #expect(guests().isEmpty, "guests left: \(guests())", sourceLocation: sourceLocation)
        let dirs = (try? FileManager.default.contentsOfDirectory(atPath: runDir + "/guests")) ?? []
        #expect(dirs.isEmpty, "guest directories left: \(dirs)", sourceLocation: sourceLocation)
    }

    static var cpuCount: Int { Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) }

    static func affinity(pid: Int, tid: Int) -> String? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/status", encoding: .utf8) else { return nil }
        return s.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }?
            .dropFirst("Cpus_allowed_list:".count).trimmingCharacters(in: .whitespaces)
    }

    /// "0-2,5" as a set of CPUs.
    static func cpuList(_ s: String) -> Set<Int> {
        var cpus = Set<Int>()
        for part in s.split(separator: ",") {
            let r = part.split(separator: "-").compactMap { Int($0) }
            if r.count == 2, r[0] <= r[1] { cpus.formUnion(r[0]...r[1]) } else if r.count == 1 { cpus.insert(r[0]) }
        }
        return cpus
    }

    static func sh(_ cmd: String) -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", cmd]
        let o = Pipe()
        p.standardOutput = o; p.standardError = o
        try! p.run()
        let d = o.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: d, as: UTF8.self))
    }
}
