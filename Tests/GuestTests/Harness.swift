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
    static var catalog: String { root + "/catalog" }
    static var runDir: String { root + "/run" }

    static let qemuMissing: String? = {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for d in path.split(separator: ":") where access("\(d)/qemu-system-x86_64", X_OK) == 0 { return nil }
        let msg = "SKIPPED: qemu-system-x86_64 is not installed; guest tests need Debian's qemu-system-x86 (scripts/deps.sh installs it)"
        FileHandle.standardError.write(Data("\n*** \(msg) ***\n\n".utf8))
        return msg
    }()
    static var canBoot: Bool { qemuMissing == nil }

    /// vmx or svm in /proc/cpuinfo; said loudly when absent, since a test then skips.
    static let hardwareVirtualization: Bool = {
        let info = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let flags = info.split(separator: "\n").first { $0.hasPrefix("flags") }.map { $0.split(separator: " ") } ?? []
        let has = flags.contains("vmx") || flags.contains("svm")
        if !has {
            FileHandle.standardError.write(
                Data(
                    "\n*** SKIPPED: this host has no vmx/svm (its KVM is PVM or absent): the embedded VMM cannot boot Linux images here; theEmbeddedVMMBootsTheMinimalImage runs on hosts with hardware virtualization ***\n\n"
                        .utf8))
        }
        return has
    }()

    struct Result { var code: Int32; var out: String; var err: String; var outBytes: Data }

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
        return Result(code: p.terminationStatus, out: String(decoding: od, as: UTF8.self), err: String(decoding: eb.d, as: UTF8.self), outBytes: od)
    }

    /// The minimal image, built once per test process (the .deb cache makes later builds quick).
    static let minimal: Result = {
        let r = run(["image", "build", repo + "/Images/minimal.toml"], timeout: 1800)
        precondition(r.code == 0, "building Images/minimal.toml failed:\n\(r.err)")
        return r
    }()

    /// Guests this harness's run directory holds, from `vm ls --json`.
    static func guests() -> [[String: Any]] {
        let r = run(["vm", "ls", "--json"])
        return (try? JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [[String: Any]]) ?? []
    }

    /// QEMU processes started from this harness's run directory.
    static func strayVMMs() -> [Int32] {
        let pids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }
        return pids.filter { pid in
            guard let d = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            let s = String(decoding: d, as: UTF8.self)
            return s.contains("qemu-system") && s.contains(runDir)
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
