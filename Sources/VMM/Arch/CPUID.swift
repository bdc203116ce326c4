// What each vCPU's CPUID says: KVM's supported set, with this vCPU's APIC id (leaf 1 EBX[31:24], leaves
// 0xB and 0x1F EDX), the hypervisor bit, and a flat topology of one core per vCPU — a space-shared
// guest owns whole cores.

import CKVM

public enum CPUID {
    public static func entries(for vcpu: Int, of count: Int, supported: [kvm_cpuid_entry2]) -> [kvm_cpuid_entry2] {
        supported.map { e in
            var e = e
            switch e.function {
            case 1:
                e.ebx = (e.ebx & 0x0000_ffff) | (UInt32(vcpu) << 24) | (UInt32(min(count, 255)) << 16)
                e.ecx |= 1 << 31  // running under a hypervisor
                if count > 1 { e.edx |= 1 << 28 }  // HTT: the count above is meaningful
            case 0xb, 0x1f:
                e.edx = UInt32(vcpu)
                // Level 0 (SMT): one thread per core; level 1 (core): `count` cores.
                if e.index == 0 {
                    e.eax = 0; e.ebx = 1; e.ecx = (e.ecx & ~0xff00) | (1 << 8)
                } else if e.index == 1 {
                    e.eax = UInt32(bitWidth(count)); e.ebx = UInt32(count); e.ecx = (e.ecx & ~0xff00) | (2 << 8) | 1
                }
            case 4:
                e.eax = (e.eax & 0x03ff_ffff) | (UInt32(max(count, 1) - 1) << 26)
            case 6:
                e.ecx &= ~UInt32(1 << 3)  // no energy-performance bias MSR
            case 10:
                e.eax = 0  // no performance monitoring
            default: break
            }
            return e
        }
    }

    static func bitWidth(_ n: Int) -> Int { n <= 1 ? 0 : Int.bitWidth - (n - 1).leadingZeroBitCount }
}

/// The model-specific registers a vCPU starts with.
public enum MSRs {
    public static func boot() -> [(UInt32, UInt64)] {
        [
            (0x174, 0), (0x175, 0), (0x176, 0),  // SYSENTER_CS/ESP/EIP
            (0xc000_0081, 0), (0xc000_0082, 0), (0xc000_0083, 0), (0xc000_0084, 0),  // STAR, LSTAR, CSTAR, SFMASK
            (0xc000_0102, 0),  // KERNEL_GS_BASE
            (0x10, 0),  // TSC
            (0x1a0, 1),
        ]  // MISC_ENABLE: fast strings
    }
}
