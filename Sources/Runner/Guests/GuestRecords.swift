// Guests on this host, as files: one directory per guest under the run root (default
// /run/slurm-vm/guests for root, else $XDG_RUNTIME_DIR/slurm-vm/guests), holding its sockets, console
// log and guest.json. A record whose VMM process is gone (or was recycled) is stale and is removed.

import Foundation
import Support
#if canImport(Glibc)
import Glibc
#endif

public struct GuestRecord: Codable, Sendable {
    public var spec: GuestSpec
    public var backend: String
    public var pid: Int32
    public var pidStart: Int64
    public var vcpuThreads: [Int32]
    public var image: String?
    public var imageDigest: String?
    public var started: Date
    public var owner: UInt32
    public var ready: GuestInfo?

    public init(
        spec: GuestSpec, backend: String, pid: Int32, pidStart: Int64, vcpuThreads: [Int32], image: String?,
        imageDigest: String?, started: Date, owner: UInt32, ready: GuestInfo?
    ) {
        self.spec = spec; self.backend = backend; self.pid = pid; self.pidStart = pidStart; self.vcpuThreads = vcpuThreads
        self.image = image; self.imageDigest = imageDigest; self.started = started; self.owner = owner; self.ready = ready
    }

    public var alive: Bool { ProcessIdentity.isAlive(pid: pid, start: pidStart) }
}

public struct GuestRecords: Sendable {
    public let root: String

    public static var defaultRoot: String {
        let env = ProcessInfo.processInfo.environment
        if let r = env["SLURM_VM_RUNDIR"] { return r }
        if getuid() == 0 { return "/run/slurm-vm" }
        if let x = env["XDG_RUNTIME_DIR"] { return x + "/slurm-vm" }
        return "/tmp/slurm-vm-\(getuid())"
    }

    public init(root: String = GuestRecords.defaultRoot) throws {
        self.root = root
        try Files.mkdirs(root + "/guests", mode: 0o755)
    }

    public var cacheDir: String { root + "/cache" }

    public func dir(_ id: String) -> String { root + "/guests/" + id }

    /// A fresh guest id: prefix-NNNN, unused.
    public func newID(prefix: String) -> String {
        while true {
            let id = "\(prefix)-\(String(UInt32.random(in: 0...0xffff_ffff), radix: 16))"
            if !Files.exists(dir(id)) { return id }
        }
    }

    public func save(_ r: GuestRecord) throws {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        e.dateEncodingStrategy = .iso8601
        try Files.writeAtomically(try e.encode(r), to: dir(r.spec.id) + "/guest.json", mode: 0o644)
    }

    public func load(_ id: String) -> GuestRecord? {
        guard let d = FileManager.default.contents(atPath: dir(id) + "/guest.json") else { return nil }
        let dec = JSONDecoder()
        dec.dateDecodingStrategy = .iso8601
        return try? dec.decode(GuestRecord.self, from: d)
    }

    /// Live guests; stale directories (their VMM is gone) are removed on the way.
    public func live() -> [GuestRecord] {
        let ids = ((try? FileManager.default.contentsOfDirectory(atPath: root + "/guests")) ?? []).sorted()
        var out: [GuestRecord] = []
        // Dot entries are not guests: `.vmm-uids` holds the running VMMs' uid locks (HostIdentity.swift).
        for id in ids where !id.hasPrefix(".") {
            if let r = load(id) {
                if r.alive { out.append(r) } else { Files.remove(dir(id)) }
            } else if let a = try? FileManager.default.attributesOfItem(atPath: dir(id)),
                let m = a[.modificationDate] as? Date, Date().timeIntervalSince(m) > 60
            {
                Files.remove(dir(id))  // a guest that never got as far as its record
            }
        }
        return out
    }
}
