// The node-local image cache: blobs by SHA-256 under <cache>/blobs/sha256, image records under
// <cache>/images. A missing blob is fetched from the catalog role over TCP into a temporary file,
// verified against its digest and only then renamed into place, so a partial or corrupt transfer is
// never visible. (The tree broadcast that replaces one fetch per node comes later.)
//
// The fetch protocol, one request per connection:
//   client: "GET sha256:<hex>\n" (a blob) or "RECORD sha256:<hex> [NAME:VERSION]\n" (an image record, JSON)
//   server: "OK <size>\n" then exactly <size> bytes, or "ERR <message>\n"

import Catalog
import Foundation
#if canImport(Glibc)
import Glibc
#endif

public struct CacheError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

public struct ImageCache: Sendable {
    public let root: String
    public let blobs: BlobStore
    /// host:port of the catalog role's blob service.
    public let source: String
    public let timeout: TimeInterval

    public init(root: String, source: String, timeout: TimeInterval = 60) throws {
        self.root = root
        self.source = source
        self.timeout = timeout
        blobs = try BlobStore(root: root)
        try Files.mkdirs(root + "/images")
    }

    /// The image record and every artefact present and verified in the cache.
    public func ensure(image digest: String, label: String? = nil) throws -> ImageRecord {
        let rec = try record(digest, label: label)
        for a in rec.artefacts {
            if blobs.has(a.digest) {
                do { try blobs.verify(a.digest); continue } catch { blobs.remove(a.digest) }   // damaged: fetch again
            }
            try fetchBlob(a.digest, size: a.size)
        }
        return rec
    }

    func record(_ digest: String, label: String?) throws -> ImageRecord {
        let name = digest.replacingOccurrences(of: ":", with: "-") + (label.map { "-" + $0.replacingOccurrences(of: ":", with: "-") } ?? "")
        let path = root + "/images/" + name + ".json"
        if let d = FileManager.default.contents(atPath: path), let r = try? JSONDecoder.iso.decode(ImageRecord.self, from: d), r.digest == digest {
            return r
        }
        let data = try BlobWire.fetch("RECORD \(digest)" + (label.map { " " + $0 } ?? ""), from: source, timeout: timeout)
        let r: ImageRecord
        do { r = try JSONDecoder.iso.decode(ImageRecord.self, from: data) } catch {
            throw CacheError("the catalog at \(source) sent an unreadable record for \(digest): \(error)")
        }
        // The record's digest is a hash of its artefacts and command line: check it, as for blobs.
        guard r.digest == digest, ImageRecord.manifestDigest(r.artefacts, cmdline: r.cmdline) == digest else {
            throw CacheError("the catalog at \(source) sent a record that does not match \(digest)")
        }
        try Files.writeAtomically(data, to: path)
        return r
    }

    func fetchBlob(_ digest: String, size: Int64) throws {
        let staged = "\(root)/tmp/fetch-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        defer { unlink(staged) }
        try BlobWire.fetch("GET \(digest)", from: source, timeout: timeout, into: staged, expect: size)
        let (got, _) = try blobs.ingest(staged, move: true)
        guard got == digest else {
            blobs.remove(got)
            throw CacheError("blob \(digest) from \(source) arrived corrupted (its bytes hash to \(got)); nothing was cached")
        }
    }
}

extension JSONDecoder {
    /// Image records travel with ISO 8601 dates (the blob service and the node cache agree on this).
    public static var iso: JSONDecoder { let d = JSONDecoder(); d.dateDecodingStrategy = .iso8601; return d }
}

extension JSONEncoder {
    public static var iso: JSONEncoder { let e = JSONEncoder(); e.dateEncodingStrategy = .iso8601; e.outputFormatting = [.sortedKeys]; return e }
}

