// Debian packages through the host's apt, without root: apt's own resolver computes the dependency
// closure against an empty package database (so nothing installed on the build host is assumed), the
// recipe's exclusions are pruned with everything only they needed, and `apt-get download` fetches the
// exact versions into a cache, each .deb checked against the SHA-256 the archive publishes.

import Catalog
import Foundation
import Support

struct DebPackage: Equatable, Sendable {
    var name: String
    var version: String
    var arch: String
    var filename: String { "\(name)_\(version.replacingOccurrences(of: ":", with: "%3a"))_\(arch).deb" }
    var sha256: String = ""
    var depends: [[String]] = []  // groups of alternatives, names only
    var provides: [String] = []
    var installedSizeKB: Int = 0
}

struct Apt {
    let cacheDir: String
    let workDir: String

    /// Runs a command, returning stdout; throws with its stderr when it fails.
    static func run(_ args: [String], cwd: String? = nil) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
        var env = ProcessInfo.processInfo.environment
        env["LC_ALL"] = "C"; env["DEBIAN_FRONTEND"] = "noninteractive"
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out; p.standardError = err
        do { try p.run() } catch { throw BuildError("cannot run \(args[0]): \(error.localizedDescription)") }
        // Read both pipes while the command runs so neither fills up.
        final class Buf: @unchecked Sendable { var d = Data() }
        let eb = Buf()
        let t = Thread { eb.d = err.fileHandleForReading.readDataToEndOfFile() }
        t.start()
        let od = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        while !t.isFinished { usleep(1000) }
        if p.terminationStatus != 0 {
            let msg = String(decoding: eb.d, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            throw BuildError("\(args.prefix(3).joined(separator: " ")) failed (exit \(p.terminationStatus)): \(msg)")
        }
        return String(decoding: od, as: UTF8.self)
    }

    var emptyStatus: String { workDir + "/dpkg-status" }

    /// apt rebuilds its package cache for a foreign status file on every call (1.5 s here) unless the
    /// cache files are ours to keep: they live next to the .deb cache.
    func aptOptions() throws -> [String] {
        if !FileManager.default.fileExists(atPath: emptyStatus) {
            _ = FileManager.default.createFile(atPath: emptyStatus, contents: Data())
        }
        let pc = (cacheDir as NSString).deletingLastPathComponent + "/apt"
        try? FileManager.default.createDirectory(atPath: pc, withIntermediateDirectories: true)
        return [
            "-o", "Dir::State::status=\(emptyStatus)", "-o", "Debug::NoLocking=1", "-o", "APT::Get::Show-User-Simulation-Note=false",
            "-o", "Dir::Cache::pkgcache=\(pc)/pkgcache.bin", "-o", "Dir::Cache::srcpkgcache=\(pc)/srcpkgcache.bin",
        ]
    }

    /// The versioned kernel package a metapackage (linux-image-cloud-amd64) stands for.
    func kernelBehind(_ meta: String) throws -> String {
        let out = try Apt.run(["apt-cache"] + (try aptOptions()) + ["depends", meta])
        for line in out.split(separator: "\n") {
            let t = line.trimmingCharacters(in: .whitespaces)
            if t.hasPrefix("Depends: linux-image-") { return String(t.dropFirst("Depends: ".count)) }
        }
        throw BuildError(
            "cannot find the kernel package behind \(meta) (is it a kernel flavour apt knows? try `apt-cache policy \(meta)`); or set kernel.package in the recipe"
        )
    }

    /// Name and candidate version of one package, described.
    func candidate(_ name: String) throws -> DebPackage {
        let out = try Apt.run(["apt-cache"] + (try aptOptions()) + ["show", "--no-all-versions", name])
        var version: String?, arch = "amd64"
        for line in out.split(separator: "\n") {
            if line.hasPrefix("Version: ") { version = String(line.dropFirst(9)) }
            if line.hasPrefix("Architecture: ") { arch = String(line.dropFirst(14)) }
            if line.isEmpty { break }
        }
        guard let version else { throw BuildError("apt knows no package \(name)") }
        return try describe([DebPackage(name: name, version: version, arch: arch)])[0]
    }

    /// The full closure of `packages` (no Recommends), as apt would install it on an empty system.
    func closure(of packages: [String]) throws -> [DebPackage] {
        let out: String
        do {
            out = try Apt.run(["apt-get"] + (try aptOptions()) + ["-s", "-y", "--no-install-recommends", "install"] + packages)
        } catch let e as BuildError {
            if let line = e.description.split(separator: "\n").first(where: {
                $0.contains("Unable to locate package") || $0.contains("has no installation candidate")
            }) {
                throw BuildError(
                    "apt cannot find a package the recipe names: \(line.replacingOccurrences(of: "E: ", with: "")); check the name with `apt-cache policy NAME` (and that `apt-get update` has run)"
                )
            }
            throw e
        }
        var pkgs: [DebPackage] = []
        for line in out.split(separator: "\n") where line.hasPrefix("Inst ") {
            // Inst NAME (VERSION ARCHIVE [ARCH])   or   Inst NAME [OLD] (VERSION ...)
            let parts = line.split(separator: " ")
            guard parts.count >= 3 else { continue }
            let name = String(parts[1])
            guard let open = line.firstIndex(of: "("), let close = line[open...].firstIndex(of: ")") else { continue }
            let inner = line[line.index(after: open)..<close]
            guard let ver = inner.split(separator: " ").first else { continue }
            var arch = "amd64"
            if let lb = inner.lastIndex(of: "["), let rb = inner[lb...].firstIndex(of: "]") { arch = String(inner[inner.index(after: lb)..<rb]) }
            pkgs.append(DebPackage(name: name.split(separator: ":").first.map(String.init) ?? name, version: String(ver), arch: arch))
        }
        return try describe(pkgs)
    }

