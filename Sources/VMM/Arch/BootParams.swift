// The zero page (Linux's struct boot_params, Documentation/arch/x86/boot.rst and zero-page.rst): the
// setup header, the command line pointer, the initramfs and the e820 memory map.

public struct E820Entry: Equatable, Sendable {
    public var address: UInt64
    public var size: UInt64
    public var type: UInt32  // 1 RAM, 2 reserved
    public static let ram: UInt32 = 1, reserved: UInt32 = 2
}

public struct BootParams {
    /// Field offsets within the zero page.
    enum Offset {
        static let acpiRSDP = 0x070
        static let extRamdiskImage = 0x0c0, extRamdiskSize = 0x0c4, extCmdLinePtr = 0x0c8
        static let e820Entries = 0x1e8
        static let setupHeader = 0x1f1
        static let bootFlag = 0x1fe, header = 0x202, version = 0x206
        static let typeOfLoader = 0x210, loadflags = 0x211
        static let ramdiskImage = 0x218, ramdiskSize = 0x21c
        static let heapEndPtr = 0x224, cmdLinePtr = 0x228, initrdAddrMax = 0x22c
        static let kernelAlignment = 0x230, cmdlineSize = 0x238
        static let e820Table = 0x2d0
    }
    static let maxE820 = 128

    public var page = [UInt8](repeating: 0, count: 4096)

    /// The memory map of a guest with `ram` bytes below the 32-bit hole.
    public static func e820(ram: UInt64) -> [E820Entry] {
        [
            E820Entry(address: 0, size: Layout.ebdaStart, type: E820Entry.ram),
            E820Entry(address: Layout.ebdaStart, size: Layout.highMemory - Layout.ebdaStart, type: E820Entry.reserved),
            E820Entry(address: Layout.highMemory, size: ram - Layout.highMemory, type: E820Entry.ram),
        ]
    }

    mutating func put<T: FixedWidthInteger>(_ v: T, _ off: Int) {
        withUnsafeBytes(of: v.littleEndian) { b in for (i, x) in b.enumerated() { page[off + i] = x } }
    }

    func get<T: FixedWidthInteger>(_: T.Type, _ off: Int) -> T {
        var v: T = 0
        withUnsafeMutableBytes(of: &v) { b in for i in 0..<b.count { b[i] = page[off + i] } }
        return T(littleEndian: v)
    }

    /// A zero page for `kernel`: its own setup header when it is a bzImage, a minimal one for a vmlinux.
    public init(kernel: LoadedKernel, ram: UInt64, commandLine: UInt64, commandLineSize: Int, initrd: (UInt64, UInt64)?) {
        if let h = kernel.setupHeader {
            for (i, b) in h.enumerated() where Offset.setupHeader + i < 4096 { page[Offset.setupHeader + i] = b }
        } else {
            put(UInt16(0xaa55), Offset.bootFlag)
            put(UInt32(0x5372_6448), Offset.header)  // "HdrS"
            put(UInt16(0x020f), Offset.version)
            put(UInt32(0x0100_0000), Offset.kernelAlignment)
        }
        page[Offset.typeOfLoader] = 0xff  // undefined loader
        page[Offset.loadflags] |= 0x01 | 0x80  // LOADED_HIGH | CAN_USE_HEAP
        put(UInt16(0xfe00), Offset.heapEndPtr)
        put(UInt32(truncatingIfNeeded: commandLine), Offset.cmdLinePtr)
        put(UInt32(truncatingIfNeeded: commandLine >> 32), Offset.extCmdLinePtr)
        put(UInt32(commandLineSize), Offset.cmdlineSize)
        if let (addr, size) = initrd {
            put(UInt32(truncatingIfNeeded: addr), Offset.ramdiskImage)
            put(UInt32(truncatingIfNeeded: size), Offset.ramdiskSize)
            put(UInt32(truncatingIfNeeded: addr >> 32), Offset.extRamdiskImage)
            put(UInt32(truncatingIfNeeded: size >> 32), Offset.extRamdiskSize)
        }
        put(Layout.acpi, Offset.acpiRSDP)  // where the RSDP is (Linux also scans for it)
        let map = Self.e820(ram: ram)
        page[Offset.e820Entries] = UInt8(map.count)
        for (i, e) in map.enumerated() {
            let o = Offset.e820Table + i * 20
            put(e.address, o); put(e.size, o + 8); put(e.type, o + 16)
        }
    }

    /// The highest address an initramfs may end at (initrd_addr_max; 0 in an old header means 0x37ffffff).
    public var initrdAddressMax: UInt64 {
        let v = get(UInt32.self, Offset.initrdAddrMax)
        return v == 0 ? 0x37ff_ffff : UInt64(v)
    }
}
