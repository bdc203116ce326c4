// Building an image from a recipe: resolve and download the packages, unpack them into a merged-/usr
// tree, strip what guests do not need, add busybox's applets, the alternatives maintainer scripts would
// have set, the guest agent as /init and the kernel modules to load, then write the kernel and a
// deterministic initramfs into the catalog with the ad derived from what went in.

import Catalog
import Foundation
import Support
#if canImport(Glibc)
import Glibc
#endif

public protocol BuildProgress: Sendable {
    /// A new phase begins ("resolve", "download", ...).
    func phase(_ name: String, _ detail: String)
    /// Progress within the phase.
    func advance(_ done: Int, _ total: Int, _ detail: String)
}

public struct BuildResult: Sendable {
    public var record: ImageRecord
    /// false when the catalog already had exactly this image.
    public var added: Bool
    public var phases: [(String, Double)]
    public var packages: Int
    public var initrdBytes: Int64
    public var kernelBytes: Int64
}

public struct ImageBuilder {
    public let catalog: Catalog
    public let progress: BuildProgress
    /// Downloaded .deb files, kept across builds.
    public let debCache: String
    public var keepWork = false
    public var versionOverride: String?

    public init(catalog: Catalog, progress: BuildProgress, debCache: String? = nil) {
        self.catalog = catalog
        self.progress = progress
        self.debCache = debCache ?? ImageBuilder.defaultDebCache
    }

    public static var defaultDebCache: String {
        let env = ProcessInfo.processInfo.environment
        if let c = env["SLURM_VM_DEB_CACHE"] { return c }
        if getuid() == 0 { return "/var/cache/slurm-vm/debs" }
        return (env["XDG_CACHE_HOME"] ?? (NSHomeDirectory() + "/.cache")) + "/slurm-vm/debs"
    }

    /// Files keep this mtime in the archive, so the same inputs give the same bytes.
    static let epoch: UInt32 = 1

    public func build(_ recipe: Recipe) throws -> BuildResult {
        var phases: [(String, Double)] = []
        var t = Date()
        func lap(_ name: String) { phases.append((name, Date().timeIntervalSince(t))); t = Date() }

        let work = catalog.root + "/tmp/build-\(recipe.name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Files.mkdirs(work, mode: 0o700)
        defer { if !keepWork { Files.remove(work) } }
        let apt = Apt(cacheDir: debCache, workDir: work)

        progress.phase("resolve", "packages of \(recipe.include.joined(separator: ", ")) and kernel flavour \(recipe.kernelFlavour)")
        let kernelPkg = try kernelPackage(recipe, apt)
        let closure = try apt.closure(of: recipe.include)
        let pkgs = Apt.prune(closure, roots: recipe.include, exclude: Set(recipe.exclude))
        lap("resolve")

        progress.phase("download", "\(pkgs.count + 1) packages into \(debCache)")
        let debs = try apt.fetch([kernelPkg] + pkgs) { done, total in progress.advance(done, total, "packages") }
        lap("download")

        progress.phase("unpack", "kernel \(kernelPkg.name)")
        let ktree = work + "/kernel"
        try unpack(debs[0], into: ktree)
        let (vmlinuz, release) = try findKernel(ktree)
        let root = work + "/root"
        try makeSkeleton(root)
        for (i, deb) in debs.dropFirst().enumerated() {
            progress.advance(i + 1, pkgs.count, pkgs[i].name)
            try unpack(deb, into: root)
        }
        lap("unpack")

        progress.phase("assemble", "strip, applets, alternatives, agent, modules")
        for s in recipe.strip { Files.remove(root + "/" + s) }
        try busyboxApplets(root)
        try alternatives(debs.dropFirst().map { $0 }, root: root)
        try baseFiles(root, recipe: recipe)
        try extraFiles(recipe, root: root)
        try installAgent(recipe, root: root, work: work)
        let modules = try installModules(recipe, tree: ktree, release: release, root: root)
        let libraries = sharedLibraries(root)
        let unpackedBytes = treeSize(root)
        lap("assemble")

        progress.phase("archive", recipe.compression == "lz4" ? "cpio + LZ4" : "cpio")
        var cpio = try CpioWriter.archive(tree: root, mtime: Self.epoch)
        if recipe.compression == "lz4" { cpio = LZ4Legacy.compress(cpio) }
        let initrdPath = work + "/initrd"
        try Files.writeAtomically(cpio, to: initrdPath, mode: 0o444)
        lap("archive")

        progress.phase("import", "into \(catalog.root)")
        let version = versionOverride ?? recipe.version
        let result: (ImageRecord, Bool) = try catalog.importing {
            let k = try catalog.blobs.ingest(ktree + "/" + vmlinuz, move: true)
            let i = try catalog.blobs.ingest(initrdPath, move: true)
            let artefacts = [Artefact(role: "kernel", digest: k.digest, size: k.size), Artefact(role: "initrd", digest: i.digest, size: i.size)]
            let derived = deriveAttributes(
                recipe, kernelPkg: kernelPkg, release: release, pkgs: pkgs, libraries: libraries,
                modules: modules, unpackedBytes: unpackedBytes, initrdBytes: Int64(cpio.count))
            var rec = ImageRecord(
                name: recipe.name, version: version, artefacts: artefacts, cmdline: recipe.cmdline,
                derived: derived, admin: recipe.adminAttributes, source: "recipe \(recipe.path)")
            let added = try catalog.add(rec)
            if !added { rec = try catalog.resolve(.nameVersion(rec.name, rec.version)) }
            return (rec, added)
        }
        lap("import")
        return BuildResult(
            record: result.0, added: result.1, phases: phases, packages: pkgs.count,
            initrdBytes: Int64(cpio.count), kernelBytes: catalog.blobs.size(of: result.0.artefact("kernel")!.digest))
    }

