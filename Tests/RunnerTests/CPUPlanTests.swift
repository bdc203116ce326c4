// CPU lists and the space-sharing plan: every vCPU its own CPU, never outside the caller's affinity.

import Testing
@testable import Runner

@Suite struct CPUPlanTests {
    @Test func parsesAndPrintsSlurmStyleLists() throws {
        #expect(try CPUList(parsing: "0-3,8,10-11").cpus == [0, 1, 2, 3, 8, 10, 11])
        #expect(CPUList([3, 0, 1, 2, 8]).description == "0-3,8")
        for bad in ["", "a", "3-1", "1,1", "-1", "1-", "0,,2", "5000"] {
            #expect(throws: CPUList.Invalid.self, "\(bad)") { try CPUList(parsing: bad) }
        }
    }

    @Test func eachGuestGetsItsOwnCPUsAndSparesBecomeHousekeeping() throws {
        let p = try CPUPlanner.plan(count: 2, vcpus: 2, cpus: CPUList([0, 1, 2, 3, 4]), housekeeping: nil, allowed: CPUList(Array(0..<8)))
        #expect(p.perGuest == [[0, 1], [2, 3]])
        #expect(p.housekeeping == [4])
        #expect(p.warnings.isEmpty)
    }

    @Test func noSpareCPUSaysSo() throws {
        let p = try CPUPlanner.plan(count: 1, vcpus: 2, cpus: CPUList([0, 1]), housekeeping: nil, allowed: CPUList([0, 1]))
        #expect(p.housekeeping == [0, 1])
        #expect(p.warnings.count == 1)
    }

    @Test func refusesOversubscriptionAndForeignCPUs() {
        #expect { try CPUPlanner.plan(count: 1, vcpus: 3, cpus: CPUList([0, 1]), housekeeping: nil, allowed: CPUList([0, 1])) } throws: {
            "\($0)".contains("need 3 CPUs, but --cpus gives 2")
        }
        #expect { try CPUPlanner.plan(count: 1, vcpus: 1, cpus: CPUList([5]), housekeeping: nil, allowed: CPUList([0, 1])) } throws: {
            "\($0)".contains("outside this process's CPU affinity")
        }
        #expect { try CPUPlanner.plan(count: 1, vcpus: 1, cpus: CPUList([0, 1]), housekeeping: CPUList([0]), allowed: CPUList([0, 1])) } throws: {
            "\($0)".contains("also vCPU CPUs")
        }
    }

    @Test func outputSinkPrefixesWholeLines() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        let sink = OutputSink(fd: fds[1])
        let s = sink.stream(tag: "g1: ")
        s.write(Array("a\nb".utf8)); s.write(Array("c\n\nd".utf8)); s.finish()
        close(fds[1])
        var buf = [UInt8](repeating: 0, count: 256)
        let n = read(fds[0], &buf, 256)
        close(fds[0])
        #expect(String(decoding: buf[0..<n], as: UTF8.self) == "g1: a\ng1: bc\ng1: \ng1: d\n")
    }
}
#if canImport(Glibc)
import Glibc
#endif

/// The VMM spawner hands descriptors to the child as 3, 4, … (QEMU's `-netdev tap,fd=3`), whatever
/// numbers they have here, and nothing else of ours leaks into the child.
@Suite struct SpawnTests {
    @Test func passedDescriptorsArriveAsThreeFourAndOthersDoNot() throws {
        var a: [Int32] = [0, 0], b: [Int32] = [0, 0], out: [Int32] = [0, 0]
        #expect(pipe(&a) == 0 && pipe(&b) == 0 && pipe(&out) == 0)
        _ = "first\n".withCString { write(a[1], $0, 6) }
        _ = "second\n".withCString { write(b[1], $0, 7) }
        close(a[1]); close(b[1])
        var o = SpawnOptions()
        o.stdout = out[1]
        o.passFDs = [b[0], a[0]]  // b's read end becomes 3, a's 4
        let pid = try Processes.spawn("/bin/sh", ["-c", "cat <&3; cat <&4; ls /proc/self/fd | wc -l"], o)
        close(out[1]); close(a[0]); close(b[0])
        var text = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 256)
        while true {
            let n = read(out[0], &buf, buf.count)
            if n <= 0 { break }
            text += buf[0..<n]
        }
        close(out[0])
        _ = Processes.wait(pid, timeout: 10)
        let lines = String(decoding: text, as: UTF8.self).split(separator: "\n")
        #expect(lines.prefix(2) == ["second", "first"])
        // ls sees 0-4 and its own directory handle: 6 entries, nothing else inherited.
        #expect(lines.last.map(String.init) == "6", "\(lines)")
    }
}
