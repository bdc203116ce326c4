// The KVM system handle: /dev/kvm, its API version and what it supports. Everything in VState is a thin
// wrapper over one kind of KVM file descriptor (system, VM, vCPU) or guest memory; policy lives elsewhere.

import CKVM
#if canImport(Glibc)
import Glibc
#endif

/// What can stop the embedded VMM, by kind; each message says what was wrong and, where it can,
/// what to do.
public enum VMMError: Error, CustomStringConvertible, Equatable {
    /// The machine asked for is not one this VMM builds (vCPUs, memory, host CPUs, command line, tables).
    case config(String)
    /// The kernel or initramfs cannot be loaded as given.
    case kernel(String)
    /// A guest-physical range that lies (partly) outside guest memory: a bounds check refused it.
    case outsideGuestMemory(gpa: UInt64, count: Int, size: UInt64)
    /// Guest memory could not be mapped or preallocated.
    case memory(String)
    /// KVM refused a call or lacks what the VMM needs.
    case kvm(String)
    /// A device could not be set up (port or PCI space, the disk, the agent socket).
    case device(String)
    /// The host refused a thread, a pipe or an affinity.
    case host(String)
    /// The guest's driver broke virtio's rules (a ring, a descriptor chain, a request): the device
    /// reports it and goes on refusing, never reading or writing outside guest memory.
    case virtqueue(String)

    public var description: String {
        switch self {
        case .config(let s), .kernel(let s), .memory(let s), .kvm(let s), .device(let s), .host(let s), .virtqueue(let s): return s
        case .outsideGuestMemory(let gpa, let count, let size):
            return "guest address range \(hex(gpa))+\(count) lies outside guest memory (\(size >> 20) MiB)"
        }
    }

    static func errno(_ what: String, _ code: Int32) -> VMMError {
        .kvm("\(what): \(String(cString: strerror(-code)))")
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

    /// Opens /dev/kvm, or takes `fd`, a descriptor of it the caller opened (a confined VMM has no right
    /// to open the device itself).
    public init(fd given: Int32? = nil) throws {
        let f = given ?? ckvm_open()
        guard f >= 0 else {
            throw VMMError.kvm(
                f == -ENOENT
                    ? "/dev/kvm does not exist: this host offers no KVM (use --backend qemu)"
                    : "cannot open /dev/kvm: \(String(cString: strerror(-f))) (run as root or a member of group kvm)")
        }
        fd = f
        let v = ckvm_api_version(f)
        guard v == 12 else { close(f); throw VMMError.kvm("/dev/kvm speaks API version \(v), not 12") }
        let s = ckvm_vcpu_mmap_size(f)
        guard s > 0 else { close(f); throw VMMError.errno("KVM_GET_VCPU_MMAP_SIZE", s) }
        runSize = Int(s)
        for (cap, name) in [
            (KVM_CAP_IRQCHIP, "IRQCHIP"), (KVM_CAP_USER_MEMORY, "USER_MEMORY"), (KVM_CAP_SET_TSS_ADDR, "SET_TSS_ADDR"),
            (KVM_CAP_EXT_CPUID, "EXT_CPUID"), (KVM_CAP_PIT2, "PIT2"), (KVM_CAP_IMMEDIATE_EXIT, "IMMEDIATE_EXIT"),
        ] {
            guard ckvm_check_extension(f, Int32(cap)) > 0 else {
                close(f); throw VMMError.kvm("this KVM lacks KVM_CAP_\(name), which the embedded VMM needs")
            }
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
