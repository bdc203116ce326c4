// The VMM's own uid: the range as configured, one uid per guest held by a lock, given back at teardown,
// and taken over from a runner that died.

import Foundation
import Testing

@testable import Runner

#if canImport(Glibc)
import Glibc
#endif

@Suite struct VMMIdentityTests {
    func spec(_ id: String, in root: String) -> GuestSpec {
        GuestSpec(
            id: id, kernel: "/k", initrd: nil, cmdline: "", vcpus: 1, memoryMB: 64, cpus: [0], housekeeping: [], agent: false,
            runDir: "\(root)/guests/\(id)")
    }

    @Test func theRangeIsTheDefaultAnotherOrOffAndBadValuesSayWhatToWrite() throws {
        guard getuid() == 0 else { return }  // a runner that is not root keeps its identity: nil
        #expect(try VMMIdentities.range(environment: [:]) == VMMIdentities.defaultRange)
        #expect(try VMMIdentities.range(environment: ["SLURM_VM_VMM_UIDS": "5000-5009"]) == 5000...5009)
        #expect(try VMMIdentities.range(environment: ["SLURM_VM_VMM_UIDS": "off"]) == nil)
        for bad in ["5009-5000", "0-10", "5000", "a-b", "5000-4294967295"] {
            #expect(throws: RunnerError.self, "\(bad)") { try VMMIdentities.range(environment: ["SLURM_VM_VMM_UIDS": bad]) }
        }
    }

    @Test func eachGuestHoldsItsOwnUidUntilItsTeardownAndADeadRunnersUidIsTakenOver() throws {
        let root = NSTemporaryDirectory() + "vmm-uids-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let a = spec("a", in: root), b = spec("b", in: root)
        for s in [a, b] { try FileManager.default.createDirectory(atPath: s.runDir, withIntermediateDirectories: true) }
        // Two uids in range, two guests: each gets one, a third finds none free.
        let range: ClosedRange<UInt32> = 7000...7001
        let ia = try VMMIdentities.take(for: a, in: range), ib = try VMMIdentities.take(for: b, in: range)
        #expect(ia != ib && range.contains(ia.uid) && range.contains(ib.uid) && ia.gid == ia.uid)
        let c = spec("c", in: root)
        try FileManager.default.createDirectory(atPath: c.runDir, withIntermediateDirectories: true)
        #expect(throws: RunnerError.self) { try VMMIdentities.take(for: c, in: range) }
        // a's runner died: its run directory is gone, and its uid goes to c.
        try FileManager.default.removeItem(atPath: a.runDir)
        #expect(try VMMIdentities.take(for: c, in: range) == ia)
        // Listing guests, which sweeps away run directories without a record, leaves the locks alone
        // however old their directory is.
        let locks = "\(root)/guests/.vmm-uids"
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: -3600)], ofItemAtPath: locks)
        _ = try GuestRecords(root: root).live()
        #expect(FileManager.default.fileExists(atPath: locks))
        // Teardown gives uids back; the last one leaves no lock directory behind.
        VMMIdentities.release(for: b)
        VMMIdentities.release(for: c)
        #expect(!FileManager.default.fileExists(atPath: "\(root)/guests/.vmm-uids"))
    }
}