public enum BlobWire {
    /// Connects to host:port with a timeout on every read and write.
    public static func connect(_ address: String, timeout: TimeInterval) throws -> Int32 {
        guard let colon = address.lastIndex(of: ":"), let port = UInt16(address[address.index(after: colon)...]) else {
            throw CacheError("'\(address)' is not HOST:PORT")
        }
        let host = String(address[..<colon])
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &res) == 0, let first = res else {
            throw CacheError("cannot resolve \(host)")
        }
        defer { freeaddrinfo(res) }
        var lastError = ""
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            let fd = socket(a.pointee.ai_family, a.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), a.pointee.ai_protocol)
            if fd >= 0 {
                setTimeouts(fd, timeout)
                if Glibc.connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 { return fd }
                lastError = String(cString: strerror(errno))
                close(fd)
            }
            ai = a.pointee.ai_next
        }
        throw CacheError("cannot connect to the catalog at \(address): \(lastError)")
    }

    public static func setTimeouts(_ fd: Int32, _ t: TimeInterval) {
        var tv = timeval(tv_sec: Int(t), tv_usec: Int((t - t.rounded(.down)) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    public static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = send(fd, bytes.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL))
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            off += n
        }
        return true
    }

    public static func writeAll(_ fd: Int32, _ s: String) -> Bool {
        Array(s.utf8).withUnsafeBytes { writeAll(fd, $0) }
    }

    /// Reads one "\n"-terminated line (at most 4 KiB) byte by byte, so nothing after it is consumed.
    public static func readLine(_ fd: Int32) -> String? {
        var line = [UInt8]()
        var c: UInt8 = 0
        while line.count < 4096 {
            let n = read(fd, &c, 1)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return nil }
            if c == 10 { return String(decoding: line, as: UTF8.self) }
            line.append(c)
        }
        return nil
    }

    /// Sends a request and reads the reply's header: the size that follows.
    static func request(_ req: String, _ fd: Int32, from: String) throws -> Int64 {
        guard writeAll(fd, req + "\n") else { throw CacheError("cannot send to the catalog at \(from): \(String(cString: strerror(errno)))") }
        guard let head = readLine(fd) else { throw CacheError("the catalog at \(from) closed the connection or timed out") }
        if head.hasPrefix("ERR ") { throw CacheError("the catalog at \(from): \(head.dropFirst(4))") }
        guard head.hasPrefix("OK "), let size = Int64(head.dropFirst(3)), size >= 0 else {
            throw CacheError("the catalog at \(from) sent '\(head.prefix(80))', not OK SIZE")
        }
        return size
    }

    /// A small reply, in memory.
    public static func fetch(_ req: String, from: String, timeout: TimeInterval) throws -> Data {
        let fd = try connect(from, timeout: timeout)
        defer { close(fd) }
        let size = try request(req, fd, from: from)
        guard size <= 64 << 20 else { throw CacheError("the catalog at \(from) announced \(size) bytes for '\(req)'") }
        var data = Data(count: Int(size))
        var off = 0
        let ok = data.withUnsafeMutableBytes { p -> Bool in
            while off < Int(size) {
                let n = read(fd, p.baseAddress! + off, Int(size) - off)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return false }
                off += n
            }
            return true
        }
        guard ok else { throw CacheError("the catalog at \(from) stopped after \(off) of \(size) bytes") }
        return data
    }

    /// A blob, streamed into a new file `path`; `expect` is the size the record gives.
    public static func fetch(_ req: String, from: String, timeout: TimeInterval, into path: String, expect: Int64) throws {
        let fd = try connect(from, timeout: timeout)
        defer { close(fd) }
        let size = try request(req, fd, from: from)
        guard size == expect else { throw CacheError("the catalog at \(from) offers \(size) bytes for '\(req)', the record says \(expect)") }
        let out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard out >= 0 else { throw CacheError("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(out) }
        let cap = 1 << 20
        let buf = UnsafeMutableRawPointer.allocate(byteCount: cap, alignment: 16)
        defer { buf.deallocate() }
        var got: Int64 = 0
        while got < size {
            let n = read(fd, buf, Int(min(Int64(cap), size - got)))
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { throw CacheError("the transfer of '\(req)' from \(from) stopped after \(got) of \(size) bytes") }
            var off = 0
            while off < n {
                let w = write(out, buf + off, n - off)
                if w < 0 && errno == EINTR { continue }
                if w <= 0 { throw CacheError("cannot write \(path) (is the node cache's disk full?): \(String(cString: strerror(errno)))") }
                off += w
            }
            got += Int64(n)
        }
        guard fsync(out) == 0 else { throw CacheError("cannot sync \(path): \(String(cString: strerror(errno)))") }
    }
}
