// One KVM VM: its file descriptor, the in-kernel interrupt controllers (and the PIT, when asked for),
// memory slots, IRQ lines.

import CKVM
#if canImport(Glibc)
import Glibc
#endif

public final class VM: @unchecked Sendable {
    public let kvm: KVM
    public let fd: Int32
    private var nextSlot: UInt32 = 0

    /// Creates the VM and, in the order KVM requires before any vCPU exists, the TSS and identity-map
    /// pages, the IOAPIC/PIC pair and, with `pit`, the 8254. Our hardware-reduced ACPI tables make Linux
    /// leave the 8254 alone (its timers are the local APIC's and kvm-clock), and an in-kernel PIT costs
    /// every VM a kernel thread and about 13 ms of SRCU grace periods when the VM is destroyed, which
    /// the process's exit waits for; only a guest booted without ACPI (`acpi=off`) needs it.
    public init(kvm: KVM, pit: Bool = false) throws {
        self.kvm = kvm
        let f = ckvm_create_vm(kvm.fd)
        guard f >= 0 else { throw VMMError.errno("KVM_CREATE_VM", f) }
        fd = f
        do {
            try check(ckvm_set_tss_addr(f, Layout.tssAddress), "KVM_SET_TSS_ADDR")
            try check(ckvm_set_identity_map_addr(f, Layout.identityMapAddress), "KVM_SET_IDENTITY_MAP_ADDR")
            try check(ckvm_create_irqchip(f), "KVM_CREATE_IRQCHIP")
            if pit { try check(ckvm_create_pit2(f), "KVM_CREATE_PIT2") }
        } catch { close(f); throw error }
    }

    deinit { close(fd) }

    /// Maps `size` bytes of host memory at guest physical `gpa`.
    public func map(gpa: UInt64, size: UInt64, host: UnsafeMutableRawPointer) throws {
        try check(ckvm_set_memory(fd, nextSlot, gpa, size, host), "KVM_SET_USER_MEMORY_REGION (slot \(nextSlot), \(size >> 20) MiB at \(hex(gpa)))")
        nextSlot += 1
    }

    /// Sets the level of an interrupt line of the in-kernel PIC/IOAPIC.
    public func irqLine(_ irq: UInt32, _ level: Bool) {
        _ = ckvm_irq_line(fd, irq, level ? 1 : 0)
    }

    /// Has KVM signal `fd` itself when the guest writes the 4-byte `value` at MMIO `address` (a virtio
    /// queue notify), so a kick reaches a vhost-user backend without an exit to the VMM.
    public func ioeventfd(address: UInt64, value: UInt32, fd: Int32) throws {
        try check(ckvm_ioeventfd(self.fd, address, 4, UInt64(value), fd, 0), "KVM_IOEVENTFD at \(hex(address))")
    }

    /// Has a write to `fd` pulse GSI `gsi` inside KVM (an edge), so a vhost-user backend interrupts
    /// the guest without the VMM.
    public func irqfd(gsi: UInt32, fd: Int32) throws {
        try check(ckvm_irqfd(self.fd, gsi, fd, 0), "KVM_IRQFD for GSI \(gsi)")
    }

    /// A rising edge for an edge-triggered ISA line: lower, then raise (the line stays high until the next).
    public func edge(_ irq: UInt32) {
        irqLine(irq, false)
        irqLine(irq, true)
    }
}

func hex<T: BinaryInteger>(_ v: T) -> String { "0x" + String(v, radix: 16) }
func hex2(_ b: UInt8) -> String { b < 16 ? "0" + String(b, radix: 16) : String(b, radix: 16) }
