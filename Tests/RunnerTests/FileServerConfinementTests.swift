// How a file server is confined (FileServers.start): root of a user namespace that maps only the
// share's owner, under the file guard filter. Checked with a shell in its place, so the rules are seen
// without a guest: what it creates belongs to the owner, set-id bits are refused, identity switches
// change nothing, and it has no capabilities on the host. Also the job cgroup's files and limits, on a
// directory laid out as cgroup v1 is.

import Foundation
import Testing

@testable import Runner

#if canImport(Glibc)
import Glibc
#endif

@Suite struct FileServerConfinementTests {
    static let nobody = HostIdentity(uid: 65534, gid: 65534)

    /// Runs `script` with sh as a file server would run, in `dir`; its output.
    func confined(_ script: String, in dir: String) throws -> String {
        var o = SpawnOptions()
        o.namespaceRoot = Self.nobody
        o.fileGuard = true
        return try ShellStandIn.run(script, in: dir, o)
    }

    func scratch() throws -> String { try ShellStandIn.scratch("fsconfine") }

    @Test func whatItCreatesBelongsToTheOwnerWithoutSetIDBits() throws {
        guard getuid() == 0 else {
            print("SKIPPED: a user namespace mapped to another uid needs root")
            return
        }
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let text = try confined(
            """
            id -u; echo x > f; chown 0:0 f; echo chown=$?
            chmod 4755 f; echo suid=$?; chmod 2755 f; echo sgid=$?; chmod 755 f; echo plain=$?
            mkdir d; chmod 2775 d; echo dir-sgid=$?
            chown 1000 f; echo chown-other=$?
            mknod dev c 1 3; echo mknod=$?
            python3 -c 'import os; os.setresuid(1000, 1000, 1000); open("g", "w"); print("switched", os.getuid())'
            grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\\t' ' '
            """, in: dir)
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.first == "0", "root of its own namespace: \(text)")
        for want in ["chown=0", "suid=1", "sgid=1", "plain=0", "dir-sgid=1", "chown-other=1", "mknod=1", "NoNewPrivs: 1", "Seccomp: 2"] {
            #expect(lines.contains(want), "\(want) in:\n\(text)")
        }
        // Its capabilities are only within its namespace; on the host it is the owner and nothing more.
        #expect(lines.contains("switched 0"), "the identity switch succeeded without effect: \(text)")
        for name in ["f", "d", "g"] {
            var st = stat()
            #expect(lstat(dir + "/" + name, &st) == 0, "\(name) exists")
            #expect(st.st_uid == 65534 && st.st_gid == 65534, "\(name) belongs to \(st.st_uid):\(st.st_gid)")
            #expect(st.st_mode & (S_ISUID | S_ISGID) == 0, "\(name) mode \(String(st.st_mode, radix: 8))")
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/dev"))
    }

    @Test func aJobCgroupHoldsWhatStartsInItWithItsLimitsAndGoesWithIt() throws {
        if let why = getuid() != 0 ? "needs root" : JobCgroup.unsupported() {
            print("SKIPPED: job cgroups: \(why)")
            return
        }
        let node = "unittest\(getpid())"
        let cg = JobCgroup(node: node, job: 7)
        defer {
            cg.remove()
            for c in JobCgroup.controllers { rmdir("/sys/fs/cgroup/\(c)/slurm-vm_\(node)") }
        }
        try cg.create(cpus: [0], memoryBytes: 96 << 20, guests: 1)
        var o = SpawnOptions()
        o.cgroups = cg.directories
        let pid = try Processes.spawn("/bin/sleep", ["60"], o)
        let lines = try String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8).split(separator: "\n")
        for c in JobCgroup.controllers {
            #expect(
                lines.contains {
                    $0.hasSuffix(":/slurm-vm_\(node)/job_7") && $0.split(separator: ":")[1].split(separator: ",").contains(Substring(c))
                }, "\(c): \(lines)")
        }
        let mem = "/sys/fs/cgroup/memory/slurm-vm_\(node)/job_7"
        #expect(try String(contentsOfFile: mem + "/memory.limit_in_bytes", encoding: .utf8) == "\(96 << 20)\n")
        #expect(
            try String(contentsOfFile: "/sys/fs/cgroup/pids/slurm-vm_\(node)/job_7/pids.max", encoding: .utf8) == "\(JobCgroup.threadsPerGuest)\n")
        #expect(cg.oomKills == 0)
        #expect(JobCgroup.jobs(node: node) == [7])
        // Removal ends what is still inside (the job's processes) and the directories go.
        cg.remove()
        #expect(Processes.wait(pid, timeout: 5))
        #expect(!cg.exists)
    }

    @Test func waitStatusesAreSaidInWords() {
        #expect(WaitStatus.describe(9, what: "VMM") == "VMM killed by signal 9 (Killed)")
        #expect(WaitStatus.describe(3 << 8, what: "VMM") == "VMM exited (status 3)")
        #expect(WaitStatus.describe(-1, what: "VMM") == "VMM exited (status -1)")
    }

    @Test func theVMMUIDRangeParses() throws {
        #expect(try VMMIdentities.parse("100-200") == 100...200)
        #expect(try VMMIdentities.parse(" off ") == nil)
        for bad in ["", "5", "0-10", "20-10", "a-b", "1-4294967295"] {
            #expect(throws: RunnerError.self, "\(bad)") { try VMMIdentities.parse(bad) }
        }
    }
}
