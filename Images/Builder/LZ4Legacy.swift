// LZ4 in the kernel's "legacy" framing (what `lz4 -l` writes and the kernel's initramfs unpacker
// reads): a magic number, then blocks of up to 8 MiB, each as a 32-bit compressed size and the block.
// High-compression mode: the archive is written once and unpacked at every boot.

import CLZ4
import Foundation

enum LZ4Legacy {
    static let magic: UInt32 = 0x184C_2102
    static let blockSize = 8 << 20

    static func compress(_ input: Data) -> Data {
        var out = Data()
        func le(_ v: UInt32) { out.append(contentsOf: [UInt8(v & 0xff), UInt8(v >> 8 & 0xff), UInt8(v >> 16 & 0xff), UInt8(v >> 24)]) }
        le(magic)
        let bytes = [UInt8](input)
        let bound = Int(LZ4_compressBound(Int32(blockSize)))
        var dst = [CChar](repeating: 0, count: bound)
        var off = 0
        while off < bytes.count {
            let n = min(blockSize, bytes.count - off)
            let c = bytes.withUnsafeBufferPointer { src in
                src.baseAddress!.advanced(by: off).withMemoryRebound(to: CChar.self, capacity: n) { s in
                    LZ4_compress_HC(s, &dst, Int32(n), Int32(bound), LZ4HC_CLEVEL_DEFAULT)
                }
            }
            le(UInt32(c))
            dst.withUnsafeBytes { out.append(contentsOf: $0.prefix(Int(c))) }
            off += n
        }
        return out
    }
}
