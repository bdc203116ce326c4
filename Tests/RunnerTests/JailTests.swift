// The file system a VMM runs in when it runs as its own uid (SpawnOptions.jail): checked with a shell
// in its place, as QEMU is jailed (the distribution's read-only files, its run directory writable).

import Foundation
import Testing

@testable import Runner

#if canImport(Glibc)
import Glibc
#endif

@Suite struct JailTests {
    static let nobody = HostIdentity(uid: 65534, gid: 65534)

    func scratch() throws -> String { try ShellStandIn.scratch("jail") }

    /// Runs `script` with sh as `nobody` in `jail`, in `dir`; its output.
    func jailed(_ script: String, in dir: String, jail: Jail) throws -> String {
        var o = SpawnOptions()
        o.identity = Self.nobody
        o.jail = jail
        return try ShellStandIn.run(script, in: dir, o)
    }

    /// Jails need root (mount namespaces, pivot_root); says so loudly where it is missing.
    static func skipUnlessRoot() -> Bool {
        if getuid() == 0 { return false }
        print("SKIPPED: a jail (mount namespace, pivot_root) needs root")
        return true
    }

    @Test func aJailedProcessSeesOnlyWhatItIsGiven() throws {
        if Self.skipUnlessRoot() { return }
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let jail = Jail.system([Jail.Path(dir, writable: true)])
        let text = try jailed(
            """
            echo "top=$(ls -A / | tr '\\n' ' ')"
            test -e /etc/passwd; echo passwd=$?
            test -e /dev/kvm; echo kvm=$?
            echo hi > here; echo write-here=$?
            touch /usr/x 2>/dev/null; echo write-usr=$?
            touch /x 2>/dev/null; echo write-root=$?
            cp /bin/true ./t && ./t; echo exec-here=$?
            test -e /proc/1; echo init=$?
            echo "owners=$(stat -c %u /proc/[0-9]* | sort -u | tr '\n' ' ')"
            echo "net=$(readlink /proc/self/ns/net)"
            echo "null=$(echo x > /dev/null; echo $?)"
            """, in: dir, jail: jail)
        let lines = Set(text.split(separator: "\n").map(String.init))
        // The root holds the links and the first component of every path given, /dev and /proc.
        var top = Set(jail.links.map { String($0.path.dropFirst()) }).union(["dev", "proc"])
        for p in jail.paths { top.insert(String(p.path.split(separator: "/")[0])) }
        let seen = lines.first { $0.hasPrefix("top=") }.map { Set($0.dropFirst(4).split(separator: " ").map(String.init)) }
        #expect(seen == top, "the jail's root: \(text)")
        for want in ["passwd=1", "kvm=1", "write-here=0", "write-usr=1", "write-root=1", "init=1", "null=0"] {
            #expect(lines.contains(want), "\(want) in:\n\(text)")
        }
        #expect(!lines.contains("exec-here=0"), "nothing runs from the writable directory: \(text)")
        #expect(FileManager.default.fileExists(atPath: dir + "/here"), "the run directory is the node's, not a copy")
        // Only its own uid's processes (the shell and what it runs), in a network namespace of its own.
        #expect(lines.contains("owners=65534 "), "\(text)")
        let hostNet = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/net")
        #expect(lines.contains { $0.hasPrefix("net=net:") } && !lines.contains("net=\(hostNet)"), "\(text)")
    }

    @Test func aJailThatCannotBeBuiltSaysWhatFailed() throws {
        if Self.skipUnlessRoot() { return }
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let missing = dir + "/not-there"
        #expect {
            _ = try jailed("true", in: dir, jail: Jail(paths: [Jail.Path(missing)]))
        } throws: { e in
            "\(e)".contains("binding a path into its root: \(missing)") && "\(e)".contains("No such file")
        }
    }

    @Test func dynamicAndStaticExecutablesAreToldApart() throws {
        #expect(Jail.isDynamicallyLinked("/bin/sh"))
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        FileManager.default.createFile(atPath: dir + "/script", contents: Data("#!/bin/sh\n".utf8))
        #expect(!Jail.isDynamicallyLinked(dir + "/script"))
        #expect(!Jail.isDynamicallyLinked(dir + "/absent"))
        // The VMM as built (static: -static-executable), when it is there.
        let vmm =
            URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path + "/.build/release/slurm-vm-vmm"
        if FileManager.default.fileExists(atPath: vmm) { #expect(!Jail.isDynamicallyLinked(vmm)) }
    }
}
