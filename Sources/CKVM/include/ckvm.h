// A thin C shim over <linux/kvm.h> for the embedded VMM: the ioctls as functions that return a value
// or -errno, and flat views of struct kvm_run's unions (which Swift does not import well). Policy,
// layout and devices are all in Swift (Sources/VMM).
#ifndef CKVM_H
#define CKVM_H
#include <stdint.h>
#include <linux/kvm.h>

int ckvm_open(void);
int ckvm_api_version(int kvm);
int ckvm_check_extension(int fd, int cap);
int ckvm_create_vm(int kvm);
int ckvm_vcpu_mmap_size(int kvm);

int ckvm_set_tss_addr(int vm, uint64_t addr);
int ckvm_set_identity_map_addr(int vm, uint64_t addr);
int ckvm_create_irqchip(int vm);
int ckvm_create_pit2(int vm);
int ckvm_set_memory(int vm, uint32_t slot, uint64_t guest_phys, uint64_t size, void *host);
/// Level of a GSI of the in-kernel IOAPIC/PIC.
int ckvm_irq_line(int vm, uint32_t irq, int level);
/// KVM_IOEVENTFD: a guest write of `len` bytes equal to `datamatch` at MMIO address `addr` signals the
/// eventfd `fd` inside KVM, without an exit to the VMM; `deassign` removes it.
int ckvm_ioeventfd(int vm, uint64_t addr, uint32_t len, uint64_t datamatch, int fd, int deassign);
/// KVM_IRQFD: a write to the eventfd `fd` pulses GSI `gsi` (an edge) inside KVM; `deassign` removes it.
int ckvm_irqfd(int vm, uint32_t gsi, int fd, int deassign);

int ckvm_create_vcpu(int vm, int id);
struct kvm_run *ckvm_map_run(int vcpu, int size);
int ckvm_unmap_run(struct kvm_run *run, int size);
/// KVM_RUN: 0, or -errno (-EINTR when a signal kicked the thread out).
int ckvm_run(int vcpu);
void ckvm_set_immediate_exit(struct kvm_run *run, int value);

int ckvm_get_regs(int vcpu, struct kvm_regs *r);
int ckvm_set_regs(int vcpu, const struct kvm_regs *r);
int ckvm_get_sregs(int vcpu, struct kvm_sregs *s);
int ckvm_set_sregs(int vcpu, const struct kvm_sregs *s);
int ckvm_set_fpu(int vcpu, const struct kvm_fpu *f);

/// Fills up to `cap` entries of KVM_GET_SUPPORTED_CPUID; returns the count or -errno.
int ckvm_get_supported_cpuid(int kvm, struct kvm_cpuid_entry2 *out, int cap);
int ckvm_set_cpuid(int vcpu, const struct kvm_cpuid_entry2 *entries, int n);
/// KVM_SET_MSRS; returns how many were set (fewer than n: entry [result] was refused) or -errno.
int ckvm_set_msrs(int vcpu, const uint32_t *index, const uint64_t *value, int n);
/// The local APIC's LINT0 as ExtINT and LINT1 as NMI, as a BIOS leaves them (the MP table says so).
int ckvm_setup_lapic_lints(int vcpu);
int ckvm_get_mp_state(int vcpu, uint32_t *state);

/// What one exit was about, flattened.
typedef struct {
    uint32_t reason;
    // KVM_EXIT_IO
    uint8_t io_direction; // KVM_EXIT_IO_IN / _OUT
    uint8_t io_size;      // 1, 2 or 4
    uint16_t io_port;
    uint32_t io_count;
    uint64_t io_data_offset;
    // KVM_EXIT_MMIO
    uint64_t mmio_address;
    uint32_t mmio_length;
    uint8_t mmio_is_write;
    // KVM_EXIT_SYSTEM_EVENT
    uint32_t event_type;
    // KVM_EXIT_INTERNAL_ERROR / KVM_EXIT_FAIL_ENTRY
    uint32_t suberror;
    uint64_t hardware_reason;
    // KVM_INTERNAL_ERROR_EMULATION: the bytes KVM fetched at rip, when it reports them (insn_size > 0)
    uint8_t insn_size;
    uint8_t insn_bytes[15];
} ckvm_exit;

void ckvm_exit_info(const struct kvm_run *run, ckvm_exit *out);
/// The MMIO data bytes (8) of the current exit, to read a write's value or fill a read's.
uint8_t *ckvm_mmio_data(struct kvm_run *run);

#endif
