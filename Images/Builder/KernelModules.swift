// The kernel modules an image loads at boot: the recipe names some, their dependencies come from each
// module's own .modinfo (Debian's package ships no modules.dep), and they are loaded in dependency
// order by the agent. Signatures can be stripped: checking them under emulation costs boot time and
// the image's integrity is already guaranteed by its digest.

import Foundation

struct KernelModules {
    let tree: String  // the unpacked kernel package
    let release: String  // e.g. 6.1.0-57-cloud-amd64
    var moduleDir: String { "\(tree)/lib/modules/\(release)" }

    /// name → path relative to moduleDir (names with - and _ are the same module).
    func index() throws -> [String: String] {
        var out: [String: String] = [:]
        guard let e = FileManager.default.enumerator(atPath: moduleDir) else { throw BuildError("no modules in \(moduleDir)") }
        while let rel = e.nextObject() as? String {
            guard rel.hasSuffix(".ko") else { continue }
            out[Self.canonical(((rel as NSString).lastPathComponent as NSString).deletingPathExtension)] = rel
        }
        return out
    }

    var builtin: Set<String> {
        let text = (try? String(contentsOfFile: moduleDir + "/modules.builtin", encoding: .utf8)) ?? ""
        return Set(text.split(separator: "\n").map { Self.canonical((($0 as NSString).lastPathComponent as NSString).deletingPathExtension) })
    }

    static func canonical(_ n: String) -> String { n.replacingOccurrences(of: "-", with: "_") }

    /// The modules to load, dependencies first. Built-in ones are dropped; unknown ones are an error.
    func resolve(_ wanted: [String]) throws -> [String] {
        let idx = try index()
        let builtin = self.builtin
        var order: [String] = []
        var state: [String: Int] = [:]  // 1 visiting, 2 done
        func visit(_ n: String, from: String?) throws {
            let c = Self.canonical(n)
            if state[c] == 2 || builtin.contains(c) { return }
            guard let rel = idx[c] else {
                throw BuildError(
                    "kernel \(release) has no module '\(n)'\(from.map { " (needed by \($0))" } ?? ""); check the recipe's kernel.modules")
            }
            if state[c] == 1 { return }  // a cycle: modules cannot have one, ignore defensively
            state[c] = 1
            guard let d = FileManager.default.contents(atPath: moduleDir + "/" + rel), let elf = ELFFile([UInt8](d)) else {
                throw BuildError("cannot read module \(rel)")
            }
            for (k, v) in elf.modinfo where k == "depends" {
                for dep in v.split(separator: ",") where !dep.isEmpty { try visit(String(dep), from: c) }
            }
            state[c] = 2
            order.append(rel)
        }
        for w in wanted { try visit(w, from: nil) }
        return order
    }

    static let signatureMagic = Array("~Module signature appended~\n".utf8)

    /// A module without its appended signature (struct module_signature is 12 bytes, the signature
    /// length is its last big-endian u32).
    static func stripSignature(_ b: [UInt8]) -> [UInt8] {
        let m = signatureMagic.count
        guard b.count > m + 12, Array(b.suffix(m)) == signatureMagic else { return b }
        let s = b.count - m - 4
        let sigLen = Int(b[s]) << 24 | Int(b[s + 1]) << 16 | Int(b[s + 2]) << 8 | Int(b[s + 3])
        let cut = b.count - m - 12 - sigLen
        guard cut > 0 else { return b }
        return Array(b[0..<cut])
    }
}
