// What the host can do, decided once: hardware virtualization (vmx/svm, and /dev/kvm usable) picks KVM,
// else QEMU's TCG; the TSC frequency a TCG guest must be told, because under emulation the kernel's
// own calibration against the PIT fails often enough to hang boot.

import CLinux
import Foundation
#if canImport(Glibc)
import Glibc
#endif

public enum Accelerator: String, Sendable, Codable { case kvm, tcg }

public enum HostFacts {
    /// vmx or svm in /proc/cpuinfo. (This project's machines expose a PVM /dev/kvm without either: a
    /// stock Linux guest cannot reach user space there, so they use TCG.)
    public static var hasHardwareVirtualization: Bool {
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
            let flags = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") })
        else { return false }
        let set = Set(flags.split(separator: " "))
        return set.contains("vmx") || set.contains("svm")
    }

    public static var kvmUsable: Bool { access("/dev/kvm", R_OK | W_OK) == 0 }

    /// The accelerator to use and a sentence saying why.
    public static func chooseAccelerator(forced: Accelerator? = nil) -> (Accelerator, String) {
        if let forced { return (forced, "\(forced.rawValue) (requested)") }
        if hasHardwareVirtualization && kvmUsable { return (.kvm, "kvm (hardware virtualization present)") }
        if hasHardwareVirtualization { return (.tcg, "tcg (vmx/svm present but /dev/kvm is not usable by this user)") }
        return (.tcg, "tcg (no vmx/svm on this host; guests are emulated)")
    }

    /// The TSC rate in kHz, measured against CLOCK_MONOTONIC_RAW over 50 ms (cached per boot of the host).
    public static func tscKHz(cacheDir: String?) -> UInt64 {
        let bootID =
            (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? "unknown"
        let cache = cacheDir.map { "\($0)/tsc-khz" }
        if let cache, let s = try? String(contentsOfFile: cache, encoding: .utf8) {
            let parts = s.split(separator: " ")
            if parts.count == 2, parts[0] == bootID, let v = UInt64(parts[1].trimmingCharacters(in: .whitespacesAndNewlines)) { return v }
        }
        func now() -> UInt64 {
            var ts = timespec(); clock_gettime(CLOCK_MONOTONIC_RAW, &ts); return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
        }
        let t0 = now(), c0 = clinux_rdtsc()
        usleep(50_000)
        let t1 = now(), c1 = clinux_rdtsc()
        guard c1 > c0, t1 > t0 else { return 0 }
        let khz = (c1 - c0) * 1_000_000 / (t1 - t0)
        if let cache { try? Data("\(bootID) \(khz)\n".utf8).write(to: URL(fileURLWithPath: cache), options: .atomic) }
        return khz
    }

    /// Free pages in the 2 MiB hugetlb pool.
    public static var freeHugepages2M: Int {
        let t = try? String(contentsOfFile: "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", encoding: .utf8)
        return Int(t?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
    }

    /// An executable on PATH (or an absolute path that is executable).
    public static func which(_ name: String) -> String? {
        if name.hasPrefix("/") { return access(name, X_OK) == 0 ? name : nil }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for d in path.split(separator: ":") where access("\(d)/\(name)", X_OK) == 0 { return "\(d)/\(name)" }
        return nil
    }
}
