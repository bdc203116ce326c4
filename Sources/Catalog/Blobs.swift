// Content-addressed blobs: blobs/sha256/<hex>, read-only, written by temporary file + rename so a
// blob is either whole and correct or absent. The same bytes are stored once whatever refers to them.

import Foundation
import Support
#if canImport(Glibc)
import Glibc
#endif

public struct BlobStore: Sendable {
    public let root: String
    var tmp: String { root + "/tmp" }

    public init(root: String) throws {
        self.root = root
        try Files.mkdirs(root + "/blobs/sha256")
        try Files.mkdirs(tmp, mode: 0o700)
    }

    /// "sha256:<hex>" → its path (whether or not it exists).
    public func path(of digest: String) -> String {
        root + "/blobs/sha256/" + Self.hex(digest)
    }

    static func hex(_ digest: String) -> String {
        digest.hasPrefix("sha256:") ? String(digest.dropFirst(7)) : digest
    }

    public func has(_ digest: String) -> Bool { Files.exists(path(of: digest)) }

    /// Copies a file into the store (or moves it, when it is ours to take and on the same file system).
    /// Returns its digest and size.
    public func ingest(_ source: String, move: Bool = false) throws -> (digest: String, size: Int64) {
        let staged = "\(tmp)/ingest-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        defer { unlink(staged) }
        if move, rename(source, staged) == 0 {
            // taken over without copying
        } else {
            try copy(source, to: staged)
        }
        let (hex, size) = try Files.sha256(of: staged)
        let digest = "sha256:" + hex
        let dest = path(of: digest)
        if Files.exists(dest) { return (digest, size) }
        let fd = open(staged, O_RDONLY | O_CLOEXEC)
        if fd >= 0 { fsync(fd); close(fd) }
        chmod(staged, 0o444)
        guard rename(staged, dest) == 0 else { throw FileError.errno("cannot store blob", dest) }
        Files.syncDirectory((dest as NSString).deletingLastPathComponent)
        return (digest, size)
    }

    func copy(_ src: String, to dst: String) throws {
        let i = open(src, O_RDONLY | O_CLOEXEC)
        guard i >= 0 else { throw FileError.errno("cannot open", src) }
        defer { close(i) }
        let o = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard o >= 0 else { throw FileError.errno("cannot create", dst) }
        defer { close(o) }
        let cap = 1 << 20
        let buf = UnsafeMutableRawPointer.allocate(byteCount: cap, alignment: 16)
        defer { buf.deallocate() }
        while true {
            let n = read(i, buf, cap)
            if n < 0 { if errno == EINTR { continue }; throw FileError.errno("cannot read", src) }
            if n == 0 { break }
            var off = 0
            while off < n {
                let w = write(o, buf + off, n - off)
                if w < 0 {
                    if errno == EINTR { continue }
                    throw FileError.errno("cannot write (is the catalog's disk full?)", dst)
                }
                off += w
            }
        }
    }

    /// Re-hashes a blob; throws if it is missing or its bytes no longer match its name.
    public func verify(_ digest: String) throws {
        let p = path(of: digest)
        guard Files.exists(p) else { throw CatalogError.blobMissing(digest: digest, path: p) }
        let (hex, _) = try Files.sha256(of: p)
        guard "sha256:" + hex == digest else { throw CatalogError.blobCorrupt(digest: digest, path: p, actual: "sha256:" + hex) }
    }

    /// Every blob digest present on disk.
    public func all() -> [String] {
        let dir = root + "/blobs/sha256"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.filter { $0.count == 64 }.map { "sha256:" + $0 }.sorted()
    }

    public func size(of digest: String) -> Int64 {
        var st = stat()
        return stat(path(of: digest), &st) == 0 ? Int64(st.st_size) : 0
    }

    public func remove(_ digest: String) { unlink(path(of: digest)) }

    /// Removes staging files left by a process that died mid-import.
    public func cleanStaging(olderThan seconds: TimeInterval = 3600) {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: tmp)) ?? []
        for n in names {
            let p = tmp + "/" + n
            if let a = try? FileManager.default.attributesOfItem(atPath: p), let m = a[.modificationDate] as? Date,
                Date().timeIntervalSince(m) > seconds
            {
                Files.remove(p)
            }
        }
    }
}