    // MARK: steps

    func kernelPackage(_ r: Recipe, _ apt: Apt) throws -> DebPackage {
        try apt.candidate(r.kernelPackage ?? apt.kernelBehind("linux-image-\(r.kernelFlavour)-amd64"))
    }

    func unpack(_ deb: String, into dir: String) throws {
        try Files.mkdirs(dir)
        // --keep-directory-symlink: /bin, /lib, ... stay symlinks into /usr (merged /usr, as Debian 12 installs).
        _ = try Apt.run([
            "sh", "-c", "dpkg-deb --fsys-tarfile \(shellQuote(deb)) | tar -x -p --no-same-owner --keep-directory-symlink -C \(shellQuote(dir))",
        ])
    }

    func findKernel(_ tree: String) throws -> (String, String) {
        let boot = (try? FileManager.default.contentsOfDirectory(atPath: tree + "/boot")) ?? []
        guard let v = boot.first(where: { $0.hasPrefix("vmlinuz-") }) else { throw BuildError("the kernel package has no /boot/vmlinuz-*") }
        return ("boot/" + v, String(v.dropFirst("vmlinuz-".count)))
    }

    func makeSkeleton(_ root: String) throws {
        for d in [
            "usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc/slurm-vm", "proc", "sys", "dev", "run", "tmp", "root", "home", "var/tmp", "mnt",
        ] {
            try Files.mkdirs(root + "/" + d)
        }
        chmod(root + "/tmp", 0o1777); chmod(root + "/var/tmp", 0o1777); chmod(root + "/root", 0o700)
        for (l, t) in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")] {
            try FileManager.default.createSymbolicLink(atPath: root + "/" + l, withDestinationPath: t)
        }
    }

    /// Busybox's applets as symlinks, where no package put a real program.
    func busyboxApplets(_ root: String) throws {
        let bb = root + "/usr/bin/busybox"
        guard Files.exists(bb) else { return }
        let list = try Apt.run([bb, "--list-full"])
        for applet in list.split(separator: "\n").sorted() {
            var p = String(applet)
            for (from, to) in [("bin/", "usr/bin/"), ("sbin/", "usr/sbin/")] where p.hasPrefix(from) { p = to + p.dropFirst(from.count) }
            let full = root + "/" + p
            var st = stat()
            if lstat(full, &st) == 0 { continue }
            try? FileManager.default.createSymbolicLink(atPath: full, withDestinationPath: "/usr/bin/busybox")
        }
    }

    /// The links `update-alternatives --install` in maintainer scripts would create (highest priority
    /// wins, slaves follow their master), pointing straight at the chosen file.
    func alternatives(_ debs: [String], root: String) throws {
        struct Group { var priority: Int; var links: [(String, String)] }
        var best: [String: Group] = [:]
        for deb in debs {
            guard let script = try? Apt.run(["sh", "-c", "dpkg-deb --ctrl-tarfile \(shellQuote(deb)) | tar -xO ./postinst 2>/dev/null || true"]),
                script.contains("update-alternatives")
            else { continue }
            for g in Self.parseAlternatives(script) where g.priority > (best[g.name]?.priority ?? Int.min) {
                best[g.name] = Group(priority: g.priority, links: g.links)
            }
        }
        for (_, g) in best.sorted(by: { $0.key < $1.key }) {
            for (link, target) in g.links where Files.exists(root + target) {
                let l = root + link
                var st = stat()
                if lstat(l, &st) == 0 { continue }
                try? Files.mkdirs((l as NSString).deletingLastPathComponent)
                try? FileManager.default.createSymbolicLink(atPath: l, withDestinationPath: target)
            }
        }
    }

    static func parseAlternatives(_ script: String) -> [(name: String, priority: Int, links: [(String, String)])] {
        // Join continued lines; comments end a command.
        var joined = ""
        for line in script.split(separator: "\n", omittingEmptySubsequences: false) {
            let l = line.trimmingCharacters(in: .whitespaces)
            if l.hasPrefix("#") { joined += "\n"; continue }
            if l.hasSuffix("\\") { joined += l.dropLast() + " " } else { joined += l + "\n" }
        }
        var out: [(String, Int, [(String, String)])] = []
        for cmd in joined.split(separator: "\n") where cmd.contains("update-alternatives") {
            let tok = cmd.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            var i = 0
            while i < tok.count {
                if tok[i] == "--install", i + 4 < tok.count, let prio = Int(tok[i + 4]) {
                    out.append((tok[i + 2], prio, [(tok[i + 1], tok[i + 3])]))
                    i += 5
                } else if tok[i] == "--slave", i + 3 < tok.count, !out.isEmpty {
                    out[out.count - 1].2.append((tok[i + 1], tok[i + 3]))
                    i += 4
                } else {
                    i += 1
                }
            }
        }
        return out.filter { g in g.2.allSatisfy { !$0.0.contains("$") && !$0.1.contains("$") && $0.0.hasPrefix("/") && $0.1.hasPrefix("/") } }
    }

    func baseFiles(_ root: String, recipe: Recipe) throws {
        func put(_ path: String, _ text: String, mode: mode_t = 0o644) throws {
            let p = root + "/" + path
            if Files.exists(p) { return }
            try Files.mkdirs((p as NSString).deletingLastPathComponent)
            try Files.writeAtomically(Data(text.utf8), to: p, mode: mode)
        }
        try put("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
        try put("etc/group", "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n")
        try put("etc/hosts", "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")
        try put("etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n")
        let host = HostRelease.current
        try put(
            "etc/os-release",
            "PRETTY_NAME=\"\(host.pretty) (slurm-vm image \(recipe.name))\"\nID=\(host.id)\nVERSION_ID=\"\(host.versionID)\"\nVERSION_CODENAME=\(host.codename)\n"
        )
    }

    func extraFiles(_ r: Recipe, root: String) throws {
        for f in r.files {
            let dest = root + "/" + f.path
            try Files.mkdirs((dest as NSString).deletingLastPathComponent)
            Files.remove(dest)
            let data: Data
            if let t = f.text {
                data = Data(t.utf8)
            } else {
                let src = r.directory + "/" + f.source!
                guard let d = FileManager.default.contents(atPath: src) else { throw BuildError("\(r.path): files: cannot read \(src)") }
                data = d
            }
            try Files.writeAtomically(data, to: dest, mode: mode_t(f.mode))
        }
        for (link, target) in r.links {
            let l = root + "/" + link
            try Files.mkdirs((l as NSString).deletingLastPathComponent)
            Files.remove(l)
            try FileManager.default.createSymbolicLink(atPath: l, withDestinationPath: target)
        }
    }

    /// Compiles the agent (static, reproducible) and makes it the guest's /init.
    func installAgent(_ r: Recipe, root: String, work: String) throws {
        let src = r.directory + "/" + r.agentDir
        guard Files.exists(src + "/agent.c") else { throw BuildError("\(r.path): no guest agent sources at \(src) (agent_dir)") }
        let out = work + "/slurm-vm-agent"
        do { _ = try Apt.run(["make", "-s", "-C", src, "OUT=\(out)"]) } catch {
            throw BuildError("cannot build the guest agent (needs gcc and libc6-dev for static linking): \(error)")
        }
        let dest = root + "/usr/sbin/slurm-vm-agent"
        guard let d = FileManager.default.contents(atPath: out) else { throw BuildError("the agent build produced nothing") }
        try Files.writeAtomically(d, to: dest, mode: 0o755)
        Files.remove(root + "/init")
        try FileManager.default.createSymbolicLink(atPath: root + "/init", withDestinationPath: "/usr/sbin/slurm-vm-agent")
    }

    func installModules(_ r: Recipe, tree: String, release: String, root: String) throws -> [String] {
        let km = KernelModules(tree: tree, release: release)
        let order = try km.resolve(r.modules)
        var list = ""
        for rel in order {
            guard let d = FileManager.default.contents(atPath: km.moduleDir + "/" + rel) else { throw BuildError("cannot read module \(rel)") }
            let bytes = r.stripModuleSignatures ? KernelModules.stripSignature([UInt8](d)) : [UInt8](d)
            let guestPath = "usr/lib/modules/\(release)/\(rel)"
            try Files.mkdirs(root + "/" + (guestPath as NSString).deletingLastPathComponent)
            try Files.writeAtomically(Data(bytes), to: root + "/" + guestPath, mode: 0o644)
            list += "/" + guestPath + "\n"
        }
        try Files.writeAtomically(Data(list.utf8), to: root + "/etc/slurm-vm/modules")
        return order.map { KernelModules.canonical((($0 as NSString).lastPathComponent as NSString).deletingPathExtension) }
    }

    /// SONAMEs of the shared libraries in the tree, plus their short names (libfftw3.so.3 → fftw3).
    func sharedLibraries(_ root: String) -> [String] {
        var names: Set<String> = []
        for dir in ["usr/lib", "usr/lib64"] {
            guard let e = FileManager.default.enumerator(atPath: root + "/" + dir) else { continue }
            while let rel = e.nextObject() as? String {
                let base = (rel as NSString).lastPathComponent
                guard base.contains(".so"), !rel.hasPrefix("modules/") else { continue }
                let p = root + "/" + dir + "/" + rel
                var st = stat()
                guard lstat(p, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG,
                    let d = FileManager.default.contents(atPath: p), let elf = ELFFile([UInt8](d)), let so = elf.soname
                else { continue }
                names.insert(so)
                if let r = so.range(of: ".so") {
                    var short = String(so[..<r.lowerBound])
                    if short.hasPrefix("lib") && short.count > 3 { short.removeFirst(3) }
                    names.insert(short)
                }
            }
        }
        return names.sorted()
    }

    func treeSize(_ root: String) -> Int64 {
        var total: Int64 = 0
        guard let e = FileManager.default.enumerator(atPath: root) else { return 0 }
        while let rel = e.nextObject() as? String {
            var st = stat()
            if lstat(root + "/" + rel, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG { total += Int64(st.st_size) }
        }
        return total
    }

    func deriveAttributes(
        _ r: Recipe, kernelPkg: DebPackage, release: String, pkgs: [DebPackage], libraries: [String],
        modules: [String], unpackedBytes: Int64, initrdBytes: Int64
    ) -> [Attribute] {
        func q(_ s: String) -> String { "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\"" }
        func list(_ a: [String]) -> String { "{ " + a.map(q).joined(separator: ", ") + " }" }
        let host = HostRelease.current
        let upstream = String(kernelPkg.version.prefix { $0 != "-" && $0 != "+" })
        // Memory: the kernel's own working set, the archive and its unpacked copy (both in RAM while
        // the kernel unpacks it), and headroom for the agent and a small command; in 32 MiB steps.
        let mb = Double(1 << 20)
        let need = 96 + Double(initrdBytes) / mb + 1.2 * Double(unpackedBytes) / mb
        let minMem = r.minMemoryMB ?? Int((need / 32).rounded(.up)) * 32
        var attrs = [
            Attribute("OS", q(host.id)),
            Attribute("OSVersion", q(host.versionID)),
            Attribute("OSCodename", q(host.codename)),
            Attribute("Arch", q("x86_64")),
            Attribute("KernelVersion", q(upstream)),
            Attribute("KernelRelease", q(release)),
            Attribute("KernelFlavour", q(r.kernelFlavour)),
            Attribute("Libraries", list(Array(Set(pkgs.map(\.name) + libraries)).sorted())),
            Attribute("Packages", list(pkgs.map { "\($0.name)=\($0.version)" })),
            Attribute("Modules", list(modules)),
            Attribute("MaxVCPUs", String(r.maxVCPUs)),
            Attribute("MinMemoryMB", String(minMem)),
            Attribute("Recipe", q(r.name)),
        ]
        if !r.description.isEmpty { attrs.append(Attribute("Description", q(r.description))) }
        return attrs
    }
}

/// The Debian release the build host's apt fetches from (its packages become the image's OS).
struct HostRelease {
    var id = "debian", versionID = "12", codename = "bookworm", pretty = "Debian GNU/Linux 12"

    static var current: HostRelease {
        var r = HostRelease()
        guard let t = try? String(contentsOfFile: "/etc/os-release", encoding: .utf8) else { return r }
        for line in t.split(separator: "\n") {
            let kv = line.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { continue }
            let v = kv[1].trimmingCharacters(in: CharacterSet(charactersIn: "\""))
            switch kv[0] {
            case "ID": r.id = v
            case "VERSION_ID": r.versionID = v
            case "VERSION_CODENAME": r.codename = v
            case "PRETTY_NAME": r.pretty = v
            default: break
            }
        }
        return r
    }
}

func shellQuote(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }
