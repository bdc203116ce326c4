#include "ckvm.h"
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define RET(x)                                                                                                         \
    do {                                                                                                               \
        long _r = (x);                                                                                                 \
        return _r < 0 ? -errno : (int)_r;                                                                              \
    } while (0)

int ckvm_open(void) { RET(open("/dev/kvm", O_RDWR | O_CLOEXEC)); }
int ckvm_api_version(int kvm) { RET(ioctl(kvm, KVM_GET_API_VERSION, 0)); }
int ckvm_check_extension(int fd, int cap) { RET(ioctl(fd, KVM_CHECK_EXTENSION, cap)); }
int ckvm_create_vm(int kvm) { RET(ioctl(kvm, KVM_CREATE_VM, 0)); }
int ckvm_vcpu_mmap_size(int kvm) { RET(ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0)); }

int ckvm_set_tss_addr(int vm, uint64_t addr) { RET(ioctl(vm, KVM_SET_TSS_ADDR, (unsigned long)addr)); }
int ckvm_set_identity_map_addr(int vm, uint64_t addr)
{
    __u64 a = addr;
    RET(ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &a));
}
int ckvm_create_irqchip(int vm) { RET(ioctl(vm, KVM_CREATE_IRQCHIP, 0)); }
int ckvm_create_pit2(int vm)
{
    struct kvm_pit_config c;
    memset(&c, 0, sizeof c);
    RET(ioctl(vm, KVM_CREATE_PIT2, &c));
}
int ckvm_set_memory(int vm, uint32_t slot, uint64_t guest_phys, uint64_t size, void *host)
{
    struct kvm_userspace_memory_region r = {.slot = slot,
                                            .flags = 0,
                                            .guest_phys_addr = guest_phys,
                                            .memory_size = size,
                                            .userspace_addr = (__u64)(uintptr_t)host};
    RET(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r));
}
int ckvm_irq_line(int vm, uint32_t irq, int level)
{
    struct kvm_irq_level l = {.irq = irq, .level = (__u32)level};
    RET(ioctl(vm, KVM_IRQ_LINE, &l));
}

int ckvm_ioeventfd(int vm, uint64_t addr, uint32_t len, uint64_t datamatch, int fd, int deassign)
{
    struct kvm_ioeventfd e = {.datamatch = datamatch, .addr = addr, .len = len, .fd = fd};
    e.flags = KVM_IOEVENTFD_FLAG_DATAMATCH | (deassign ? KVM_IOEVENTFD_FLAG_DEASSIGN : 0);
    RET(ioctl(vm, KVM_IOEVENTFD, &e));
}

int ckvm_irqfd(int vm, uint32_t gsi, int fd, int deassign)
{
    struct kvm_irqfd f = {.fd = (__u32)fd, .gsi = gsi, .flags = deassign ? KVM_IRQFD_FLAG_DEASSIGN : 0};
    RET(ioctl(vm, KVM_IRQFD, &f));
}

int ckvm_create_vcpu(int vm, int id) { RET(ioctl(vm, KVM_CREATE_VCPU, (unsigned long)id)); }
struct kvm_run *ckvm_map_run(int vcpu, int size)
{
    void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    return p == MAP_FAILED ? NULL : (struct kvm_run *)p;
}
int ckvm_unmap_run(struct kvm_run *run, int size) { RET(munmap(run, (size_t)size)); }
int ckvm_run(int vcpu) { RET(ioctl(vcpu, KVM_RUN, 0)); }
void ckvm_set_immediate_exit(struct kvm_run *run, int value)
{
    __atomic_store_n(&run->immediate_exit, (__u8)value, __ATOMIC_SEQ_CST);
}

int ckvm_get_regs(int vcpu, struct kvm_regs *r) { RET(ioctl(vcpu, KVM_GET_REGS, r)); }
int ckvm_set_regs(int vcpu, const struct kvm_regs *r) { RET(ioctl(vcpu, KVM_SET_REGS, r)); }
int ckvm_get_sregs(int vcpu, struct kvm_sregs *s) { RET(ioctl(vcpu, KVM_GET_SREGS, s)); }
int ckvm_set_sregs(int vcpu, const struct kvm_sregs *s) { RET(ioctl(vcpu, KVM_SET_SREGS, s)); }
int ckvm_set_fpu(int vcpu, const struct kvm_fpu *f) { RET(ioctl(vcpu, KVM_SET_FPU, f)); }

