// Strict TOML reading for recipes and configuration files: a table remembers which keys were read, so
// a leftover (a typo) is an error naming the key, and a value of the wrong type names what was expected.

import Foundation
import TOMLKit

public struct TOMLConfigError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// A TOML table that remembers which keys were read, so leftovers can be reported as unknown.
public final class StrictTable {
    public let t: TOMLTable
    public let path: String
    public let at: String
    var used: Set<String> = []

    /// Where an unknown key's message sends the reader (the file format's documentation).
    public let hint: String

    public init(_ t: TOMLTable, path: String, at: String, hint: String) { self.t = t; self.path = path; self.at = at; self.hint = hint }

    /// Parses a file; a syntax error names the file, line and column.
    public static func load(_ path: String, hint: String) throws -> StrictTable {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw TOMLConfigError("cannot read \(path)") }
        do { return StrictTable(try TOMLTable(string: text), path: path, at: "", hint: hint) } catch let e as TOMLParseError {
            throw TOMLConfigError("\(path):\(e.source.begin.line):\(e.source.begin.column): \(e.description)")
        }
    }

    public var keys: [String] { t.keys.sorted() }
    public func name(_ k: String) -> String { at.isEmpty ? k : "\(at).\(k)" }

    public func value(_ k: String) -> TOMLValueConvertible? { used.insert(k); return t[k] }

    func wrong(_ k: String, _ want: String, _ v: TOMLValueConvertible) -> TOMLConfigError {
        TOMLConfigError("\(path): \(name(k)) must be \(want), not \(v.type)")
    }

    public func string(_ k: String) throws -> String {
        guard let v = value(k) else { throw TOMLConfigError("\(path): \(name(k)) is missing") }
        guard let s = v.string else { throw wrong(k, "a string", v) }
        return s
    }
    public func optionalString(_ k: String) throws -> String? {
        try value(k).map { v in
            guard let s = v.string else { throw wrong(k, "a string", v) }; return s
        }
    }
    public func optionalInt(_ k: String) throws -> Int? {
        try value(k).map { v in
            guard let s = v.int else { throw wrong(k, "an integer", v) }; return s
        }
    }
    public func optionalBool(_ k: String) throws -> Bool? {
        try value(k).map { v in
            guard let s = v.bool else { throw wrong(k, "true or false", v) }; return s
        }
    }
    public func optionalStrings(_ k: String) throws -> [String]? {
        try value(k).map { v in
            guard let a = v.array else { throw wrong(k, "a list of strings", v) }
            return try a.map { e in
                guard let s = e.string else { throw wrong(k, "a list of strings", v) }; return s
            }
        }
    }
    public func table(_ k: String) throws -> StrictTable {
        guard let v = value(k) else { throw TOMLConfigError("\(path): [\(name(k))] is missing") }
        guard let tt = v.table else { throw wrong(k, "a table", v) }
        return StrictTable(tt, path: path, at: name(k), hint: hint)
    }
    public func optionalTable(_ k: String) throws -> StrictTable? { t[k] == nil ? nil : try table(k) }

    /// Throws on any key that was not read.
    public func done() throws {
        let unknown = t.keys.filter { !used.contains($0) }.sorted()
        if !unknown.isEmpty {
            throw TOMLConfigError(
                "\(path): unknown key\(unknown.count > 1 ? "s" : "") \(unknown.map(name).joined(separator: ", ")) (check the spelling against \(hint))"
            )
        }
    }
    /// For tables whose keys are all data (files, links): every key was read by iterating.
    public func doneAll() throws { used.formUnion(t.keys) }
}
