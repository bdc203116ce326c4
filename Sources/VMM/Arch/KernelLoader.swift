// Loading a kernel image into guest memory: an ELF64 `vmlinux` (its PT_LOAD segments at their physical
// addresses, entry at e_entry) or a bzImage (the protected-mode part at pref_address, the 64-bit entry
// 0x200 past it, the setup header kept for the zero page). Both are parsed defensively: every offset
// and size from the file is checked against the file and against guest RAM.

public struct LoadedKernel {
    public var entry: UInt64
    /// The end of the highest byte loaded.
    public var end: UInt64
    /// The bzImage's setup header bytes (0x1f1 up to 0x202 + byte[0x201]); nil for an ELF.
    public var setupHeader: [UInt8]?
    public var format: String
}

public enum KernelLoader {
    public static func load(_ image: [UInt8], into memory: GuestMemory) throws -> LoadedKernel {
        if image.count >= 64, image[0] == 0x7f, image[1] == 0x45, image[2] == 0x4c, image[3] == 0x46 { return try loadELF(image, memory) }
        if image.count >= 0x260, image[0x202] == 0x48, image[0x203] == 0x64, image[0x204] == 0x72, image[0x205] == 0x53 {
            return try loadBzImage(image, memory)
        }
        throw VMMError.kernel("the kernel is neither an ELF vmlinux nor a bzImage")
    }

    static func le<T: FixedWidthInteger>(_ b: [UInt8], _ off: Int, _: T.Type) throws -> T {
        let n = MemoryLayout<T>.size
        guard off >= 0, n <= b.count, off <= b.count - n else {
            throw VMMError.kernel("the kernel image is truncated (a field at \(off) lies past its end)")
        }
        var v: T = 0
        for i in 0..<n { v |= T(b[off + i]) << (8 * i) }
        return v
    }

    static func loadELF(_ b: [UInt8], _ memory: GuestMemory) throws -> LoadedKernel {
        guard b[4] == 2, b[5] == 1 else { throw VMMError.kernel("the ELF kernel is not 64-bit little-endian") }
        guard try le(b, 18, UInt16.self) == 0x3e else { throw VMMError.kernel("the ELF kernel is not for x86-64") }
        let entry = try le(b, 24, UInt64.self)
        let phoff = Int(clamping: try le(b, 32, UInt64.self))
        let phentsize = Int(try le(b, 54, UInt16.self)), phnum = Int(try le(b, 56, UInt16.self))
        guard phentsize >= 56, phnum > 0, phnum < 256, phoff <= b.count else { throw VMMError.kernel("the ELF kernel has no usable program headers") }
        var end: UInt64 = 0, loaded = 0
        for i in 0..<phnum {
            let h = phoff + i * phentsize
            guard try le(b, h, UInt32.self) == 1 else { continue }  // PT_LOAD
            let off = Int(clamping: try le(b, h + 8, UInt64.self))
            let paddr = try le(b, h + 24, UInt64.self)
            let filesz = Int(clamping: try le(b, h + 32, UInt64.self))
            let memsz = try le(b, h + 40, UInt64.self)
            guard off <= b.count, filesz <= b.count - off, UInt64(filesz) <= memsz else {
                throw VMMError.kernel("ELF segment \(i) lies outside the file")
            }
            guard paddr >= Layout.highMemory else {
                throw VMMError.kernel("ELF segment \(i) loads at \(hex(paddr)), inside the boot area below 1 MiB")
            }
            guard let dst = try? memory.slice(paddr, Int(clamping: memsz)) else {
                throw VMMError.kernel(
                    "the kernel's segment at \(hex(paddr)) (\(memsz) bytes) does not fit in \(memory.size >> 20) MiB of guest memory; give the guest more"
                )
            }
            b.withUnsafeBytes { src in dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[off..<(off + filesz)])) }
            if memsz > UInt64(filesz) { UnsafeMutableRawBufferPointer(rebasing: dst[filesz...]).initializeMemory(as: UInt8.self, repeating: 0) }
            end = max(end, paddr + memsz)
            loaded += 1
        }
        guard loaded > 0 else { throw VMMError.kernel("the ELF kernel has no loadable segment") }
        guard entry >= Layout.highMemory, entry < end else {
            throw VMMError.kernel("the ELF kernel's entry \(hex(entry)) is not in a loaded segment")
        }
        return LoadedKernel(entry: entry, end: end, setupHeader: nil, format: "ELF")
    }

    static func loadBzImage(_ b: [UInt8], _ memory: GuestMemory) throws -> LoadedKernel {
        let version = try le(b, 0x206, UInt16.self)
        guard version >= 0x020c else {
            throw VMMError.kernel("the bzImage speaks boot protocol \(version >> 8).\(version & 0xff); 2.12 or later is needed for a 64-bit entry")
        }
        let xloadflags = try le(b, 0x236, UInt16.self)
        guard xloadflags & 1 != 0 else { throw VMMError.kernel("the bzImage has no 64-bit entry point (XLF_KERNEL_64 unset)") }
        var setupSects = Int(b[0x1f1])
        if setupSects == 0 { setupSects = 4 }
        let pm = (setupSects + 1) * 512
        guard pm < b.count else { throw VMMError.kernel("the bzImage is truncated: no protected-mode code after its \(setupSects) setup sectors") }
        let headerEnd = 0x202 + Int(b[0x201])
        guard headerEnd <= b.count, headerEnd <= 0x280 else { throw VMMError.kernel("the bzImage's setup header is malformed") }
        let pref = try le(b, 0x258, UInt64.self)
        let load = pref >= Layout.highMemory ? pref : Layout.kernelLoad
        let initSize = UInt64(try le(b, 0x260, UInt32.self))
        let payload = b.count - pm
        // init_size is what the kernel needs in place while it decompresses itself.
        guard let dst = try? memory.slice(load, Int(max(UInt64(payload), initSize))) else {
            throw VMMError.kernel(
                "the kernel needs \(max(UInt64(payload), initSize) >> 20) MiB at \(hex(load)), more than \(memory.size >> 20) MiB of guest memory holds; give the guest more"
            )
        }
        b.withUnsafeBytes { src in dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[pm...])) }
        return LoadedKernel(
            entry: load + 0x200, end: load + max(UInt64(payload), initSize), setupHeader: Array(b[0x1f1..<headerEnd]), format: "bzImage")
    }

    /// Places the initramfs page-aligned at the top of RAM below `limit`, above the kernel.
    public static func placeInitrd(_ data: [UInt8], memory: GuestMemory, kernelEnd: UInt64, limit: UInt64) throws -> (UInt64, UInt64) {
        let top = min(memory.size, limit + 1)
        let size = UInt64(data.count)
        guard size < top, (top - size) & ~0xfff > kernelEnd else {
            throw VMMError.kernel("the initramfs (\(size >> 20) MiB) does not fit in guest memory above the kernel; give the guest more memory")
        }
        let addr = (top - size) & ~0xfff
        try memory.write(data, at: addr)
        return (addr, size)
    }
}