    /// Fills in checksums, dependencies and provides from `apt-cache show NAME=VERSION`.
    func describe(_ pkgs: [DebPackage]) throws -> [DebPackage] {
        if pkgs.isEmpty { return [] }
        let out = try Apt.run(["apt-cache"] + (try aptOptions()) + ["show", "--no-all-versions"] + pkgs.map { "\($0.name)=\($0.version)" })
        var byKey: [String: [String: String]] = [:]
        for stanza in out.components(separatedBy: "\n\n") {
            var fields: [String: String] = [:]
            var last: String?
            for line in stanza.split(separator: "\n", omittingEmptySubsequences: true) {
                if line.first == " ", let l = last { fields[l, default: ""] += "\n" + line; continue }
                guard let c = line.firstIndex(of: ":") else { continue }
                let k = String(line[..<c]), v = line[line.index(after: c)...].trimmingCharacters(in: .whitespaces)
                fields[k] = v; last = k
            }
            if let n = fields["Package"], let v = fields["Version"] { byKey["\(n)=\(v)"] = fields }
        }
        return pkgs.map { p in
            var q = p
            if let f = byKey["\(p.name)=\(p.version)"] {
                q.sha256 = f["SHA256"] ?? ""
                q.installedSizeKB = Int(f["Installed-Size"] ?? "") ?? 0
                q.depends = Apt.parseDepends((f["Pre-Depends"].map { $0 + ", " } ?? "") + (f["Depends"] ?? ""))
                q.provides = Apt.parseDepends(f["Provides"] ?? "").compactMap { $0.first }
            }
            return q
        }
    }

    static func parseDepends(_ s: String) -> [[String]] {
        s.split(separator: ",").map { group in
            group.split(separator: "|").compactMap { alt in
                let n = alt.trimmingCharacters(in: .whitespaces).prefix { !" (:[".contains($0) }
                return n.isEmpty ? nil : String(n)
            }
        }.filter { !$0.isEmpty }
    }

    /// Keeps what the requested packages need without passing through an excluded package.
    static func prune(_ all: [DebPackage], roots: [String], exclude: Set<String>) -> [DebPackage] {
        var byName: [String: DebPackage] = [:]
        var provider: [String: String] = [:]
        for p in all { byName[p.name] = p; for v in p.provides where provider[v] == nil { provider[v] = p.name } }
        var keep: Set<String> = []
        var queue = roots.filter { !exclude.contains($0) }
        while let n = queue.popLast() {
            guard !keep.contains(n), let p = byName[n] else { continue }
            keep.insert(n)
            for group in p.depends {
                // The first alternative the closure contains (by name, else by what provides it).
                let pick = group.lazy.compactMap { byName[$0] != nil ? $0 : provider[$0] }.first
                if let pick, !exclude.contains(pick) { queue.append(pick) }
            }
        }
        return all.filter { keep.contains($0.name) }.sorted { $0.name < $1.name }
    }

    /// The .deb files of `pkgs`, downloading those the cache lacks; `progress(done, total)` as it goes.
    func fetch(_ pkgs: [DebPackage], progress: (Int, Int) -> Void) throws -> [String] {
        try FileManager.default.createDirectory(atPath: cacheDir, withIntermediateDirectories: true)
        var missing = pkgs.filter { !valid($0) }
        var done = pkgs.count - missing.count
        progress(done, pkgs.count)
        // In batches, so the display moves and one failure names few packages.
        while !missing.isEmpty {
            let batch = Array(missing.prefix(8))
            missing.removeFirst(batch.count)
            _ = try Apt.run(["apt-get"] + (try aptOptions()) + ["download"] + batch.map { "\($0.name)=\($0.version)" }, cwd: cacheDir)
            for p in batch where !valid(p) {
                throw BuildError("downloaded \(p.filename) does not match the archive's SHA-256; remove it from \(cacheDir) and retry")
            }
            done += batch.count
            progress(done, pkgs.count)
        }
        return pkgs.map { cacheDir + "/" + $0.filename }
    }

    func valid(_ p: DebPackage) -> Bool {
        let path = cacheDir + "/" + p.filename
        guard FileManager.default.fileExists(atPath: path) else { return false }
        guard !p.sha256.isEmpty, let (h, _) = try? Files.sha256(of: path) else { return false }
        return h == p.sha256
    }
}
