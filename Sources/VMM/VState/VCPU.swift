// One vCPU: its KVM file descriptor, the shared kvm_run page, and register access. The run loop that
// dispatches its exits is in Machine.swift; here only the mechanics.

import CKVM
#if canImport(Glibc)
import Glibc
#endif

public final class VCPU: @unchecked Sendable {
    public let id: Int
    public let fd: Int32
    let run: UnsafeMutablePointer<kvm_run>
    let runSize: Int32

    public init(vm: VM, id: Int) throws {
        self.id = id
        let f = ckvm_create_vcpu(vm.fd, Int32(id))
        guard f >= 0 else { throw VMMError.errno("KVM_CREATE_VCPU \(id)", f) }
        fd = f
        runSize = Int32(vm.kvm.runSize)
        guard let r = ckvm_map_run(f, runSize) else { close(f); throw VMMError.kvm("cannot map vCPU \(id)'s kvm_run page") }
        run = r
    }

    deinit {
        _ = ckvm_unmap_run(run, runSize)
        close(fd)
    }

    public func regs() throws -> kvm_regs {
        var r = kvm_regs()
        try check(ckvm_get_regs(fd, &r), "KVM_GET_REGS")
        return r
    }

    public func setRegs(_ r: kvm_regs) throws {
        var r = r
        try check(ckvm_set_regs(fd, &r), "KVM_SET_REGS")
    }

    public func sregs() throws -> kvm_sregs {
        var s = kvm_sregs()
        try check(ckvm_get_sregs(fd, &s), "KVM_GET_SREGS")
        return s
    }

    public func setSregs(_ s: kvm_sregs) throws {
        var s = s
        try check(ckvm_set_sregs(fd, &s), "KVM_SET_SREGS")
    }

    public func setCPUID(_ entries: [kvm_cpuid_entry2]) throws {
        try entries.withUnsafeBufferPointer { try check(ckvm_set_cpuid(fd, $0.baseAddress, Int32($0.count)), "KVM_SET_CPUID2 on vCPU \(id)") }
    }

    /// Sets MSRs; KVM answers with how many it took, and one it refuses is named.
    public func setMSRs(_ msrs: [(UInt32, UInt64)]) throws {
        let idx = msrs.map(\.0), val = msrs.map(\.1)
        let n = try check(ckvm_set_msrs(fd, idx, val, Int32(msrs.count)), "KVM_SET_MSRS")
        guard Int(n) == msrs.count else { throw VMMError.kvm("KVM refused MSR \(hex(idx[Int(n)])) on vCPU \(id)") }
    }

    public func setupLocalInterrupts() throws {
        try check(ckvm_setup_lapic_lints(fd), "setting up the local APIC's LINT0/LINT1 on vCPU \(id)")
    }

    /// Enters the guest until the next exit. False when a signal interrupted it (see `kick`).
    public func enter() throws -> Bool {
        let r = ckvm_run(fd)
        if r == -EINTR || r == -EAGAIN { return false }
        try check(r, "KVM_RUN on vCPU \(id)")
        return true
    }

    public func exitInfo() -> ckvm_exit {
        var e = ckvm_exit()
        ckvm_exit_info(run, &e)
        return e
    }

    /// The bytes of a port-I/O exit's data, inside the kvm_run page.
    func ioData(_ e: ckvm_exit) -> UnsafeMutableRawBufferPointer {
        let base = UnsafeMutableRawPointer(run)
        let len = Int(e.io_size) * Int(e.io_count)
        guard e.io_data_offset + UInt64(len) <= UInt64(runSize) else { return UnsafeMutableRawBufferPointer(start: base, count: 0) }
        return UnsafeMutableRawBufferPointer(start: base + Int(e.io_data_offset), count: len)
    }

    func mmioData(_ e: ckvm_exit) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: ckvm_mmio_data(run), count: Int(min(e.mmio_length, 8)))
    }

    /// Makes the next (or the current) KVM_RUN return at once; with a signal, the thread leaves the guest.
    public func requestExit() { ckvm_set_immediate_exit(run, 1) }
}
