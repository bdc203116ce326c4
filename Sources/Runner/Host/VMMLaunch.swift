// What a guest's VMM process gets instead of privilege, the same for every backend: a uid of its own
// (VMMIdentity.swift) that owns its run directory and nothing else; the files it needs (the tap, the
// image's kernel, initramfs and disk, /dev/kvm) opened here and handed over as descriptors 3, 4, …;
// the virtio-fs sockets made connectable for it. Files it reopens by /dev/fd/N (QEMU) need only be
// readable themselves; the directories above them may stay closed to it.

import Foundation
import Support
#if canImport(Glibc)
import Glibc
#endif

struct VMMLaunch {
    let spec: GuestSpec
    /// nil: the VMM keeps the runner's identity (not root, or SLURM_VM_VMM_UIDS=off).
    let identity: HostIdentity?
    /// Descriptors for the VMM, in the order it gets them (3, 4, …); ours until closed.
    private(set) var held: [Int32] = []

    /// Takes the guest's uid and gives it the run directory (which must exist).
    init(_ spec: GuestSpec) throws {
        self.spec = spec
        identity = try VMMIdentities.range().map { try VMMIdentities.take(for: spec, in: $0) }
        if let id = identity, chown(spec.runDir, id.uid, id.gid) != 0 {
            let e = String(cString: strerror(errno))
            VMMIdentities.release(for: spec)
            throw RunnerError.spawn("cannot give guest \(spec.id)'s run directory to its VMM's uid \(id.uid): \(e)")
        }
    }

    /// The guest's tap, when it has one: always the first descriptor handed (3).
    mutating func handTap() throws -> Int32? {
        let tap = try FileServers.openTap(for: spec)
        guard tap >= 0 else { return nil }
        held.append(tap)
        return Int32(2 + held.count)
    }

    /// Opens `path` and returns the descriptor number the VMM will have it as.
    mutating func hand(_ path: String, _ flags: Int32, _ what: String) throws -> Int32 {
        let fd = open(path, flags | O_CLOEXEC)
        guard fd >= 0 else {
            throw RunnerError.bootFailed("cannot open \(what) \(path): \(String(cString: strerror(errno)))", consoleTail: "")
        }
        held.append(fd)
        return Int32(2 + held.count)
    }

    /// Starts the guest's file servers and lets the VMM's uid connect to their sockets.
    func startFileServers() throws {
        try FileServers.start(for: spec)
        for i in (spec.shares ?? []).indices {
            let sock = FileServers.socket(i, of: spec)
            if let id = identity, chown(sock, id.uid, id.gid) != 0 {
                throw RunnerError.spawn("cannot give virtio-fs socket \(sock) to the VMM's uid: \(String(cString: strerror(errno)))")
            }
        }
    }

    /// What a VMM running as its own uid sees of the node's files: its run directory (writable: its
    /// sockets, logs, report) and `devices`; a dynamically linked one (QEMU) also the distribution's
    /// read-only files (Jail.system). Everything else it gets as descriptors. nil when it keeps the
    /// runner's identity (a runner that is not root cannot build one).
    func jail(dynamic: Bool, devices: [String] = []) -> Jail? {
        guard identity != nil else { return nil }
        let own = [Jail.Path(spec.runDir, writable: true)] + devices.map { Jail.Path($0) }
        return dynamic ? .system(own) : Jail(paths: own)
    }

    /// Starts the VMM with the handed descriptors, in its run directory, as its uid, in `jail`;
    /// `groups`: the supplementary groups it needs (the KVM device's, for QEMU with KVM).
    func spawn(_ binary: String, _ args: [String], log: String, jail: Jail?, groups: [gid_t] = []) throws -> Int32 {
        let out = try FileServers.openLog(log, for: spec)
        defer { close(out) }
        var o = FileServers.options(for: spec)
        o.passFDs = held
        o.cwd = spec.runDir
        o.identity = identity
        o.jail = jail
        o.groups = groups
        o.stdout = out; o.stderr = out
        return try Processes.spawn(binary, args, o)
    }

    /// For a VMM that cannot bound its console log itself (QEMU's file chardev grows without end): a
    /// pipe whose write end the VMM gets (the returned descriptor number; it opens /dev/fd/N), read by
    /// `head -c LIMIT` (unbuffered) into the console log, as the VMM's uid. Past the limit head ends,
    /// the VMM's writes fail and the guest's serial port drops what it writes.
    mutating func handBoundedConsole() throws -> Int32 {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0, fcntl(ends[0], F_SETFD, FD_CLOEXEC) == 0, fcntl(ends[1], F_SETFD, FD_CLOEXEC) == 0 else {
            throw RunnerError.spawn("pipe: \(String(cString: strerror(errno)))")
        }
        defer { close(ends[0]) }
        held.append(ends[1])
        // The VMM reopens its end by /dev/fd/N, which checks the pipe's owner and mode like a file's.
        if let id = identity, fchown(ends[1], id.uid, id.gid) != 0 {
            throw RunnerError.spawn("cannot give the console pipe to the VMM's uid: \(String(cString: strerror(errno)))")
        }
        let log = open(spec.consolePath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard log >= 0 else { throw RunnerError.spawn("cannot create \(spec.consolePath): \(String(cString: strerror(errno)))") }
        defer { close(log) }
        var o = FileServers.options(for: spec)
        o.stdin = ends[0]; o.stdout = log
        o.identity = identity
        o.jail = identity == nil ? nil : .system([])  // it reads a pipe and writes the log it is handed
        let limit = spec.consoleLimit ?? GuestSpec.defaultConsoleLimit
        // Unbuffered: head writes each read as it comes (buffered, the log would lag the guest).
        let pid = try Processes.spawn("/usr/bin/stdbuf", ["-o0", "/usr/bin/head", "-c", String(limit)], o)
        try? String(pid).write(toFile: spec.runDir + "/console-sink.pid", atomically: true, encoding: .utf8)
        return Int32(2 + held.count)
    }

    /// Reaps the console sink once its VMM has gone (it ends at the pipe's end).
    static func stopConsoleSink(for spec: GuestSpec) {
        guard let t = try? String(contentsOfFile: spec.runDir + "/console-sink.pid", encoding: .utf8), let p = Int32(t) else { return }
        if Processes.isChild(p) { _ = Processes.wait(p, timeout: 1) || (kill(p, SIGKILL) == 0 && Processes.wait(p, timeout: 1)) }
    }

    func closeHeld() { held.forEach { close($0) } }

    /// Undoes a launch that failed before the VMM ran: file servers stopped, uid given back.
    func abandon() {
        FileServers.stop(for: spec)
        Self.stopConsoleSink(for: spec)
        VMMIdentities.release(for: spec)
    }
}