int ckvm_get_supported_cpuid(int kvm, struct kvm_cpuid_entry2 *out, int cap)
{
    size_t sz = sizeof(struct kvm_cpuid2) + (size_t)cap * sizeof(struct kvm_cpuid_entry2);
    struct kvm_cpuid2 *c = calloc(1, sz);
    if (!c) return -ENOMEM;
    c->nent = (__u32)cap;
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, c) < 0) {
        int e = errno;
        free(c);
        return -e;
    }
    int n = (int)c->nent;
    memcpy(out, c->entries, (size_t)n * sizeof *out);
    free(c);
    return n;
}
int ckvm_set_cpuid(int vcpu, const struct kvm_cpuid_entry2 *entries, int n)
{
    size_t sz = sizeof(struct kvm_cpuid2) + (size_t)n * sizeof(struct kvm_cpuid_entry2);
    struct kvm_cpuid2 *c = calloc(1, sz);
    if (!c) return -ENOMEM;
    c->nent = (__u32)n;
    memcpy(c->entries, entries, (size_t)n * sizeof *entries);
    int r = ioctl(vcpu, KVM_SET_CPUID2, c);
    int e = errno;
    free(c);
    return r < 0 ? -e : 0;
}
int ckvm_set_msrs(int vcpu, const uint32_t *index, const uint64_t *value, int n)
{
    size_t sz = sizeof(struct kvm_msrs) + (size_t)n * sizeof(struct kvm_msr_entry);
    struct kvm_msrs *m = calloc(1, sz);
    if (!m) return -ENOMEM;
    m->nmsrs = (__u32)n;
    for (int i = 0; i < n; i++) {
        m->entries[i].index = index[i];
        m->entries[i].data = value[i];
    }
    int r = ioctl(vcpu, KVM_SET_MSRS, m);
    int e = errno;
    free(m);
    return r < 0 ? -e : r;
}

// Local APIC register offsets and LVT delivery modes (Intel SDM vol. 3, 10.5.1).
#define APIC_LVT0        0x350
#define APIC_LVT1        0x360
#define APIC_MODE_NMI    0x4
#define APIC_MODE_EXTINT 0x7
static uint32_t lapic_get(const struct kvm_lapic_state *s, int reg)
{
    uint32_t v;
    memcpy(&v, s->regs + reg, 4);
    return v;
}
static void lapic_set(struct kvm_lapic_state *s, int reg, uint32_t v) { memcpy(s->regs + reg, &v, 4); }
int ckvm_setup_lapic_lints(int vcpu)
{
    struct kvm_lapic_state s;
    if (ioctl(vcpu, KVM_GET_LAPIC, &s) < 0) return -errno;
    uint32_t l0 = lapic_get(&s, APIC_LVT0), l1 = lapic_get(&s, APIC_LVT1);
    lapic_set(&s, APIC_LVT0, (l0 & ~0x700u) | (APIC_MODE_EXTINT << 8));
    lapic_set(&s, APIC_LVT1, (l1 & ~0x700u) | (APIC_MODE_NMI << 8));
    RET(ioctl(vcpu, KVM_SET_LAPIC, &s));
}
int ckvm_get_mp_state(int vcpu, uint32_t *state)
{
    struct kvm_mp_state m;
    if (ioctl(vcpu, KVM_GET_MP_STATE, &m) < 0) return -errno;
    *state = m.mp_state;
    return 0;
}

void ckvm_exit_info(const struct kvm_run *run, ckvm_exit *o)
{
    memset(o, 0, sizeof *o);
    o->reason = run->exit_reason;
    switch (run->exit_reason) {
    case KVM_EXIT_IO:
        o->io_direction = run->io.direction;
        o->io_size = run->io.size;
        o->io_port = run->io.port;
        o->io_count = run->io.count;
        o->io_data_offset = run->io.data_offset;
        break;
    case KVM_EXIT_MMIO:
        o->mmio_address = run->mmio.phys_addr;
        o->mmio_length = run->mmio.len;
        o->mmio_is_write = run->mmio.is_write;
        break;
    case KVM_EXIT_SYSTEM_EVENT: o->event_type = run->system_event.type; break;
    case KVM_EXIT_INTERNAL_ERROR:
        o->suberror = run->internal.suberror;
        if (o->suberror == KVM_INTERNAL_ERROR_EMULATION &&
            (run->emulation_failure.flags & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)) {
            o->insn_size = run->emulation_failure.insn_size > 15 ? 15 : run->emulation_failure.insn_size;
            memcpy(o->insn_bytes, run->emulation_failure.insn_bytes, o->insn_size);
        }
        break;
    case KVM_EXIT_FAIL_ENTRY: o->hardware_reason = run->fail_entry.hardware_entry_failure_reason; break;
    }
}
uint8_t *ckvm_mmio_data(struct kvm_run *run) { return run->mmio.data; }
