// Image recipes (Images/*.toml): which Debian kernel, which packages, extra files and links, modules to
// load at boot, the kernel command line and admin metadata. The reader is strict: an unknown key or a
// value of the wrong type is an error naming the key, so a typo never silently builds the wrong image.

import Catalog
import Foundation
import StrictTOML
import TOMLKit

public struct BuildError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

public struct Recipe: Sendable, Equatable {
    public struct ExtraFile: Sendable, Equatable {
        public var path: String
        public var text: String?
        public var source: String?  // relative to the recipe's directory
        public var mode: UInt32
    }

    public var path: String
    public var name: String
    public var version: String
    public var description: String
    public var kernelFlavour: String
    public var kernelPackage: String?
    public var modules: [String]
    public var cmdline: String
    public var include: [String]
    public var exclude: [String]
    public var compression: String
    public var maxVCPUs: Int
    public var minMemoryMB: Int?
    public var strip: [String]
    public var stripModuleSignatures: Bool
    public var files: [ExtraFile]
    public var links: [(String, String)]
    public var adminAttributes: [Attribute]
    /// Where the guest agent's sources are (relative to the recipe).
    public var agentDir: String

    public static func == (a: Recipe, b: Recipe) -> Bool { a.path == b.path && a.name == b.name && a.version == b.version }

    /// What is removed from every image unless the recipe says otherwise: documentation and translations.
    public static let defaultStrip = [
        "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
        "usr/share/lintian", "usr/share/linda", "usr/share/bug", "usr/share/menu", "usr/share/bash-completion",
        "usr/share/zsh", "usr/share/common-licenses", "usr/share/doc-base", "usr/share/gcc", "usr/share/gdb",
        "etc/cron.daily", "etc/logrotate.d", "usr/lib/x86_64-linux-gnu/gconv",
    ]

    public static func load(_ path: String) throws -> Recipe {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw BuildError("cannot read recipe \(path)")
        }
        let table: TOMLTable
        do { table = try TOMLTable(string: text) } catch let e as TOMLParseError {
            throw BuildError("\(path):\(e.source.begin.line):\(e.source.begin.column): \(e.description)")
        }
        return try Recipe(table: StrictTable(table, path: path, at: "", hint: "Images/README.md"), path: path)
    }

    init(table t: StrictTable, path: String) throws {
        self.path = path
        name = try t.string("name")
        version = try t.string("version")
        do { try Names.check(name, what: "the image name"); try Names.check(version, what: "the version") } catch {
            throw BuildError("\(path): \(error)")
        }
        description = try t.optionalString("description") ?? ""
        agentDir = try t.optionalString("agent_dir") ?? "agent"

        let k = try t.table("kernel")
        kernelFlavour = try k.optionalString("flavour") ?? "cloud"
        kernelPackage = try k.optionalString("package")
        modules = try k.optionalStrings("modules") ?? []
        cmdline = try k.optionalString("cmdline") ?? ""
        try k.done()

        let p = try t.table("packages")
        include = try p.optionalStrings("include") ?? []
        exclude = try p.optionalStrings("exclude") ?? []
        try p.done()
        for n in include + exclude + [kernelFlavour] + modules {
            guard !n.isEmpty, n.allSatisfy({ $0.isLetter || $0.isNumber || "+-._:".contains($0) }) else {
                throw BuildError("\(path): '\(n)' is not a Debian package or module name")
            }
        }

        let img = try t.optionalTable("image")
        compression = try img?.optionalString("compression") ?? "none"
        guard ["none", "lz4"].contains(compression) else {
            throw BuildError("\(path): image.compression must be \"none\" or \"lz4\", not \"\(compression)\"")
        }
        maxVCPUs = try img?.optionalInt("max_vcpus") ?? 64
        minMemoryMB = try img?.optionalInt("min_memory_mb")
        strip = try img?.optionalStrings("strip") ?? Recipe.defaultStrip
        stripModuleSignatures = try img?.optionalBool("strip_module_signatures") ?? true
        try img?.done()

        files = []
        if let f = try t.optionalTable("files") {
            for key in f.keys {
                let e = try f.table(key)
                let text = try e.optionalString("text"), source = try e.optionalString("source")
                let modeText = try e.optionalString("mode") ?? "0644"
                try e.done()
                guard (text == nil) != (source == nil) else { throw BuildError("\(path): files.\"\(key)\" needs exactly one of text or source") }
                guard let mode = UInt32(modeText, radix: 8), mode <= 0o7777 else {
                    throw BuildError("\(path): files.\"\(key)\".mode must be octal, like \"0755\"")
                }
                files.append(ExtraFile(path: try Recipe.guestPath(key, path), text: text, source: source, mode: mode))
            }
            try f.doneAll()
        }
        links = []
        if let l = try t.optionalTable("links") {
            for key in l.keys { links.append((try Recipe.guestPath(key, path), try l.string(key))) }
            try l.done()
        }
        adminAttributes = []
        if let a = try t.optionalTable("ad") {
            for key in a.keys {
                let expr = try a.string(key)
                do {
                    adminAttributes.append(
                        try ImageRecord.adminAttribute(key == "requirements" ? "Requirements" : key == "rank" ? "Rank" : key, expr))
                } catch { throw BuildError("\(path): ad.\(key): \(error)") }
            }
            try a.done()
        }
        try t.done()
    }

    /// An absolute guest path without "..": where a recipe may put a file.
    static func guestPath(_ p: String, _ recipe: String) throws -> String {
        guard p.hasPrefix("/"), !p.split(separator: "/").contains(".."), p.count > 1 else {
            throw BuildError("\(recipe): '\(p)' must be an absolute path inside the guest, without ..")
        }
        return String(p.dropFirst())
    }

    public var directory: String { (path as NSString).deletingLastPathComponent.isEmpty ? "." : (path as NSString).deletingLastPathComponent }
}
