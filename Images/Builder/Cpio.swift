// A "newc" cpio archive, the format the kernel unpacks as initramfs, written deterministically: entries
// in byte order of their paths, owner root, one fixed mtime, inode numbers by position. Equal trees give
// equal archives whoever builds them and whenever.

import Foundation

struct CpioWriter {
    private(set) var data = Data()
    private var ino: UInt32 = 1
    let mtime: UInt32

    init(mtime: UInt32) { self.mtime = mtime }

    enum Kind { case directory, file([UInt8]), symlink(String) }

    mutating func add(path: String, mode: UInt32, kind: Kind) {
        let (typeBits, body, nlink): (UInt32, [UInt8], UInt32) = {
            switch kind {
            case .directory: return (0o040000, [], 2)
            case .file(let b): return (0o100000, b, 1)
            case .symlink(let t): return (0o120000, Array(t.utf8), 1)
            }
        }()
        let name = Array(path.utf8) + [0]
        var h = "070701"
        for v in [ino, typeBits | (mode & 0o7777), 0, 0, nlink, mtime, UInt32(body.count), 0, 0, 0, 0, UInt32(name.count), 0] {
            h += String(format: "%08X", v)
        }
        ino += 1
        data.append(contentsOf: Array(h.utf8))
        data.append(contentsOf: name)
        pad()
        data.append(contentsOf: body)
        pad()
    }

    private mutating func pad() { while data.count % 4 != 0 { data.append(0) } }

    mutating func finish() -> Data {
        add(path: "TRAILER!!!", mode: 0, kind: .file([]))
        // The kernel reads archives in 512-byte blocks; pad as cpio(1) does.
        while data.count % 512 != 0 { data.append(0) }
        return data
    }

    /// The archive of a directory tree (the tree's root becomes "/"), all entries sorted by path.
    static func archive(tree root: String, mtime: UInt32) throws -> Data {
        var entries: [(String, Kind, UInt32)] = []
        func walk(_ rel: String) throws {
            let full = rel.isEmpty ? root : root + "/" + rel
            let names = try FileManager.default.contentsOfDirectory(atPath: full).sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
            for n in names {
                let r = rel.isEmpty ? n : rel + "/" + n
                let p = root + "/" + r
                var st = stat()
                guard lstat(p, &st) == 0 else { throw BuildError("cannot stat \(p)") }
                let mode = UInt32(st.st_mode) & 0o7777
                switch st.st_mode & S_IFMT {
                case S_IFDIR: entries.append((r, .directory, mode)); try walk(r)
                case S_IFLNK:
                    let t = try FileManager.default.destinationOfSymbolicLink(atPath: p)
                    entries.append((r, .symlink(t), 0o777))
                case S_IFREG:
                    guard let d = FileManager.default.contents(atPath: p) else { throw BuildError("cannot read \(p)") }
                    entries.append((r, .file([UInt8](d)), mode))
                default: break  // device nodes, fifos, sockets: devtmpfs provides devices at boot
                }
            }
        }
        try walk("")
        var w = CpioWriter(mtime: mtime)
        for (p, k, m) in entries.sorted(by: { Array($0.0.utf8).lexicographicallyPrecedes(Array($1.0.utf8)) }) {
            w.add(path: p, mode: m, kind: k)
        }
        return w.finish()
    }
}
