// The KVM system handle: /dev/kvm, its API version and what it supports. Everything in VState is a thin
// wrapper over one kind of KVM file descriptor (system, VM, vCPU) or guest memory; policy lives elsewhere.

import CKVM
#if canImport(Glibc)
import Glibc
#endif

public struct VMMError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }

    static func errno(_ what: String, _ code: Int32) -> VMMError {
        VMMError("\(what): \(String(cString: strerror(-code)))")
    }
}

/// Throws unless a CKVM call succeeded; returns its value.
@discardableResult
func check(_ r: Int32, _ what: @autoclosure () -> String) throws -> Int32 {
    guard r >= 0 else { throw VMMError.errno(what(), r) }
    return r
}

public final class KVM: @unchecked Sendable {
    public let fd: Int32
    public let runSize: Int

    public init() throws {
        let f = ckvm_open()
        guard f >= 0 else {
            throw VMMError(f == -ENOENT ? "/dev/kvm does not exist: this host offers no KVM (use --backend qemu)"
                           : "cannot open /dev/kvm: \(String(cString: strerror(-f))) (run as root or a member of group kvm)")
        }
        fd = f
        let v = ckvm_api_version(f)
        guard v == 12 else { close(f); throw VMMError("/dev/kvm speaks API version \(v), not 12") }
        let s = ckvm_vcpu_mmap_size(f)
        guard s > 0 else { close(f); throw VMMError.errno("KVM_GET_VCPU_MMAP_SIZE", s) }
        runSize = Int(s)
        for (cap, name) in [(KVM_CAP_IRQCHIP, "IRQCHIP"), (KVM_CAP_USER_MEMORY, "USER_MEMORY"), (KVM_CAP_SET_TSS_ADDR, "SET_TSS_ADDR"),
                            (KVM_CAP_EXT_CPUID, "EXT_CPUID"), (KVM_CAP_PIT2, "PIT2"), (KVM_CAP_IMMEDIATE_EXIT, "IMMEDIATE_EXIT")] {
            guard ckvm_check_extension(f, Int32(cap)) > 0 else { close(f); throw VMMError("this KVM lacks KVM_CAP_\(name), which the embedded VMM needs") }
        }
    }

    deinit { close(fd) }

    /// KVM_GET_SUPPORTED_CPUID: what the host's KVM can offer a guest.
    public func supportedCPUID() throws -> [kvm_cpuid_entry2] {
        var cap = 128
        while true {
            var out = [kvm_cpuid_entry2](repeating: kvm_cpuid_entry2(), count: cap)
            let n = out.withUnsafeMutableBufferPointer { ckvm_get_supported_cpuid(fd, $0.baseAddress, Int32(cap)) }
            if n == -E2BIG && cap < 4096 { cap *= 2; continue }
            try check(n, "KVM_GET_SUPPORTED_CPUID")
            return Array(out.prefix(Int(n)))
        }
    }
}
