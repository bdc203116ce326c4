// Booting a bzImage under QEMU spends a large share of an emulated boot decompressing the kernel and
// running its real-mode setup. QEMU boots an uncompressed vmlinux with a PVH note directly, so for an
// LZ4 bzImage (Debian's cloud kernel) the runner unpacks the payload once, keyed by the kernel's
// digest, and boots that. Anything else (XZ payloads, no PVH note) boots as the bzImage it is.

import CLZ4
import Foundation
import Support
#if canImport(Glibc)
import Glibc
#endif

enum DirectKernel {
    /// The vmlinux to boot for `kernel` (a verified blob named by `digest`), or nil to boot it as is.
    static func vmlinux(for kernel: String, digest: String?, cacheDir: String?) -> String? {
        guard let digest, let cacheDir else { return nil }
        let hex = digest.hasPrefix("sha256:") ? String(digest.dropFirst(7)) : digest
        let path = "\(cacheDir)/vmlinux-\(hex)"
        let stampPath = path + ".stamp"
        // The unpacked kernel is ours (written read-only, renamed into place). It is trusted while its
        // identity (device, inode, size, times) is the one recorded when we wrote it, and unpacked
        // again otherwise; that saves hashing 50 MB on every boot. The blob it comes from is verified
        // at every boot.
        if let stamp = try? String(contentsOfFile: stampPath, encoding: .utf8), stamp == identity(path) {
            return path
        }
        guard let data = FileManager.default.contents(atPath: kernel), let elf = unpack(bzImage: [UInt8](data)),
            hasPVHNote(elf)
        else { return nil }
        do {
            try Files.mkdirs(cacheDir)
            let d = Data(elf)
            try Files.writeAtomically(d, to: path, mode: 0o444)
            try Files.writeAtomically(Data(identity(path).utf8), to: stampPath)
            return path
        } catch { return nil }
    }

    static func identity(_ path: String) -> String {
        var st = stat()
        guard stat(path, &st) == 0 else { return "" }
        return "\(st.st_dev) \(st.st_ino) \(st.st_size) \(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec) \(st.st_ctim.tv_sec).\(st.st_ctim.tv_nsec)"
    }

    /// The LZ4-compressed payload of a bzImage, decompressed; nil if it is not one.
    static func unpack(bzImage b: [UInt8]) -> [UInt8]? {
        guard b.count > 0x250, b[0x202] == 0x48, b[0x203] == 0x64, b[0x204] == 0x72, b[0x205] == 0x53 else { return nil }  // "HdrS"
        let setupSects = Int(b[0x1f1] == 0 ? 4 : b[0x1f1])
        let pmStart = (setupSects + 1) * 512
        let off = Int(b.readLE32(at: 0x248)), len = Int(b.readLE32(at: 0x24c))
        guard pmStart + off + len <= b.count else { return nil }
        let payload = Array(b[(pmStart + off)..<(pmStart + off + len)])
        let out = lz4LegacyDecode(payload)
        guard let out, out.count > 4, out[0] == 0x7f, out[1] == 0x45, out[2] == 0x4c, out[3] == 0x46 else { return nil }
        return out
    }

    static let legacyMagic: UInt32 = 0x184C_2102

    /// LZ4 "legacy" framing, as the kernel's build writes it: magic, then (u32 size, block) pairs of up to
    /// 8 MiB decompressed each; a trailing 4-byte length may follow.
    static func lz4LegacyDecode(_ p: [UInt8]) -> [UInt8]? {
        guard p.count >= 8, p.readLE32(at: 0) == legacyMagic else { return nil }
        var i = 4
        var out = [UInt8]()
        let blockMax = 8 << 20
        var block = [UInt8](repeating: 0, count: blockMax)
        while p.count - i >= 4 {
            let csize = Int(p.readLE32(at: i))
            if UInt32(csize) == legacyMagic { i += 4; continue }
            guard csize > 0, p.count - i - 4 >= csize else { break }
            let n = p.withUnsafeBufferPointer { src in
                block.withUnsafeMutableBufferPointer { dst in
                    src.baseAddress!.advanced(by: i + 4).withMemoryRebound(to: CChar.self, capacity: csize) { s in
                        dst.baseAddress!.withMemoryRebound(to: CChar.self, capacity: blockMax) { d in
                            LZ4_decompress_safe(s, d, Int32(csize), Int32(blockMax))
                        }
                    }
                }
            }
            guard n >= 0 else { return nil }
            out += block[0..<Int(n)]
            i += 4 + csize
        }
        return out.isEmpty ? nil : out
    }

    /// Whether a 64-bit ELF carries the Xen/PVH entry note (type 18, name "Xen") that QEMU needs.
    static func hasPVHNote(_ e: [UInt8]) -> Bool {
        guard e.count > 64, e[4] == 2 else { return false }
        func u16(_ o: Int) -> Int { Int(e[o]) | Int(e[o + 1]) << 8 }
        func u64(_ o: Int) -> Int { Int(e.readLE32(at: o)) | Int(e.readLE32(at: o + 4)) << 32 }
        let phoff = u64(0x20), phentsize = u16(0x36), phnum = u16(0x38)
        for k in 0..<phnum {
            let ph = phoff + k * phentsize
            guard ph + 56 <= e.count, e.readLE32(at: ph) == 4 else { continue }  // PT_NOTE
            var o = u64(ph + 8)
            let end = o + u64(ph + 32)
            while o + 12 <= end && end <= e.count {
                let namesz = Int(e.readLE32(at: o)), descsz = Int(e.readLE32(at: o + 4)), type = e.readLE32(at: o + 8)
                let name = o + 12
                if type == 18 && namesz >= 3 && e[name] == 0x58 && e[name + 1] == 0x65 && e[name + 2] == 0x6e { return true }
                o = name + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
            }
        }
        return false
    }
}
