// The image builder's parts that need no network: strict recipes, deterministic cpio (read back by
// cpio(1)), LZ4 legacy framing (read back by lz4(1) and by the runner), alternatives from maintainer
// scripts, dependency pruning, module signatures.

import Foundation
import Testing
@testable import ImageBuilder
@testable import Runner
#if canImport(Glibc)
import Glibc
#endif

func tmp(_ tag: String) -> String {
    let d = NSTemporaryDirectory() + "slurm-vm-\(tag)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

func sh(_ cmd: String) -> (Int32, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/sh")
    p.arguments = ["-c", cmd]
    let out = Pipe()
    p.standardOutput = out; p.standardError = out
    try! p.run()
    let d = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: d, as: UTF8.self))
}

@Suite struct RecipeTests {
    func load(_ text: String) throws -> Recipe {
        let p = tmp("recipe") + "/r.toml"
        try Data(text.utf8).write(to: URL(fileURLWithPath: p))
        return try Recipe.load(p)
    }

    let good = """
        name = "t"
        version = "1.0"
        [kernel]
        modules = ["virtio_console"]
        [packages]
        include = ["busybox-static"]
        """

    @Test func theShippedRecipesLoad() throws {
        for r in ["minimal", "mpich"] {
            let recipe = try Recipe.load(AgentBinary.repo + "/Images/\(r).toml")
            #expect(recipe.name == r)
            #expect(recipe.modules.contains("virtio_console"))
        }
    }

    @Test func aGoodRecipeLoadsWithDefaults() throws {
        let r = try load(good)
        #expect(r.kernelFlavour == "cloud")
        #expect(r.compression == "none")
        #expect(r.maxVCPUs == 64)
        #expect(r.strip == Recipe.defaultStrip)
    }

    @Test func mistakesAreErrorsNamingTheKey() throws {
        let cases: [(String, String)] = [
            ("nmae = \"x\"\n" + good, "unknown key nmae"),
            (good.replacingOccurrences(of: "[kernel]", with: "[kernel]\nflavor = \"cloud\""), "unknown key kernel.flavor"),
            (
                good.replacingOccurrences(of: "include = [\"busybox-static\"]", with: "include = \"busybox-static\""),
                "packages.include must be a list of strings"
            ),
            (good.replacingOccurrences(of: "version = \"1.0\"", with: "version = 1"), "version must be a string"),
            (good.replacingOccurrences(of: "name = \"t\"", with: "name = \"../t\""), "invalid name"),
            (good + "\n[image]\ncompression = \"zstd\"", "compression must be"),
            (good + "\n[files]\n\"etc/x\" = { text = \"a\" }", "must be an absolute path"),
            (good + "\n[files]\n\"/../x\" = { text = \"a\" }", "without .."),
            (good + "\n[ad]\nrequirements = \"TARGET.Owner ==\"", "not a valid ClassAd expression"),
            (good + "\n[ad]\nOS = \"\\\"centos\\\"\"", "cannot be set"),
            ("name = \"t\"\n[kernel", "r.toml:2:"),
        ]
        for (text, want) in cases {
            #expect { try load(text) } throws: { "\($0)".contains(want) }
        }
    }
}

@Suite struct ArchiveTests {
    func tree() -> String {
        let d = tmp("tree")
        try! FileManager.default.createDirectory(atPath: d + "/usr/bin", withIntermediateDirectories: true)
        try! Data("#!/bin/sh\necho hi\n".utf8).write(to: URL(fileURLWithPath: d + "/usr/bin/hi"))
        chmod(d + "/usr/bin/hi", 0o755)
        try! Data(repeating: 7, count: 100_003).write(to: URL(fileURLWithPath: d + "/big"))
        try! FileManager.default.createSymbolicLink(atPath: d + "/bin", withDestinationPath: "usr/bin")
        return d
    }

    @Test func cpioIsReadableByCpioAndDeterministic() throws {
        let a = try CpioWriter.archive(tree: tree(), mtime: 1)
        let b = try CpioWriter.archive(tree: tree(), mtime: 1)
        #expect(a == b)
        #expect(a.count % 512 == 0)
        let f = tmp("cpio") + "/a.cpio"
        try a.write(to: URL(fileURLWithPath: f))
        let (st, list) = sh("cpio -itv < \(f) 2>/dev/null")
        #expect(st == 0)
        #expect(list.contains("bin -> usr/bin"))
        #expect(list.contains("-rwxr-xr-x"))
        let out = tmp("cpio-x")
        #expect(sh("cd \(out) && cpio -id < \(f) 2>&1").0 == 0)
        #expect(FileManager.default.contents(atPath: out + "/big")?.count == 100_003)
        #expect(sh("\(out)/usr/bin/hi").1 == "hi\n")
    }

