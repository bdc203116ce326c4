// `slurm-vm cache …` on a node: what the node-local image cache holds, and removing from it. Reads the
// node role's directories from slurm-vmd's configuration (or --cache/--state); an image a job on this
// node is using is never removed.

import ArgumentParser
import Daemon
import Foundation
import Node
import Sizes

struct CacheCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cache",
        abstract: "Inspect and trim this node's image cache.",
        subcommands: [List.self, Remove.self, Prune.self])

    struct Where: ParsableArguments {
        @Option(help: ArgumentHelp("slurm-vmd's configuration, for the node role's directories and quota.", valueName: "file"))
        var config = "/etc/slurm-vm/slurm-vmd.toml"
        @Option(help: ArgumentHelp("The cache directory (overrides the configuration).", valueName: "dir")) var cache: String?
        @Option(help: ArgumentHelp("The node's state directory, for the images in use (overrides the configuration).", valueName: "dir")) var state:
            String?

        func open() throws -> ImageCache {
            var node: NodeConfig?
            if FileManager.default.fileExists(atPath: config) { node = try DaemonConfig.load(config).node }
            guard let dir = cache ?? node?.cacheDir else {
                throw ValidationError("no cache directory: \(config) has no [node] role; give --cache DIR")
            }
            let stateDir = state ?? node?.stateDir
            let jobs = try stateDir.map { try JobStore(stateDir: $0) }
            return try ImageCache(
                root: dir, source: node?.catalogAddress ?? "", quota: node?.cacheQuota,
                inUse: { Set(jobs?.all().map(\.image) ?? []) })
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List cached images, least recently used first.")
        @OptionGroup var location: Where
        @Flag(help: "JSON instead of a table.") var json = false

        func run() throws {
            try reporting {
                let c = try location.open()
                let es = c.entries()
                if json {
                    let rows: [[String: Any]] = es.map {
                        [
                            "image": "\($0.record.name):\($0.record.version)", "digest": $0.record.digest, "bytes": $0.bytes,
                            "last_used": $0.lastUsed.map { ISO8601DateFormatter().string(from: $0) } ?? NSNull(), "in_use": $0.inUse,
                            "complete": $0.complete,
                        ]
                    }
                    print(String(data: try JSONSerialization.data(withJSONObject: rows, options: [.sortedKeys]), encoding: .utf8)!)
                    return
                }
                print(
                    "IMAGE".padding(toLength: 28, withPad: " ", startingAt: 0) + "DIGEST        "
                        + "SIZE".padding(toLength: 11, withPad: " ", startingAt: 0) + "LAST USED             STATE")
                for e in es {
                    let used = e.lastUsed.map { ISO8601DateFormatter().string(from: $0) } ?? "never"
                    let state = e.inUse ? "in use" : (e.complete ? "idle" : "incomplete")
                    print(
                        "\(e.record.name):\(e.record.version)".padding(toLength: 28, withPad: " ", startingAt: 0)
                            + String(e.record.digest.dropFirst(7).prefix(12)) + "  "
                            + ByteSize.describe(e.bytes).padding(toLength: 11, withPad: " ", startingAt: 0)
                            + used.padding(toLength: 22, withPad: " ", startingAt: 0) + state)
                }
                print("total \(ByteSize.describe(c.totalBytes()))" + (c.quota.map { " of \(ByteSize.describe($0))" } ?? " (no quota)"))
            }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove images from the cache (refused while a job uses them).")
        @OptionGroup var location: Where
        @Argument(help: "NAME:VERSION or sha256:DIGEST (a unique prefix of the hex digits will do).") var images: [String]

        func run() throws {
            try reporting {
                let c = try location.open()
                let es = c.entries()
                for ref in images {
                    let hits = es.filter {
                        "\($0.record.name):\($0.record.version)" == ref || $0.record.digest == ref
                            || (ref.hasPrefix("sha256:") && ref.count >= 15 && $0.record.digest.hasPrefix(ref))
                    }
                    let digests = Set(hits.map(\.record.digest))
                    guard digests.count == 1, let d = digests.first else {
                        throw ValidationError(
                            digests.isEmpty
                                ? "no cached image matches '\(ref)' (see slurm-vm cache ls)"
                                : "'\(ref)' matches \(digests.count) images; give more of the digest")
                    }
                    let freed = try c.remove(image: d)
                    print("removed \(ref) (\(ByteSize.describe(freed)) freed)")
                }
            }
        }
    }

    struct Prune: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "prune", abstract: "Evict least recently used images not in use until the cache fits.")
        @OptionGroup var location: Where
        @Option(help: ArgumentHelp("Target size (e.g. 10G; default: the configured quota, or 0 to keep only images in use).", valueName: "size"))
        var to: String?

        func run() throws {
            try reporting {
                let c = try location.open()
                var limit = c.quota ?? 0
                if let t = to {
                    guard let b = try? ByteSize.parse(t, bare: .bytes) else { throw ValidationError("--to '\(t)' is not a size like 10G or 512M") }
                    limit = b
                }
                let before = c.totalBytes()
                var evicted: [String] = []
                for e in c.entries() where !e.inUse && c.totalBytes() > limit {
                    _ = try c.remove(image: e.record.digest)
                    evicted.append("\(e.record.name):\(e.record.version)")
                }
                let after = c.totalBytes()
                print(evicted.isEmpty ? "nothing to evict" : "evicted \(evicted.joined(separator: ", "))")
                print("\(ByteSize.describe(before)) → \(ByteSize.describe(after))" + (after > limit ? " (the rest is in use)" : ""))
            }
        }
    }
}
