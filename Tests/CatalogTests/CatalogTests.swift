// The catalog on a real SQLite file and a real blob directory: atomic imports, references, tags,
// admin attributes, leases, verification and garbage collection, and two writers at once.

import ClassAd
import Foundation
import Support
import Testing
@testable import Catalog
#if canImport(Glibc)
import Glibc
#endif

func tempDir(_ tag: String) -> String {
    let d = NSTemporaryDirectory() + "slurm-vm-\(tag)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

func writeFile(_ path: String, _ s: String) { try! Data(s.utf8).write(to: URL(fileURLWithPath: path)) }

/// An image whose kernel and initrd are small text files, with some derived attributes.
func addImage(
    _ c: Catalog, _ name: String, _ version: String, content: String = "", attrs: [Attribute] = [], admin: [Attribute] = []
) throws -> ImageRecord {
    let dir = tempDir("src")
    writeFile(dir + "/k", "kernel \(name) \(version) \(content)")
    writeFile(dir + "/i", "initrd \(name) \(version) \(content)")
    let k = try c.blobs.ingest(dir + "/k"), i = try c.blobs.ingest(dir + "/i")
    let derived =
        [
            Attribute("OS", "\"debian\""), Attribute("OSVersion", "\"12\""), Attribute("Arch", "\"x86_64\""),
            Attribute("KernelVersion", "\"6.1.192\""), Attribute("MaxVCPUs", "8"), Attribute("MinMemoryMB", "128"),
            Attribute("Libraries", "{ \"busybox\" }"),
        ] + attrs
    let r = ImageRecord(
        name: name, version: version,
        artefacts: [
            Artefact(role: "kernel", digest: k.digest, size: k.size),
            Artefact(role: "initrd", digest: i.digest, size: i.size),
        ],
        cmdline: "quiet", derived: derived, admin: admin, source: "test")
    try c.add(r)
    return r
}

@Suite struct CatalogTests {
    @Test func blobsAreContentAddressedAndVerified() throws {
        let c = try Catalog(root: tempDir("cat"))
        let src = tempDir("src") + "/f"
        writeFile(src, "hello")
        let (d, size) = try c.blobs.ingest(src)
        #expect(d == "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
        #expect(size == 5)
        #expect(try c.blobs.ingest(src).digest == d)  // stored once
        try c.blobs.verify(d)
        // Damage it: verification names the blob and refuses.
        let p = c.blobs.path(of: d)
        chmod(p, 0o644)
        writeFile(p, "hellO")
        #expect(throws: CatalogError.self) { try c.blobs.verify(d) }
        do { try c.blobs.verify(d) } catch let e as CatalogError {
            guard case .blobCorrupt = e else { Issue.record("wrong error \(e)"); return }
            #expect(e.description.contains("refusing to use it"))
        }
    }

    @Test func referencesResolveNewestVersionTagsAndDigests() throws {
        let c = try Catalog(root: tempDir("cat"))
        _ = try addImage(c, "mpich", "1.9")
        let newest = try addImage(c, "mpich", "1.10")
        _ = try addImage(c, "minimal", "1.0")
        #expect(try c.resolve(.name("mpich")).version == "1.10")  // natural version order, not text order
        #expect(try c.resolve(.nameVersion("mpich", "1.9")).version == "1.9")
        _ = try c.tag(.nameVersion("mpich", "1.9"), "stable")
        #expect(try c.resolve(try ImageReference("mpich:stable")).version == "1.9")
        _ = try c.tag(.nameVersion("mpich", "1.10"), "stable")  // a tag moves
        #expect(try c.resolve(try ImageReference("mpich:stable")).version == "1.10")
        #expect(try c.resolve(try ImageReference("sha256:" + newest.digest.dropFirst(7).prefix(12))).label == "mpich:1.10")
        #expect(throws: CatalogError.self) { try c.resolve(.name("nope")) }
        #expect(throws: CatalogError.self) { try c.tag(.name("mpich"), "1.9") }  // a tag may not hide a version
        #expect(try c.resolve(.name("mpich")).tags == ["stable"])
    }

    @Test func sameVersionWithOtherContentsIsRefusedAndSameContentsIsANoOp() throws {
        let c = try Catalog(root: tempDir("cat"))
        let a = try addImage(c, "minimal", "1.0")
        #expect(try c.add(a) == false)
        #expect { try addImage(c, "minimal", "1.0", content: "changed") } throws: { "\($0)".contains("bump the version") }
        #expect(try c.list().count == 1)
    }

    @Test func badNamesAreRefusedWithTheReason() {
        for bad in ["../etc", "a b", "a;rm -rf", "-x", ".hidden", "a/b", "$(id)", String(repeating: "a", count: 65), ""] {
            #expect(throws: CatalogError.self, "\(bad)") { try ImageReference(bad) }
        }
        #expect(throws: CatalogError.self) { try ImageReference("sha256:XYZ") }
    }

    @Test func adminAttributesAreValidatedAndMerged() throws {
        let c = try Catalog(root: tempDir("cat"))
        _ = try addImage(c, "mpich", "1.0")
        #expect(throws: CatalogError.self) { try ImageRecord.adminAttribute("Requirements", "TARGET.Owner ==") }
        #expect(throws: CatalogError.self) { try ImageRecord.adminAttribute("OSVersion", "\"13\"") }
        let r = try c.setAttributes(
            .name("mpich"),
            set: [
                try ImageRecord.adminAttribute("Requirements", "TARGET.Owner == \"alice\""),
                try ImageRecord.adminAttribute("Site", "\"hpc\""),
            ], unset: [])
        let ad = try r.ad()
        #expect(Unparser.unparse(ad.lookup("Requirements")!) == "TARGET.Owner == \"alice\"")
        let r2 = try c.setAttributes(.name("mpich"), set: [], unset: ["site"])
        #expect(try r2.ad().lookup("Site") == nil)
        #expect(try c.resolve(.name("mpich")).admin.count == 1)
    }

    @Test func removalRespectsLiveLeasesAndGCKeepsReferencedBlobs() throws {
        let c = try Catalog(root: tempDir("cat"))
        let a = try addImage(c, "a", "1")
        let b = try addImage(c, "b", "1")
        try c.lease(a, holder: "guest-1", pid: getpid())
        #expect { try c.remove(.name("a"), force: false) } throws: { "\($0)".contains("in use by guest-1") }
        // A lease held by a dead process does not count.
        try c.lease(b, holder: "guest-2", pid: 999_999)
        _ = try c.remove(.name("b"), force: false)
        _ = try c.remove(.name("a"), force: true)
        let before = c.blobs.all().count
        #expect(before == 4)
        let rep = try c.gc()
        #expect(rep.removed.count == 4)
        #expect(c.blobs.all().isEmpty)
        _ = a
    }

    @Test func gcLeavesBlobsOfLiveImagesAlone() throws {
        let c = try Catalog(root: tempDir("cat"))
        let a = try addImage(c, "a", "1")
        let stray = tempDir("src") + "/s"
        writeFile(stray, "unreferenced")
        let (d, _) = try c.blobs.ingest(stray)
        let rep = try c.gc()
        #expect(rep.removed == [d])
        for art in a.artefacts { try c.blobs.verify(art.digest) }
    }

    @Test func twoWritersAtOnceNeverCorruptTheCatalog() throws {
        let root = tempDir("cat")
        _ = try Catalog(root: root)
        final class Errs: @unchecked Sendable { let l = NSLock(); var e: [String] = [] }
        let errs = Errs()
        DispatchQueue.concurrentPerform(iterations: 4) { w in
            do {
                let c = try Catalog(root: root)  // its own connection, as a second CLI would have
                for i in 0..<10 { _ = try addImage(c, "img\(w)", "\(i)") }
            } catch { errs.l.lock(); errs.e.append("\(error)"); errs.l.unlock() }
        }
        #expect(errs.e.isEmpty)
        let c = try Catalog(root: root)
        #expect(try c.list().count == 40)
        for r in try c.list() { for a in r.artefacts { try c.blobs.verify(a.digest) } }
    }

    @Test func atomicWriteLeavesNoTemporaryFiles() throws {
        let d = tempDir("atomic")
        try Files.writeAtomically(Data("one".utf8), to: d + "/f")
        try Files.writeAtomically(Data("two".utf8), to: d + "/f")
        #expect(try FileManager.default.contentsOfDirectory(atPath: d) == ["f"])
        #expect(String(decoding: FileManager.default.contents(atPath: d + "/f")!, as: UTF8.self) == "two")
    }
}