    @Test func lz4LegacyIsReadableByLz4AndTheRunner() throws {
        var input = Data()
        for i in 0..<(9 << 20) / 64 { input.append(contentsOf: Array(String(format: "%063d\n", i % 1000).utf8)) }  // > one 8 MiB block
        let c = LZ4Legacy.compress(input)
        #expect(c.count < input.count / 4)
        let f = tmp("lz4") + "/x.lz4"
        try c.write(to: URL(fileURLWithPath: f))
        // lz4(1) itself must decode our frames to exactly the input (written to a file, not a pipe, so
        // nothing on the reading side can end the decoder early).
        #expect(sh("lz4 -dc \(f) > \(f).out 2>&1").0 == 0)
        #expect(FileManager.default.contents(atPath: f + ".out") == input)
        #expect(DirectKernel.lz4LegacyDecode([UInt8](c)) == [UInt8](input))
    }
}

@Suite struct PackagingTests {
    @Test func alternativesFromMaintainerScripts() {
        let script = """
            #!/bin/sh
            set -e
            update-alternatives \\
            \t--install /usr/bin/mpicc mpi /usr/bin/mpicc.mpich 40 \\
            \t--slave /usr/bin/mpicxx mpicxx /usr/bin/mpicxx.mpich \\

            #\t--slave /usr/share/man/man1/mpicc.1.gz mpicc.1.gz /usr/share/man/man1/mpicc.mpich.1.gz \\
            update-alternatives --install /usr/bin/mpirun mpirun /usr/bin/mpirun.mpich 50 --slave /usr/bin/mpiexec mpiexec /usr/bin/mpiexec.mpich
            update-alternatives --install /usr/lib/$DEB_HOST_MULTIARCH/libblas.so.3 libblas /usr/lib/x/libblas.so.3 10
            """
        let g = ImageBuilder.parseAlternatives(script)
        #expect(g.count == 2)
        #expect(g[0].name == "mpi" && g[0].priority == 40)
        #expect(g[0].links.map(\.0) == ["/usr/bin/mpicc", "/usr/bin/mpicxx"])
        #expect(g[1].links.map(\.1) == ["/usr/bin/mpirun.mpich", "/usr/bin/mpiexec.mpich"])
    }

    @Test func dependsFieldsAndPruning() {
        #expect(
            Apt.parseDepends("libc6 (>= 2.34), libgcc-s1 | libgcc1, debconf (>= 0.5) | debconf-2.0") == [
                ["libc6"], ["libgcc-s1", "libgcc1"], ["debconf", "debconf-2.0"],
            ])
        let all = [
            DebPackage(name: "app", version: "1", arch: "amd64", depends: [["libc6"], ["adduser"], ["libfoo-virtual"]]),
            DebPackage(name: "adduser", version: "1", arch: "all", depends: [["passwd"]]),
            DebPackage(name: "passwd", version: "1", arch: "amd64", depends: [["libc6"]]),
            DebPackage(name: "libc6", version: "1", arch: "amd64"),
            DebPackage(name: "libfoo1", version: "1", arch: "amd64", provides: ["libfoo-virtual"]),
        ]
        #expect(Apt.prune(all, roots: ["app"], exclude: []).map(\.name) == ["adduser", "app", "libc6", "libfoo1", "passwd"])
        #expect(Apt.prune(all, roots: ["app"], exclude: ["adduser"]).map(\.name) == ["app", "libc6", "libfoo1"])
    }

    @Test func moduleSignaturesAreStripped() {
        let body: [UInt8] = Array(repeating: 0x41, count: 100)
        let sig: [UInt8] = Array(repeating: 0x5a, count: 37)
        let info: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 37]  // struct module_signature, sig_len big-endian
        let signed = body + sig + info + KernelModules.signatureMagic
        #expect(KernelModules.stripSignature(signed) == body)
        #expect(KernelModules.stripSignature(body) == body)
    }

    @Test func elfReaderFindsSonames() throws {
        // The C library of this host is a real shared object with a SONAME.
        let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"].first { FileManager.default.fileExists(atPath: $0) }!
        let e = try #require(ELFFile([UInt8](FileManager.default.contents(atPath: libc)!)))
        #expect(e.soname == "libc.so.6")
        #expect(ELFFile([1, 2, 3]) == nil)
    }
}

enum AgentBinary {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
}
