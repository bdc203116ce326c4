// VM requests as users type them: every bad value rejected with the option and the reason, and the job
// ad built from good ones matched against image ads with HTCondor's bilateral semantics.

import ClassAd
import Foundation
import Sizes
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
        // Empty values and empty list items are mistakes, not nothing (sbatch --vm-libs=,,, was queued).
        for (opts, opt) in [
            (["libs": ",,,"], "--vm-libs"), (["libs": "mpich,"], "--vm-libs"), (["libs": "a,,b"], "--vm-libs"),
            (["os": " "], "--vm-os"), (["count": ""], "--vm-count"),
        ] {
            #expect { try VMRequest.fromOptions(opts) } throws: { ($0 as? VMRequest.Invalid)?.option == opt }
        }
        #expect(try VMRequest.fromOptions(["libs": "mpich, fftw3"]).libs == ["mpich", "fftw3"])
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
        let sizing = try r.sizing(shape: JobShape(), nodeCPUs: nil)
        return m.match(try r.jobAd(for: who, sizing: sizing)).matches.map(\.imageName)
    }

    @Test func eachOptionConstrainsTheImage() throws {
        #expect(try names(VMRequest(libs: ["mpich", "fftw3"]), alice) == ["mpich"])
        #expect(try names(VMRequest(os: "debian:12"), alice).sorted() == ["minimal", "mpich"])  // 12 is a prefix of 12.5, not of 120
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

    @Test func userValuesStayLiteralsInTheJobAd() throws {
        // A library name or OS that looks like ClassAd source is a value, never code: it is checked as
        // a name, and the ad holds it as a string literal.
        #expect(throws: VMRequest.Invalid.self) { try VMRequest.fromOptions(["libs": "x\") || true || (\"y"]) }
        let r = try VMRequest.fromOptions(["os": "debian:12", "libs": "mpich", "requirements": "TARGET.SizeMB < 100"])
        let ad = try r.jobAd(for: alice, sizing: r.sizing(shape: JobShape(), nodeCPUs: nil))
        if case .string(let os) = ad.evaluate("RequestOS") { #expect(os == Bytes("debian")) } else { Issue.record("RequestOS is not a string") }
        #expect(Unparser.unparse(ad.lookup("Requirements")!).contains("(TARGET.SizeMB < 100)"))
    }
}

/// Sizes: one parser for every front end.
@Suite struct ByteSizeTests {
    @Test func sizesAsUsersWriteThem() throws {
        #expect(try ByteSize.parse("512", bare: .mebibytes) == 512 << 20)
        #expect(try ByteSize.parse("512", bare: .bytes) == 512)
        #expect(try ByteSize.parse("2G", bare: .bytes) == 2 << 30)
        #expect(try ByteSize.parse(" 1.5g ", bare: .bytes) == 3 << 29)
        #expect(try ByteSize.parse("4Ki", bare: .mebibytes) == 4096)
        #expect(try ByteSize.parse("1T", bare: .bytes) == 1 << 40)
        for bad in ["", "G", "2GB", "2B", "-1", "1e3", "inf", "nan", "1..2", "1 G", "0x10", "99999999999T", "Mi"] {
            #expect(throws: ByteSize.Invalid.self, "\(bad)") { try ByteSize.parse(bad, bare: .bytes) }
        }
        #expect(ByteSize.mebibytes(1) == 1)
    }
}

/// The job's shape read from the submitting command, as Slurm reads it.
@Suite struct JobShapeTests {
    func shape(_ args: String, tool: String = "sbatch", directives: [String] = [], env: [String: String] = [:]) throws -> JobShape {
        try JobShape.of(SubmitCommand(tool: tool, arguments: args.split(separator: " ").map(String.init), directives: directives, environment: env))
    }

    @Test func theJobSizeOptionsInEverySpelling() throws {
        #expect(try shape("-N1 --ntasks-per-node=2 --wrap true") == JobShape(nodes: 1, tasksPerNode: 2))
        #expect(try shape("-N 2 -n 8 -c 2 job.sh") == JobShape(nodes: 2, tasks: 8, cpusPerTask: 2))
        #expect(try shape("--nodes=2-4 --ntasks 3 --cpus-per-task=4") == JobShape(nodes: 2, tasks: 3, cpusPerTask: 4))
        #expect(try shape("-vN3 --exclusive") == JobShape(nodes: 3, exclusive: true))
        #expect(try shape("--exclusive=user -N1") == JobShape(nodes: 1))
        #expect(try shape("--ntasks-per-n=2") == JobShape(tasksPerNode: 2))  // getopt's unique abbreviation
        // Values of other options are skipped, so they are never read as options.
        #expect(try shape("-J -n9 --comment -N7 -N1") == JobShape(nodes: 1))
        #expect(try shape("--job-name=-n9 -p vm -n2") == JobShape(tasks: 2))
        // Options end at the script or command: its own arguments are not Slurm's.
        #expect(try shape("-n2 job.sh -n 5 -N 9") == JobShape(tasks: 2))
        #expect(try shape("--mpi pmi2 -n4 ./app -N3", tool: "srun") == JobShape(tasks: 4))
        #expect(try shape("-n2 -- -N3") == JobShape(tasks: 2))
    }

    @Test func commandLineOverEnvironmentOverDirectives() throws {
        let d = ["-N 2 --ntasks-per-node=4 # a comment -N 9", "--cpus-per-task=2"]
        #expect(try shape("job.sh", directives: d) == JobShape(nodes: 2, tasksPerNode: 4, cpusPerTask: 2))
        #expect(try shape("-N1 job.sh", directives: d) == JobShape(nodes: 1, tasksPerNode: 4, cpusPerTask: 2))
        #expect(try shape("job.sh", directives: d, env: ["SBATCH_EXCLUSIVE": "1"]).exclusive)
        #expect(
            try shape("-n2", tool: "srun", env: ["SLURM_CPUS_PER_TASK": "3", "SLURM_NNODES": "2"]) == JobShape(nodes: 2, tasks: 2, cpusPerTask: 3))
        // Directives count for sbatch only; the environment is read by each tool under its own names.
        #expect(try shape("", tool: "srun", directives: d, env: ["SBATCH_EXCLUSIVE": "1"]) == JobShape())
    }

    @Test func badCountsAreRefused() {
        for args in ["-N0", "-n x", "--cpus-per-task=-1", "--ntasks-per-node="] {
            #expect(throws: JobShape.Invalid.self, "\(args)") { try shape(args) }
        }
    }
}

