// The boot GDT and the long-mode register state the Linux 64-bit boot protocol expects at entry:
// flat 64-bit code at selector 0x10, flat data at 0x18, paging on over an identity map.

import CKVM

public enum GDT {
    public static let codeSelector: UInt16 = 0x10
    public static let dataSelector: UInt16 = 0x18
    public static let tssSelector: UInt16 = 0x20

    /// null, null, code64, data, TSS (as the Linux boot protocol documents the layout).
    public static let entries: [UInt64] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff, 0x0080_8b00_0000_ffff]

    /// The kvm_segment an entry describes (KVM wants the unpacked form as well as the table in memory).
    static func segment(_ e: UInt64, selector: UInt16) -> kvm_segment {
        var s = kvm_segment()
        s.base = ((e >> 16) & 0xff_ffff) | (((e >> 56) & 0xff) << 24)
        let limit = UInt32(e & 0xffff) | UInt32((e >> 32) & 0xf_0000)
        s.g = UInt8((e >> 55) & 1)
        s.limit = s.g == 1 ? (limit << 12) | 0xfff : limit
        s.selector = selector
        s.type = UInt8((e >> 40) & 0xf)
        s.s = UInt8((e >> 44) & 1)
        s.dpl = UInt8((e >> 45) & 3)
        s.present = UInt8((e >> 47) & 1)
        s.avl = UInt8((e >> 52) & 1)
        s.l = UInt8((e >> 53) & 1)
        s.db = UInt8((e >> 54) & 1)
        return s
    }

    /// Writes the GDT, an empty IDT and the page tables, and sets the vCPU's system registers.
    static func enterLongMode(_ s: inout kvm_sregs, memory: GuestMemory) throws {
        for (i, e) in entries.enumerated() { try memory.write(e, at: Layout.gdt + UInt64(i * 8)) }
        try memory.write(UInt64(0), at: Layout.idt)
        try PageTables.identityMap(memory)

        let code = segment(entries[2], selector: codeSelector)
        let data = segment(entries[3], selector: dataSelector)
        var tss = segment(entries[4], selector: tssSelector)
        tss.type = 0xb  // busy 64-bit TSS, as KVM requires of TR
        s.cs = code
        s.ds = data; s.es = data; s.fs = data; s.gs = data; s.ss = data
        s.tr = tss
        s.gdt.base = Layout.gdt
        s.gdt.limit = UInt16(entries.count * 8 - 1)
        s.idt.base = Layout.idt
        s.idt.limit = 7
        s.cr0 = 0x8005_0033  // PG, AM, WP, NE, ET, MP, PE
        s.cr3 = Layout.pml4
        s.cr4 = 0x20  // PAE
        s.efer = 0x500  // LME | LMA
    }
}

public enum PageTables {
    /// The first 4 GiB mapped 1:1 with 2 MiB pages.
    static func identityMap(_ memory: GuestMemory) throws {
        try memory.write(Layout.pdpt | 0x3, at: Layout.pml4)  // present, writable
        for i in 0..<4 {
            let pd = Layout.pageDirectories + UInt64(i) * 0x1000
            try memory.write(pd | 0x3, at: Layout.pdpt + UInt64(i * 8))
            for j in 0..<512 {
                let phys = (UInt64(i) << 30) | (UInt64(j) << 21)
                try memory.write(phys | 0x83, at: pd + UInt64(j * 8))  // present, writable, 2 MiB
            }
        }
    }
}
