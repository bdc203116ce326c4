// The image catalog: an SQLite database (through GRDB) next to the blob store, under one root
// (default /var/lib/slurm-vm). Every change is one transaction; blobs are stored before the record
// that names them commits, so a crash leaves at worst an unreferenced blob (removed by `gc`), never an
// image with missing parts. `gc` takes the catalog lock exclusively; imports hold it shared.

import ClassAd
import Foundation
import GRDB
import Support
#if canImport(Glibc)
import Glibc
#endif

public final class Catalog: @unchecked Sendable {
    public let root: String
    public let blobs: BlobStore
    let db: DatabaseQueue
    /// The images as matching needs them, kept between submissions while the catalog is unchanged
    /// (Matching.swift).
    var prepared: PreparedImages?
    let preparedLock = NSLock()

    public static var defaultRoot: String {
        ProcessInfo.processInfo.environment["SLURM_VM_CATALOG"] ?? "/var/lib/slurm-vm"
    }

    public init(root: String = Catalog.defaultRoot) throws {
        self.root = root
        do { try Files.mkdirs(root) } catch {
            throw FileError("cannot use catalog directory \(root): \(error); set SLURM_VM_CATALOG or --catalog to a writable directory")
        }
        blobs = try BlobStore(root: root)
        var config = Configuration()
        config.busyMode = .timeout(30)
        config.foreignKeysEnabled = true
        config.journalMode = .wal
        do {
            db = try DatabaseQueue(path: root + "/catalog.db", configuration: config)
            try Catalog.migrator.migrate(db)
        } catch {
            throw FileError("cannot open the catalog database \(root)/catalog.db: \(error)")
        }
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE image (
                      id INTEGER PRIMARY KEY,
                      name TEXT NOT NULL, version TEXT NOT NULL, digest TEXT NOT NULL,
                      record TEXT NOT NULL,           -- the ImageRecord as JSON
                      created REAL NOT NULL,
                      UNIQUE(name, version));
                    CREATE INDEX image_digest ON image(digest);
                    CREATE TABLE artefact (
                      image_id INTEGER NOT NULL REFERENCES image(id) ON DELETE CASCADE,
                      role TEXT NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL,
                      PRIMARY KEY(image_id, role));
                    CREATE TABLE tag (
                      name TEXT NOT NULL, tag TEXT NOT NULL,
                      image_id INTEGER NOT NULL REFERENCES image(id) ON DELETE CASCADE,
                      PRIMARY KEY(name, tag));
                    -- Who is using an image now: a guest (holder) and the process that keeps it alive.
                    CREATE TABLE lease (
                      holder TEXT PRIMARY KEY,
                      image_id INTEGER NOT NULL REFERENCES image(id) ON DELETE CASCADE,
                      pid INTEGER NOT NULL, pid_start INTEGER NOT NULL, since REAL NOT NULL);
                    """)
        }
        return m
    }

    // MARK: reading

    public func list() throws -> [ImageRecord] {
        try db.read { db in
            // Tags in one query, not one per image: matching reads the whole catalog after every change.
            var tags: [Int64: [String]] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT image_id, tag FROM tag ORDER BY tag") {
                tags[row["image_id"], default: []].append(row["tag"])
            }
            return try Row.fetchAll(db, sql: "SELECT id, record FROM image ORDER BY name, created").map {
                try record(from: $0, tags: tags[$0["id"]] ?? [])
            }
        }
    }

    func record(from row: Row, _ db: Database) throws -> ImageRecord {
        let id: Int64 = row["id"]
        return try record(from: row, tags: try String.fetchAll(db, sql: "SELECT tag FROM tag WHERE image_id = ? ORDER BY tag", arguments: [id]))
    }

    func record(from row: Row, tags: [String]) throws -> ImageRecord {
        let json: String = row["record"]
        var r = try JSONDecoder().decode(ImageRecord.self, from: Data(json.utf8))
        r.tags = tags
        return r
    }

    /// The image a reference names. NAME alone means the newest version (by version order).
    public func resolve(_ ref: ImageReference) throws -> ImageRecord {
        try db.read { db in try resolve(ref, db).record }
    }

    func resolve(_ ref: ImageReference, _ db: Database) throws -> (id: Int64, record: ImageRecord) {
        var rows: [Row]
        switch ref {
        case .name(let n):
            rows = try Row.fetchAll(db, sql: "SELECT id, record FROM image WHERE name = ?", arguments: [n])
            if rows.count > 1 {
                let recs = try rows.map { (try record(from: $0, db), $0) }
                let best = recs.max { Builtins.naturalCompare(Array($0.0.version.utf8), Array($1.0.version.utf8)) < 0 }!
                rows = [best.1]
            }
        case .nameVersion(let n, let v):
            rows = try Row.fetchAll(db, sql: "SELECT id, record FROM image WHERE name = ? AND version = ?", arguments: [n, v])
            if rows.isEmpty {
                rows = try Row.fetchAll(
                    db,
                    sql: """
                        SELECT image.id, image.record FROM image JOIN tag ON tag.image_id = image.id
                        WHERE tag.name = ? AND tag.tag = ?
                        """, arguments: [n, v])
            }
        case .digest(let h):
            rows = try Row.fetchAll(db, sql: "SELECT id, record FROM image WHERE digest LIKE ?", arguments: ["sha256:\(h)%"])
            if rows.count > 1 {
                throw CatalogError.ambiguous(ref.description, candidates: try rows.map { try record(from: $0, db).label })
            }
        }
        guard let row = rows.first else {
            let known = try String.fetchAll(db, sql: "SELECT name || ':' || version FROM image ORDER BY name, version")
            throw CatalogError.noSuchImage(ref.description, known: known)
        }
        return (row["id"], try record(from: row, db))
    }

    // MARK: writing

    /// Adds an image whose blobs are already in the store. The same name, version and digest again is a
    /// no-op (returns false); the same name and version with other contents is refused.
    @discardableResult
    public func add(_ record: ImageRecord) throws -> Bool { try add([record]) == 1 }

    /// Adds several images in one transaction (all or none); returns how many were new.
    @discardableResult
    public func add(_ records: [ImageRecord]) throws -> Int {
        for record in records {
            for a in record.artefacts where !blobs.has(a.digest) {
                throw CatalogError.blobMissing(digest: a.digest, path: blobs.path(of: a.digest))
            }
        }
        return try db.write { db in try records.reduce(0) { n, r in n + (try add(r, db) ? 1 : 0) } }
    }

    func add(_ record: ImageRecord, _ db: Database) throws -> Bool {
        if let row = try Row.fetchOne(
            db, sql: "SELECT digest FROM image WHERE name = ? AND version = ?",
            arguments: [record.name, record.version])
        {
            let existing: String = row["digest"]
            if existing == record.digest { return false }
            throw CatalogError.versionConflict(name: record.name, version: record.version, existing: existing, new: record.digest)
        }
        var stored = record
        stored.tags = []
        let json = String(decoding: try Self.encoder.encode(stored), as: UTF8.self)
        try db.execute(
            sql: "INSERT INTO image (name, version, digest, record, created) VALUES (?, ?, ?, ?, ?)",
            arguments: [record.name, record.version, record.digest, json, record.created.timeIntervalSince1970])
        let id = db.lastInsertedRowID
        for a in record.artefacts {
            try db.execute(
                sql: "INSERT INTO artefact (image_id, role, digest, size) VALUES (?, ?, ?, ?)",
                arguments: [id, a.role, a.digest, a.size])
        }
        for t in record.tags { try setTag(db, name: record.name, tag: t, id: id) }
        return true
    }

    static var encoder: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return e
    }

    func setTag(_ db: Database, name: String, tag: String, id: Int64) throws {
        try db.execute(
            sql: "INSERT INTO tag (name, tag, image_id) VALUES (?, ?, ?) ON CONFLICT(name, tag) DO UPDATE SET image_id = excluded.image_id",
            arguments: [name, tag, id])
    }

    /// Points NAME:TAG at the image (moving the tag if another version had it).
    public func tag(_ ref: ImageReference, _ tag: String) throws -> ImageRecord {
        try Names.check(tag, what: "the tag")
        return try db.write { db in
            let (id, rec) = try resolve(ref, db)
            if try Row.fetchOne(db, sql: "SELECT 1 FROM image WHERE name = ? AND version = ?", arguments: [rec.name, tag]) != nil {
                throw CatalogError.invalidName(tag, reason: "\(rec.name) has a version called \(tag); a tag must not hide a version")
            }
            try setTag(db, name: rec.name, tag: tag, id: id)
            return try resolve(.nameVersion(rec.name, rec.version), db).record
        }
    }

    public func untag(_ name: String, _ tag: String) throws {
        try db.write { db in
            try db.execute(sql: "DELETE FROM tag WHERE name = ? AND tag = ?", arguments: [name, tag])
            if db.changesCount == 0 { throw CatalogError.noSuchImage("\(name):\(tag)", known: []) }
        }
    }

    /// Sets and unsets admin attributes (already validated) in one transaction.
    public func setAttributes(_ ref: ImageReference, set: [Attribute], unset: [String]) throws -> ImageRecord {
        try db.write { db in
            var (id, rec) = try resolve(ref, db)
            let drop = Set(unset.map { $0.lowercased() } + set.map { $0.name.lowercased() })
            rec.admin = rec.admin.filter { !drop.contains($0.name.lowercased()) } + set
            let tags = rec.tags
            rec.tags = []
            let json = String(decoding: try Self.encoder.encode(rec), as: UTF8.self)
            try db.execute(sql: "UPDATE image SET record = ? WHERE id = ?", arguments: [json, id])
            rec.tags = tags
            _ = id
            return rec
        }
    }

    /// Removes an image record. Refuses while a live guest holds a lease on it, unless `force`.
    public func remove(_ ref: ImageReference, force: Bool) throws -> ImageRecord {
        try db.write { db in
            let (id, rec) = try resolve(ref, db)
            let holders = try liveHolders(db, imageID: id)
            if !holders.isEmpty && !force { throw CatalogError.inUse(rec.label, holders: holders) }
            try db.execute(sql: "DELETE FROM image WHERE id = ?", arguments: [id])
            return rec
        }
    }

    // MARK: leases (images in use)

    /// Records that `holder` (a guest) uses the image until `pid` (the process keeping it) exits.
    public func lease(_ record: ImageRecord, holder: String, pid: Int32) throws {
        try db.write { db in
            guard
                let id = try Int64.fetchOne(
                    db, sql: "SELECT id FROM image WHERE digest = ? AND name = ? AND version = ?",
                    arguments: [record.digest, record.name, record.version])
            else {
                throw CatalogError.noSuchImage(record.label, known: [])
            }
            try db.execute(
                sql: "INSERT OR REPLACE INTO lease (holder, image_id, pid, pid_start, since) VALUES (?, ?, ?, ?, ?)",
                arguments: [holder, id, pid, ProcessIdentity.startTime(of: pid) ?? 0, Date().timeIntervalSince1970])
        }
    }

    public func release(holder: String) {
        _ = try? db.write { db in try db.execute(sql: "DELETE FROM lease WHERE holder = ?", arguments: [holder]) }
    }

    /// Holders whose process is still the one that took the lease; dead ones are dropped.
    func liveHolders(_ db: Database, imageID: Int64) throws -> [String] {
        var live: [String] = []
        for row in try Row.fetchAll(db, sql: "SELECT holder, pid, pid_start FROM lease WHERE image_id = ?", arguments: [imageID]) {
            let holder: String = row["holder"], pid: Int32 = row["pid"], start: Int64 = row["pid_start"]
            if ProcessIdentity.isAlive(pid: pid, start: start) {
                live.append(holder)
            } else {
                try db.execute(sql: "DELETE FROM lease WHERE holder = ?", arguments: [holder])
            }
        }
        return live
    }

    public func holders(of ref: ImageReference) throws -> [String] {
        try db.write { db in try liveHolders(db, imageID: try resolve(ref, db).id) }
    }

    // MARK: maintenance

    public struct GCReport: Sendable { public var removed: [String]; public var freedBytes: Int64 }

    /// Deletes blobs no image refers to, and staging files of crashed imports.
    public func gc(dryRun: Bool = false) throws -> GCReport {
        let lock = try FileLock(path: root + "/catalog.lock", mode: .exclusive)
        defer { _ = lock }
        let referenced = Set(try db.read { db in try String.fetchAll(db, sql: "SELECT DISTINCT digest FROM artefact") })
        var report = GCReport(removed: [], freedBytes: 0)
        for d in blobs.all() where !referenced.contains(d) {
            report.removed.append(d)
            report.freedBytes += blobs.size(of: d)
            if !dryRun { blobs.remove(d) }
        }
        if !dryRun { blobs.cleanStaging(olderThan: 0) }
        return report
    }

    /// Holds the catalog lock shared while blobs are stored and their record is added, so `gc` cannot
    /// delete a blob between the two steps.
    public func importing<T>(_ body: () throws -> T) throws -> T {
        let lock = try FileLock(path: root + "/catalog.lock", mode: .shared)
        defer { _ = lock }
        return try body()
    }
}
