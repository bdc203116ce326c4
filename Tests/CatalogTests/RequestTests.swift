// VM requests as users type them: every bad value rejected with the option and the reason, and the job
// ad built from good ones matched against image ads with HTCondor's bilateral semantics.

import ClassAd
import Foundation
import Testing
@testable import Catalog

@Suite struct RequestTests {
    let alice = Requester(user: "alice", uid: 1000, gid: 1000, account: "physics")

    @Test func optionValuesAreCheckedOneByOne() throws {
        let bad: [(String, () throws -> Void)] = [
            ("--vm-count", { _ = try VMRequest.parseCount("four", option: "--vm-count", max: 4096) }),
            ("--vm-count", { _ = try VMRequest.parseCount("0", option: "--vm-count", max: 4096) }),
            ("--vm-count", { _ = try VMRequest.parseCount("99999", option: "--vm-count", max: 4096) }),
            ("--vm-vcpus", { _ = try VMRequest.parseCount("-2", option: "--vm-vcpus", max: 1024) }),
            ("--vm-mem", { _ = try VMRequest.parseMemory("lots") }),
            ("--vm-mem", { _ = try VMRequest.parseMemory("1K") }),
            ("--vm-mem", { _ = try VMRequest.parseMemory("2GB") }),
            ("--vm-image", { try VMRequest(image: "../../etc/passwd").validate() }),
            ("--vm-image", { try VMRequest(image: "mpich;reboot").validate() }),
            ("--vm-libs", { try VMRequest(libs: ["fftw$(id)"]).validate() }),
            ("--vm-os", { try VMRequest(os: ">=12").validate() }),
            ("--vm-kernel", { try VMRequest(kernel: "linux>=6").validate() }),
            ("--vm-requirements", { try VMRequest(requirements: "TARGET.MaxVCPUs >").validate() }),
            ("--vm-rank", { try VMRequest(rank: "(((").validate() }),
        ]
        for (opt, f) in bad {
            #expect(throws: VMRequest.Invalid.self, "\(opt)") { try f() }
            do { try f() } catch let e as VMRequest.Invalid { #expect(e.option == opt) } catch {}
        }
        #expect(try VMRequest.parseMemory("2G") == 2048)
        #expect(try VMRequest.parseMemory("512") == 512)
        #expect(try VMRequest.parseMemory("1.5g") == 1536)
    }

    func images() throws -> [ClassAd] {
        try [
            "[ Name = \"minimal\"; Version = \"1.0\"; OS = \"debian\"; OSVersion = \"12\"; Arch = \"x86_64\"; KernelVersion = \"6.1.192\"; MaxVCPUs = 64; MinMemoryMB = 128; Libraries = { \"busybox\" }; Tags = { }; Requirements = true ]",
            "[ Name = \"mpich\"; Version = \"1.0\"; OS = \"debian\"; OSVersion = \"12.5\"; Arch = \"x86_64\"; KernelVersion = \"6.1.192\"; MaxVCPUs = 64; MinMemoryMB = 256; Libraries = { \"mpich\", \"fftw3\" }; Tags = { \"stable\" }; Requirements = TARGET.Account == \"physics\" ]",
            "[ Name = \"old\"; Version = \"1.0\"; OS = \"debian\"; OSVersion = \"120\"; Arch = \"x86_64\"; KernelVersion = \"5.10.0\"; MaxVCPUs = 2; MinMemoryMB = 64; Libraries = { \"mpich\" }; Tags = { }; Requirements = true ]",
        ].map { try Parser.parseClassAd($0) }
    }

    func names(_ r: VMRequest, _ who: Requester) throws -> [String] {
        let m = Matchmaker(images: try images())
        return m.match(try r.jobAd(for: who)).matches.map(\.imageName)
    }

    @Test func eachOptionConstrainsTheImage() throws {
        #expect(try names(VMRequest(libs: ["mpich", "fftw3"]), alice) == ["mpich"])
        #expect(try names(VMRequest(os: "debian:12"), alice).sorted() == ["minimal", "mpich"])    // 12 is a prefix of 12.5, not of 120
        #expect(try names(VMRequest(kernel: ">=6.1"), alice).sorted() == ["minimal", "mpich"])
        #expect(try names(VMRequest(kernel: "5.10"), alice) == ["old"])
        #expect(try names(VMRequest(vcpus: 4, libs: ["mpich"]), alice) == ["mpich"])
        #expect(try names(VMRequest(memoryMB: 100), alice) == ["old"])
        #expect(try names(VMRequest(image: "mpich:stable"), alice) == ["mpich"])
        #expect(try names(VMRequest(requirements: "TARGET.MinMemoryMB < 200"), alice).sorted() == ["minimal", "old"])
    }

    @Test func imageRequirementsSeeTheRequester() throws {
        let bob = Requester(user: "bob", uid: 1001, gid: 1001, account: "chemistry")
        #expect(try names(VMRequest(libs: ["fftw3"]), alice) == ["mpich"])
        #expect(try names(VMRequest(libs: ["fftw3"]), bob) == [])
    }

    @Test func rankOrdersMatches() throws {
        #expect(try names(VMRequest(rank: "-TARGET.MinMemoryMB"), alice) == ["old", "minimal", "mpich"])
        #expect(try names(VMRequest(rank: "TARGET.MinMemoryMB"), alice) == ["mpich", "minimal", "old"])
    }

    @Test func requestRoundTripsAsJSON() throws {
        let r = VMRequest(count: 4, vcpus: 2, memoryMB: 1024, os: "debian:12", kernel: ">=6.1", libs: ["mpich"], image: "mpich", requirements: "true", rank: "0")
        let back = try JSONDecoder().decode(VMRequest.self, from: try JSONEncoder().encode(r))
        #expect(back == r)
    }
}