/// Guests and vCPUs are decided once, at submission, from the options and the job's shape.
@Suite struct SizingTests {
    func sizing(_ r: VMRequest, _ s: JobShape, cpus: NodeCPUs? = NodeCPUs(smallest: 2, largest: 2)) throws -> Sizing {
        try r.sizing(shape: s, nodeCPUs: cpus)
    }

    @Test func vcpusDeriveFromTheJobsCoresWhenNotGiven() throws {
        #expect(try sizing(VMRequest(), JobShape(nodes: 1, tasksPerNode: 2)).vcpus == 2)
        #expect(try sizing(VMRequest(count: 2), JobShape(nodes: 1, tasksPerNode: 2)).vcpus == 1)
        #expect(
            try sizing(VMRequest(count: 4), JobShape(nodes: 2, tasksPerNode: 2))
                == Sizing(guests: 4, vcpus: 1, vcpusGiven: false, nodes: 2, coresPerNode: 2))
        #expect(
            try sizing(VMRequest(), JobShape(nodes: 2, tasks: 8, cpusPerTask: 2), cpus: nil)
                == Sizing(guests: 2, vcpus: 8, vcpusGiven: false, nodes: 2, coresPerNode: 8))
        #expect(try sizing(VMRequest(), JobShape(exclusive: true), cpus: NodeCPUs(smallest: 16, largest: 64)).vcpus == 16)
        #expect(try sizing(VMRequest(), JobShape()).vcpus == 1)  // one task, one core
        #expect(try sizing(VMRequest(vcpus: 2), JobShape(nodes: 1)).vcpusGiven)
        // -n without -N: as many nodes as the tasks need on the largest node.
        #expect(try sizing(VMRequest(), JobShape(tasks: 8), cpus: NodeCPUs(smallest: 4, largest: 4)).nodes == 2)
    }

    @Test func whatNoNodeCanHoldIsRefusedWithTheReason() {
        #expect { try sizing(VMRequest(vcpus: 64), JobShape()) } throws: { "\($0)".contains("more than the largest node has (2 CPUs)") }
        #expect { try sizing(VMRequest(count: 4, vcpus: 1), JobShape(nodes: 1)) } throws: { "\($0)".contains("4 guests × 1 vCPU on a node") }
        #expect { try sizing(VMRequest(count: 1), JobShape(nodes: 2)) } throws: { "\($0)".contains("fewer than the job's 2 nodes") }
    }
}

/// The matching layer: what sbatch gets and what `slurm-vm match` prints come from here.
@Suite struct SubmissionTests {
    let alice = Requester(user: "alice", uid: 1000, gid: 1000)

