// `slurm-vm image …`: the admin's view of the catalog.

import ArgumentParser
import Catalog
import ClassAd
import Foundation
import ImageBuilder

struct ImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Build, import and manage guest images in the catalog.",
        subcommands: [Build.self, Add.self, List.self, Show.self, Remove.self, Tag.self, SetAttr.self, Verify.self, GC.self, Push.self])

    struct Build: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Build an image from a recipe (Images/*.toml) and add it to the catalog.")
        @OptionGroup var catalog: CatalogOption
        @Argument(help: "The recipe.") var recipe: String
        @Option(help: "Use this version instead of the recipe's.") var version: String?
        @Option(help: "Where downloaded .deb files are cached.") var debCache: String?
        @Flag(help: "Keep the build's work directory (for debugging a recipe).") var keepWork = false
        @Flag(help: "Print the result as JSON (phases and sizes too).") var json = false

        func run() throws {
            try reporting {
                let r = try Recipe.load(recipe)
                if let version { try Names.check(version, what: "the version") }
                let cat = try catalog.open()
                let progress = TerminalProgress()
                var b = ImageBuilder(catalog: cat, progress: progress, debCache: debCache)
                b.keepWork = keepWork
                b.versionOverride = version
                let res = try b.build(r)
                progress.finish()
                if json {
                    print(
                        jsonString([
                            "name": res.record.name, "version": res.record.version, "digest": res.record.digest,
                            "added": res.added, "packages": res.packages, "kernel_bytes": res.kernelBytes,
                            "initrd_bytes": res.initrdBytes, "phases": Dictionary(uniqueKeysWithValues: res.phases.map { ($0.0, $0.1) }),
                        ]))
                } else {
                    let verb = res.added ? "added" : "already in the catalog (identical contents):"
                    print("\(verb) \(res.record.label)  \(res.record.digest)")
                    print(
                        "  kernel \(humanBytes(res.kernelBytes)), initramfs \(humanBytes(res.initrdBytes)), \(res.packages) packages, total \(humanBytes(res.record.totalSize))"
                    )
                }
            }
        }
    }

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Import an existing kernel, initramfs and/or root disk as an image.")
        @OptionGroup var catalog: CatalogOption
        @Argument(help: "NAME:VERSION of the new image.") var image: String
        @Option(help: "The kernel (bzImage or vmlinux).") var kernel: String
        @Option(help: "An initramfs (cpio, optionally compressed).") var initrd: String?
        @Option(help: "A raw root disk (attached read-only as virtio-blk).") var disk: String?
        @Option(help: "The kernel command line the image needs.") var cmdline: String = ""
        @Option(
            name: .customLong("attr"),
            help: ArgumentHelp("An attribute of the image's ad, NAME=EXPRESSION (repeatable), e.g. OS=\"debian\".", valueName: "name=expr"))
        var attrs: [String] = []

        func run() throws {
            try reporting {
                guard case .nameVersion(let name, let version) = try ImageReference(image) else {
                    throw ValidationError("give the new image as NAME:VERSION")
                }
                let cat = try catalog.open()
                var derived: [Attribute] = [
                    Attribute("Arch", "\"x86_64\""), Attribute("MaxVCPUs", "64"), Attribute("MinMemoryMB", "256"),
                    Attribute("Libraries", "{ }"),
                ]
                var admin: [Attribute] = []
                for a in attrs {
                    guard let eq = a.firstIndex(of: "=") else { throw ValidationError("--attr \(a): write NAME=EXPRESSION") }
                    let n = String(a[..<eq]), e = String(a[a.index(after: eq)...])
                    do { _ = try Parser.parseExpression(e) } catch {
                        throw CatalogError.invalidAttribute(n, reason: "not a valid ClassAd expression: \(error)")
                    }
                    // Content attributes describe what the admin imports; policy ones are admin attributes.
                    if ImageRecord.protected.contains(n.lowercased()) || ["maxvcpus", "minmemorymb"].contains(n.lowercased()) {
                        if ["name", "version", "digest", "sizemb", "tags"].contains(n.lowercased()) { throw CatalogError.protectedAttribute(n) }
                        derived.removeAll { $0.name.lowercased() == n.lowercased() }
                        derived.append(Attribute(n, e))
                    } else {
                        admin.append(try ImageRecord.adminAttribute(n, e))
                    }
                }
                var files: [(String, String)] = [("kernel", kernel)]
                if let initrd { files.append(("initrd", initrd)) }
                if let disk { files.append(("disk", disk)) }
                for (role, f) in files where !FileManager.default.isReadableFile(atPath: f) {
                    throw CatalogError.badArtefact("cannot read the \(role) file \(f)")
                }
                let rec: ImageRecord = try cat.importing {
                    var artefacts: [Artefact] = []
                    for (role, f) in files {
                        let (d, s) = try cat.blobs.ingest(f)
                        artefacts.append(Artefact(role: role, digest: d, size: s))
                    }
                    let r = ImageRecord(
                        name: name, version: version, artefacts: artefacts, cmdline: cmdline,
                        derived: derived, admin: admin, source: "add")
                    if !(try cat.add(r)) { print("already in the catalog (identical contents): \(r.label)") }
                    return r
                }
                print("added \(rec.label)  \(rec.digest)")
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List the catalog's images.")
        @OptionGroup var catalog: CatalogOption
        @Flag(help: "JSON output.") var json = false

        func run() throws {
            try reporting {
                let recs = try catalog.open().list()
                if json {
                    print(jsonString(try recs.map { try recordJSON($0) }))
                    return
                }
                if recs.isEmpty { print("the catalog is empty (add images with `slurm-vm image build` or `image add`)"); return }
                let rows = try recs.map { r -> [String] in
                    let ad = try r.ad()
                    func s(_ n: String) -> String {
                        switch ad.evaluate(n) {
                        case .string(let b): return b.description;
                        case .integer(let i): return String(i);
                        default: return "-"
                        }
                    }
                    return [
                        r.name, r.version, r.shortDigest, humanBytes(r.totalSize), s("OS") + " " + s("OSVersion"), s("KernelVersion"),
                        s("MaxVCPUs"), s("MinMemoryMB"), r.tags.joined(separator: ","), Self.date(r.created),
                    ]
                }
                print(table(["NAME", "VERSION", "DIGEST", "SIZE", "OS", "KERNEL", "MAXVCPUS", "MINMEM(MB)", "TAGS", "CREATED"], rows))
            }
        }

        static func date(_ d: Date) -> String {
            let f = DateFormatter(); f.dateFormat = "yyyy-MM-dd HH:mm"; f.timeZone = TimeZone(identifier: "UTC")
            return f.string(from: d)
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print an image's ad (ClassAd syntax), or its whole record with --json.")
        @OptionGroup var catalog: CatalogOption
        @Argument(help: "NAME, NAME:VERSION, NAME:TAG or sha256:DIGEST.") var image: String
        @Flag(help: "JSON output: the record, artefacts and ad.") var json = false

        func run() throws {
            try reporting {
                let r = try catalog.open().resolve(try ImageReference(image))
                if json { print(jsonString(try recordJSON(r))); return }
                print("# \(r.label)  (\(r.source))")
                for a in r.artefacts { print("# \(a.role): \(a.digest) \(humanBytes(a.size))") }
                if !r.cmdline.isEmpty { print("# cmdline: \(r.cmdline)") }
                print(Unparser.unparseOld(try r.ad()))
            }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove an image (its blobs go with `image gc`).")
        @OptionGroup var catalog: CatalogOption
        @Argument var images: [String]
        @Flag(help: "Remove even while guests use it (they keep running).") var force = false

        func run() throws {
            try reporting {
                let cat = try catalog.open()
                for i in images {
                    let r = try cat.remove(try ImageReference(i), force: force)
                    print("removed \(r.label)")
                }
            }
        }
    }

    struct Tag: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Point NAME:TAG at an image (e.g. `image tag mpich:1.2 stable`); --delete removes a tag.")
        @OptionGroup var catalog: CatalogOption
        @Argument(help: "The image (or NAME:TAG with --delete).") var image: String
        @Argument(help: "The tag.") var tag: String?
        @Flag(help: "Remove the tag NAME:TAG.") var delete = false

        func run() throws {
            try reporting {
                let cat = try catalog.open()
                if delete {
                    guard case .nameVersion(let n, let t) = try ImageReference(image), tag == nil else {
                        throw ValidationError("give NAME:TAG to delete")
                    }
                    try cat.untag(n, t)
                    print("removed tag \(n):\(t)")
                    return
                }
                guard let tag else { throw ValidationError("give the tag to set") }
                let r = try cat.tag(try ImageReference(image), tag)
                print("\(r.name):\(tag) -> \(r.label)")
            }
        }
    }

    struct SetAttr: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set", abstract: "Set admin attributes of an image's ad, e.g. Requirements (who may use it) and Rank.",
            discussion: """
                Each assignment is NAME=EXPRESSION, checked by the ClassAd parser. The image sees the job as TARGET:
                  slurm-vm image set mpich 'Requirements=member(TARGET.Account, {"physics", "chem"})'
                  slurm-vm image set mpich Rank=10 --unset Site
                """)
        @OptionGroup var catalog: CatalogOption
        @Argument var image: String
        @Argument(help: "NAME=EXPRESSION assignments.") var assignments: [String] = []
        @Option(help: "Remove an admin attribute (repeatable).") var unset: [String] = []

        func run() throws {
            try reporting {
                guard !assignments.isEmpty || !unset.isEmpty else { throw ValidationError("give NAME=EXPRESSION assignments or --unset NAME") }
                var attrs: [Attribute] = []
                for a in assignments {
                    guard let eq = a.firstIndex(of: "=") else { throw ValidationError("'\(a)': write NAME=EXPRESSION") }
                    attrs.append(
                        try ImageRecord.adminAttribute(String(a[..<eq]).trimmingCharacters(in: .whitespaces), String(a[a.index(after: eq)...])))
                }
                let r = try catalog.open().setAttributes(try ImageReference(image), set: attrs, unset: unset)
                print("updated \(r.label)")
                print(Unparser.unparseOld(try r.ad()))
            }
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Re-hash every blob of the given images (default: all) against its digest.")
        @OptionGroup var catalog: CatalogOption
        @Argument var images: [String] = []

        func run() throws {
            try reporting {
                let cat = try catalog.open()
                let recs = images.isEmpty ? try cat.list() : try images.map { try cat.resolve(try ImageReference($0)) }
                var bad = 0
                for r in recs {
                    for a in r.artefacts {
                        do { try cat.blobs.verify(a.digest); print("ok      \(r.label) \(a.role) \(a.digest)") } catch {
                            bad += 1; print("FAILED  \(r.label) \(a.role): \(error)")
                        }
                    }
                }
                if bad > 0 { throw ExitCode(1) }
            }
        }
    }

    struct GC: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "gc", abstract: "Delete blobs no image refers to.")
        @OptionGroup var catalog: CatalogOption
        @Flag(help: "Only say what would be deleted.") var dryRun = false

        func run() throws {
            try reporting {
                let rep = try catalog.open().gc(dryRun: dryRun)
                for d in rep.removed { print("\(dryRun ? "would remove" : "removed") \(d)") }
                print("\(rep.removed.count) blob(s), \(humanBytes(rep.freedBytes)) \(dryRun ? "reclaimable" : "freed")")
            }
        }
    }
}

func recordJSON(_ r: ImageRecord) throws -> [String: Any] {
    [
        "name": r.name, "version": r.version, "digest": r.digest, "tags": r.tags, "cmdline": r.cmdline, "source": r.source,
        "created": ISO8601DateFormatter().string(from: r.created), "size_bytes": r.totalSize,
        "artefacts": r.artefacts.map { ["role": $0.role, "digest": $0.digest, "size": $0.size] as [String: Any] },
        "ad": Unparser.unparse(try r.ad()),
    ]
}
