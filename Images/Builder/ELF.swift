// Just enough ELF64 (little-endian) to describe an image: a shared object's SONAME, a kernel module's
// .modinfo (its name and dependencies). Every offset is bounds-checked: the files come from packages.

struct ELFFile {
    let b: [UInt8]
    struct Section { let name: String; let type: UInt32; let offset: Int; let size: Int; let link: Int }
    let sections: [Section]

    init?(_ bytes: [UInt8]) {
        b = bytes
        guard b.count >= 64, b[0] == 0x7f, b[1] == 0x45, b[2] == 0x4c, b[3] == 0x46, b[4] == 2, b[5] == 1 else { return nil }
        func u16(_ o: Int) -> Int { Int(bytes[o]) | Int(bytes[o + 1]) << 8 }
        func u32(_ o: Int) -> Int { u16(o) | u16(o + 2) << 16 }
        func u64(_ o: Int) -> Int { u32(o) | u32(o + 4) << 32 }
        let shoff = u64(0x28), shentsize = u16(0x3a), shnum = u16(0x3c), shstrndx = u16(0x3e)
        guard shoff > 0, shentsize >= 64, shnum > 0, shnum < 65536, shoff + shnum * shentsize <= b.count, shstrndx < shnum else { return nil }
        var raw: [(Int, UInt32, Int, Int, Int)] = []
        for i in 0..<shnum {
            let h = shoff + i * shentsize
            raw.append((u32(h), UInt32(u32(h + 4)), u64(h + 0x18), u64(h + 0x20), u32(h + 0x28)))
        }
        let strtab = raw[shstrndx]
        guard strtab.2 >= 0, strtab.2 + strtab.3 <= b.count else { return nil }
        func cstr(_ base: Int, _ end: Int, _ off: Int) -> String {
            var i = base + off
            guard i >= base, i < end else { return "" }
            var out: [UInt8] = []
            while i < end && bytes[i] != 0 { out.append(bytes[i]); i += 1 }
            return String(decoding: out, as: UTF8.self)
        }
        sections = raw.map { r in
            Section(name: cstr(strtab.2, strtab.2 + strtab.3, r.0), type: r.1, offset: r.2, size: r.3, link: r.4)
        }
    }

    func data(_ s: Section) -> ArraySlice<UInt8>? {
        guard s.type != 8, s.offset >= 0, s.size >= 0, s.offset + s.size <= b.count else { return nil }  // 8: NOBITS
        return b[s.offset..<(s.offset + s.size)]
    }

    /// DT_SONAME of a shared object.
    var soname: String? {
        guard let dyn = sections.first(where: { $0.type == 6 }), let d = data(dyn),  // SHT_DYNAMIC
            dyn.link < sections.count, let strs = data(sections[dyn.link])
        else { return nil }
        let base = d.startIndex
        var i = 0
        while base + i + 16 <= d.endIndex {
            var tag = 0, val = 0
            for k in 0..<8 { tag |= Int(d[base + i + k]) << (8 * k); val |= Int(d[base + i + 8 + k]) << (8 * k) }
            if tag == 0 { break }
            if tag == 14 {  // DT_SONAME
                var j = strs.startIndex + val
                var out: [UInt8] = []
                while j >= strs.startIndex && j < strs.endIndex && strs[j] != 0 { out.append(strs[j]); j += 1 }
                return out.isEmpty ? nil : String(decoding: out, as: UTF8.self)
            }
            i += 16
        }
        return nil
    }

    /// key=value strings of a kernel module's .modinfo section.
    var modinfo: [(String, String)] {
        guard let s = sections.first(where: { $0.name == ".modinfo" }), let d = data(s) else { return [] }
        return d.split(separator: 0).compactMap { kv in
            guard let eq = kv.firstIndex(of: UInt8(ascii: "=")) else { return nil }
            return (String(decoding: kv[kv.startIndex..<eq], as: UTF8.self), String(decoding: kv[(eq + 1)...], as: UTF8.self))
        }
    }
}