    @Test func anImageThatCannotHoldTheDerivedVCPUsIsRuledOutAtSubmission() throws {
        let c = try Catalog(root: tempDir("cat"))
        _ = try addImage(c, "tiny1", "1", attrs: [Attribute("MaxVCPUs", "1")])
        // -N1 --ntasks-per-node=2 and no --vm-vcpus: one guest with the job's 2 cores, which tiny1 cannot hold.
        let two = JobShape(nodes: 1, tasksPerNode: 2)
        let refused = try c.match(Submission(request: VMRequest(image: "tiny1"), shape: two, requester: alice))
        #expect(refused.accepted == nil)
        #expect(refused.refusal?.contains("no guest image matches this request") == true)
        #expect(refused.refusal?.contains("MaxVCPUs") == true)
        // --vm-count=2 on the same allocation: a guest per core.
        let ok = try c.match(Submission(request: VMRequest(count: 2, image: "tiny1"), shape: two, requester: alice))
        #expect(ok.accepted?.sizing == Sizing(guests: 2, vcpus: 1, vcpusGiven: false, nodes: 1, coresPerNode: 2))
        #expect(ok.accepted?.memoryMB == 128)  // the image's MinMemoryMB
        #expect(ok.accepted?.imageLabel == "tiny1:1")
    }

    /// Matching keeps the catalog's images prepared between submissions, and sees every change: one
    /// made through the same catalog object, and one committed by another (another process's import).
    @Test func preparedImagesFollowEveryChangeToTheCatalog() throws {
        let root = tempDir("cat")
        let c = try Catalog(root: root)
        _ = try addImage(c, "old", "1")
        func best() throws -> String? { try c.match(Submission(request: VMRequest(), requester: alice)).accepted?.imageLabel }
        #expect(try best() == "old:1")
        let first = try c.preparedImages()
        #expect(try c.preparedImages() === first, "unchanged: reused")
        _ = try c.setAttributes(.name("old"), set: [try ImageRecord.adminAttribute("Requirements", "TARGET.Owner == \"bob\"")], unset: [])
        #expect(try best() == nil, "this connection's own change is seen")
        let other = try Catalog(root: root)
        _ = try addImage(other, "new", "1")
        #expect(try best() == "new:1", "another connection's commit is seen")
        #expect(try c.preparedImages() !== first)
    }

    @Test func theDryRunsChecksAreTheSubmissionsChecks() throws {
        let c = try Catalog(root: tempDir("cat"))
        _ = try addImage(c, "minimal", "1")
        let missing = try c.match(Submission(request: VMRequest(image: "nosuch"), requester: alice))
        #expect(missing.refusal?.hasPrefix("--vm-image: no image 'nosuch' in the catalog; known images: minimal:1") == true)
        let big = try c.match(Submission(request: VMRequest(vcpus: 4), nodeCPUs: NodeCPUs(smallest: 2, largest: 2), requester: alice))
        #expect(big.refusal?.contains("more than the largest node has (2 CPUs)") == true)
        #expect(big.jobAd == nil)
    }

    @Test func acceptedRequestsTravelAsJSON() throws {
        let r = AcceptedRequest(
            request: VMRequest(
                count: 4, vcpus: 2, memoryMB: 1024, os: "debian:12", kernel: ">=6.1", libs: ["mpich"],
                image: "mpich", requirements: "true", rank: "0"),
            sizing: Sizing(guests: 4, vcpus: 2, vcpusGiven: true, nodes: 2, coresPerNode: 4),
            memoryMB: 1024, image: "sha256:" + String(repeating: "a", count: 64), imageLabel: "mpich:1")
        #expect(try JSONDecoder().decode(AcceptedRequest.self, from: try JSONEncoder().encode(r)) == r)
    }
}

/// One list of options: the plugin's C table says the same as VMRequest.options.
@Suite struct OptionTableTests {
    @Test func thePluginsTableIsVMRequestsTable() throws {
        let src = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Plugin/src/options.c").standardized
        let text = try String(contentsOf: src, encoding: .utf8)
        // [SVM_COUNT] = {"count", "SLURM_VM_COUNT", "N", "usage", NULL},
        let field = #""((?:[^"\\]|\\.)*)",\s*"#
        let rx = try NSRegularExpression(pattern: #"\[SVM_([A-Z]+)\]\s*=\s*\{\s*"# + String(repeating: field, count: 4) + #"NULL\s*\}"#)
        let rows = rx.matches(in: text, range: NSRange(text.startIndex..., in: text)).map { m in
            (1...5).map { String(text[Range(m.range(at: $0), in: text)!]) }
        }
        #expect(rows.map { $0[0].lowercased() } == VMRequest.optionNames)
        #expect(rows.map { VMRequest.Option(name: $0[1], env: $0[2], arginfo: $0[3], usage: $0[4]) } == VMRequest.options)
        // The enum's order is the table's.
        let header = try String(contentsOf: src.deletingLastPathComponent().appendingPathComponent("slurm-vm.h"), encoding: .utf8)
        let enumLine = header.split(separator: "\n").first { $0.hasPrefix("enum { SVM_COUNT") }.map(String.init) ?? ""
        #expect(enumLine == "enum { " + VMRequest.optionNames.map { "SVM_" + $0.uppercased() + ", " }.joined() + "SVM_NOPTS };")
    }
}
