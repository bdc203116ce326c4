// `slurm-vm bench guest`: what an image costs, side by side on this machine, median of N runs:
//   build      `image build` of a recipe into a scratch catalog (packages already downloaded)
//   run        `slurm-vm vm run --image IMAGE -- true`, the whole user-visible command, against the
//              baseline: QEMU started directly with the same command line, booting the same image to
//              user space and powering off (slurmvm.bootonly=1), with no verification, pinning, monitor,
//              agent handshake or teardown. The ratio is the runner's overhead over a bare boot.
//   memory     the VMM's memory beyond guest RAM: the RSS of a kept guest's QEMU minus its guest memory
//              (a shared memfd, counted as RssShmem), from /proc/PID/status; split into anonymous memory
//              (under TCG mostly the translation cache) and file pages (the kernel image QEMU keeps mapped).

import ArgumentParser
import Catalog
import Foundation
import Runner
import Support
#if canImport(Glibc)
import Glibc
#endif

struct GuestBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "guest", abstract: "Image build time, vm run wall time against a bare QEMU boot, VMM memory.")
    @OptionGroup var catalog: CatalogOption
    @Option(help: "The image to boot.") var image = "minimal"
    @Option(help: "The recipe to build (default: Images/IMAGE.toml next to the current directory).") var recipe: String?
    @Option(help: "Runs of each measurement.") var runs = 5
    @Flag(help: "Skip the build measurement.") var noBuild = false
    @Flag(help: "JSON output.") var json = false

    func run() throws {
        try reporting {
            guard runs >= 1 else { throw ValidationError("--runs must be at least 1") }
            let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
            let cat = try catalog.open()
            var env = ProcessInfo.processInfo.environment
            env["SLURM_VM_CATALOG"] = cat.root
            var results: [String: Any] = ["image": image, "runs": runs]
            var lines: [String] = []

            if !noBuild {
                let r = recipe ?? "Images/\(image).toml"
                var times: [Double] = []
                for i in 0..<runs {
                    let scratch = cat.root + "/tmp/bench-build-\(getpid())-\(i)"
                    defer { Files.remove(scratch) }
                    var e = env; e["SLURM_VM_CATALOG"] = scratch
                    let (t, st, err) = timed(exe, ["image", "build", r], env: e)
                    guard st == 0 else { throw RunnerError.invalidRequest("image build \(r) failed: \(err)") }
                    times.append(t)
                }
                results["build_s"] = median(times)
                lines.append(
                    String(format: "image build %@           median %.2f s  (min %.2f, max %.2f)", r, median(times), times.min()!, times.max()!))
            }

            // The run, and its bare-QEMU baseline, interleaved so both see the same machine.
            let rec = try cat.resolve(try ImageReference(image))
            let records = try GuestRecords()
            let hv = try QEMUBackend(kernelCache: records.cacheDir, stateDir: records.root)
            let mem = rec.minMemoryMB
            let allowed = CPUList.callerAffinity().cpus
            var runTimes: [Double] = [], bareTimes: [Double] = []
            for i in 0..<runs {
                let (t, st, err) = timed(exe, ["vm", "run", "--image", image, "--", "true"], env: env)
                guard st == 0 else { throw RunnerError.invalidRequest("vm run failed: \(err)") }
                runTimes.append(t)
                let dir = records.dir("bench-bare-\(getpid())-\(i)")
                try Files.mkdirs(dir)
                defer { Files.remove(dir) }
                let spec = GuestSpec(
                    id: "bench-bare", kernel: cat.blobs.path(of: rec.artefact("kernel")!.digest), kernelDigest: rec.artefact("kernel")!.digest,
                    initrd: rec.artefact("initrd").map { cat.blobs.path(of: $0.digest) }, cmdline: rec.cmdline + " slurmvm.bootonly=1",
                    vcpus: 1, memoryMB: mem, cpus: [allowed[0]], housekeeping: [allowed.last!], agent: false, runDir: dir)
                let cmd = hv.unmanagedCommand(spec)
                let (bt, bst, berr) = timed(cmd[0], Array(cmd.dropFirst()), env: env)
                guard bst == 0 else { throw RunnerError.invalidRequest("bare QEMU boot failed: \(berr)") }
                bareTimes.append(bt)
            }
            let ratio = median(runTimes) / median(bareTimes)
            results["vm_run_true_s"] = median(runTimes)
            results["bare_qemu_boot_s"] = median(bareTimes)
            results["run_over_bare"] = ratio
            lines.append(
                String(
                    format: "vm run --image %@ -- true   median %.2f s  (min %.2f, max %.2f)", image, median(runTimes), runTimes.min()!,
                    runTimes.max()!))
            lines.append(
                String(
                    format: "bare QEMU boot, same image     median %.2f s  (min %.2f, max %.2f)", median(bareTimes), bareTimes.min()!,
                    bareTimes.max()!))
            lines.append(String(format: "ratio run / bare boot          %.2f×  (accelerator %@)", ratio, hv.accelerator.rawValue))

            // Memory of a kept guest's VMM beyond its guest RAM.
            var beyond: [Double] = [], anon: [Double] = [], file: [Double] = []
            for _ in 0..<runs {
                let (_, st, out) = timedOut(exe, ["vm", "run", "--image", image, "--keep"], env: env)
                guard st == 0 else { throw RunnerError.invalidRequest("vm run --keep failed") }
                let id = out.trimmingCharacters(in: .whitespacesAndNewlines)
                defer { _ = timed(exe, ["vm", "stop", id], env: env) }
                guard let r = records.load(id), let m = memory(r.pid) else { continue }
                beyond.append(Double(m["VmRSS"]! - m["RssShmem"]!) / 1024)
                anon.append(Double(m["RssAnon"]!) / 1024)
                file.append(Double(m["RssFile"]!) / 1024)
            }
            if !beyond.isEmpty {
                results["vmm_rss_beyond_guest_mib"] = median(beyond)
                results["vmm_anon_mib"] = median(anon)
                results["vmm_file_mib"] = median(file)
                lines.append(
                    String(
                        format: "VMM memory beyond guest RAM    median %.1f MiB RSS (%.1f anonymous, %.1f file-backed); guest RAM %d MiB",
                        median(beyond), median(anon), median(file), mem))
            }
            if json { print(jsonString(results)) } else { print(lines.joined(separator: "\n")) }
        }
    }

    func median(_ v: [Double]) -> Double {
        let s = v.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    func timed(_ exe: String, _ args: [String], env: [String: String]) -> (Double, Int32, String) {
        let (t, st, _, err) = spawn(exe, args, env: env)
        return (t, st, err)
    }

    func timedOut(_ exe: String, _ args: [String], env: [String: String]) -> (Double, Int32, String) {
        let (t, st, out, _) = spawn(exe, args, env: env)
        return (t, st, out)
    }

    func spawn(_ exe: String, _ args: [String], env: [String: String]) -> (Double, Int32, String, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        p.environment = env
        let o = Pipe(), e = Pipe()
        p.standardOutput = o; p.standardError = e
        let start = Date()
        do { try p.run() } catch { return (0, 127, "", "\(error)") }
        final class Box: @unchecked Sendable { var d = Data() }
        let eb = Box()
        let t = Thread { eb.d = e.fileHandleForReading.readDataToEndOfFile() }
        t.start()
        let od = o.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let el = Date().timeIntervalSince(start)
        while !t.isFinished { usleep(1000) }
        return (el, p.terminationStatus, String(decoding: od, as: UTF8.self), String(decoding: eb.d, as: UTF8.self))
    }

    /// kB values of /proc/PID/status (VmRSS, RssAnon, RssFile, RssShmem).
    func memory(_ pid: Int32) -> [String: Int]? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        var m: [String: Int] = [:]
        for line in s.split(separator: "\n") {
            let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if parts.count >= 2, parts[0].hasSuffix(":"), let v = Int(parts[1]) { m[String(parts[0].dropLast())] = v }
        }
        return ["VmRSS", "RssAnon", "RssFile", "RssShmem"].allSatisfy { m[$0] != nil } ? m : nil
    }
}
