// The values an expression evaluates to, with HTCondor's type rules.
//
// Strings are byte strings (as in HTCondor's C++ library): comparisons and case folding work on bytes in
// the C locale, and no UTF-8 validation is done.

import Foundation

/// An evaluated ClassAd value.
public enum Value: Sendable {
    case undefined
    case error
    case boolean(Bool)
    case integer(Int64)
    case real(Double)
    case string(Bytes)
    /// A list keeps its element expressions unevaluated: like HTCondor, elements are evaluated when
    /// they are used, in the scope of the evaluation that uses them.
    case list(ListValue)
    case classad(ClassAd)
    /// Seconds since the epoch plus the timezone offset (seconds east of UTC) it was written in.
    case absTime(secs: Int64, offset: Int64)
    /// A duration in seconds.
    case relTime(Double)

    public var isUndefined: Bool { if case .undefined = self { return true } else { return false } }
    public var isError: Bool { if case .error = self { return true } else { return false } }
    public var isExceptional: Bool {
        switch self {
        case .undefined, .error: return true;
        default: return false
        }
    }

    /// HTCondor's IsBooleanValueEquiv: booleans, and numbers compared with zero.
    @inline(__always)
    public var booleanEquivalent: Bool? {
        switch self {
        case .boolean(let b): return b
        case .integer(let i): return i != 0
        case .real(let r): return r != 0
        default: return nil
        }
    }

    public var typeName: String {
        switch self {
        case .undefined: return "undefined"
        case .error: return "error"
        case .boolean: return "boolean"
        case .integer: return "integer"
        case .real: return "real"
        case .string: return "string"
        case .list: return "list"
        case .classad: return "classad"
        case .absTime: return "abstime"
        case .relTime: return "reltime"
        }
    }

    public static func string(_ s: String) -> Value { .string(Bytes(s)) }
}

/// A list value: the element expressions, evaluated lazily.
///
/// HTCondor evaluates an element in two different scopes depending on who asks: a subscript `l[i]`
/// evaluates it in the list's own (lexical) scope, while functions such as member() and sum() evaluate
/// it in the caller's scope. `scope` is the former: the ad the list literal was written in.
public final class ListValue: @unchecked Sendable {
    public let items: [Expr]
    public let scope: ClassAd?
    /// HTCondor has two list types: a list written in an expression, and a list built by a function or
    /// copied out of an ad (its "SLIST"). `=?=` calls lists of different kinds not identical.
    public let built: Bool
    public init(_ items: [Expr], scope: ClassAd? = nil, built: Bool = false) { self.items = items; self.scope = scope; self.built = built }
    public convenience init(values: [Value]) { self.init(values.map { Expr.literal($0) }, built: true) }
}

/// An immutable byte string with the C-locale comparisons HTCondor uses.
public struct Bytes: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var b: [UInt8]
    @inline(__always) public init(_ bytes: [UInt8]) { b = bytes }
    public init(_ s: String) { b = Array(s.utf8) }
    public init<S: Sequence>(_ seq: S) where S.Element == UInt8 { b = Array(seq) }
    public var count: Int { b.count }
    public var isEmpty: Bool { b.isEmpty }
    /// Decodes as UTF-8, replacing invalid sequences (only for display).
    public var description: String { String(decoding: b, as: UTF8.self) }

    public static func < (l: Bytes, r: Bytes) -> Bool { Bytes.compare(l.b, r.b) < 0 }

    /// strcmp on the bytes up to the first NUL.
    @inline(__always)
    public static func compare(_ x: [UInt8], _ y: [UInt8]) -> Int {
        let n = Swift.min(x.count, y.count)
        var i = 0
        while i < n {
            let a = x[i], c = y[i]
            if a != c { return Int(a) - Int(c) }
            if a == 0 { return 0 }
            i += 1
        }
        let a = i < x.count ? Int(x[i]) : 0
        let c = i < y.count ? Int(y[i]) : 0
        return a - c
    }

    /// strcasecmp in the C locale.
    @inline(__always)
    public static func caseCompare(_ x: [UInt8], _ y: [UInt8]) -> Int {
        let n = Swift.min(x.count, y.count)
        var i = 0
        while i < n {
            let a = lowerASCII(x[i]), c = lowerASCII(y[i])
            if a != c { return Int(a) - Int(c) }
            if a == 0 { return 0 }
            i += 1
        }
        let a = i < x.count ? Int(lowerASCII(x[i])) : 0
        let c = i < y.count ? Int(lowerASCII(y[i])) : 0
        return a - c
    }

    @inline(__always)
    public static func caseEqual(_ x: [UInt8], _ y: [UInt8]) -> Bool {
        x.count == y.count && caseCompare(x, y) == 0
    }

    @inline(__always) static func lowerASCII(_ c: UInt8) -> UInt8 { (c >= 65 && c <= 90) ? c | 0x20 : c }
    @inline(__always) static func upperASCII(_ c: UInt8) -> UInt8 { (c >= 97 && c <= 122) ? c & ~0x20 : c }

    public var lowercased: Bytes { Bytes(b.map(Bytes.lowerASCII)) }
    public var uppercased: Bytes { Bytes(b.map(Bytes.upperASCII)) }
    /// The bytes up to the first NUL, as C functions would see them.
    public var cString: [UInt8] {
        if let z = b.firstIndex(of: 0) { return Array(b[..<z]) }
        return b
    }
}

/// The identity of an attribute name: its lowercased bytes, with the hash computed once (hashing a
/// Swift String normalises Unicode on every lookup, which the evaluator cannot afford).
public struct AttrKey: Hashable, Sendable {
    public let bytes: [UInt8]
    let h: Int
    init(_ lowered: [UInt8]) {
        bytes = lowered
        var x: UInt64 = 0xcbf29ce484222325
        for c in lowered { x = (x ^ UInt64(c)) &* 0x100000001b3 }
        h = Int(truncatingIfNeeded: x)
    }
    public static func == (a: AttrKey, b: AttrKey) -> Bool { a.h == b.h && a.bytes == b.bytes }
    public func hash(into hasher: inout Hasher) { hasher.combine(h) }
}

/// A case-insensitive attribute name that remembers how it was spelled.
public struct AttrName: Hashable, Sendable, CustomStringConvertible {
    public let spelling: String
    /// Lowercased spelling: the identity of the name.
    public let key: String
    public let k: AttrKey
    /// Which of HTCondor's special scope names this is, if any.
    let special: Special
    enum Special: UInt8, Sendable { case none, root, current, parent, currentTime }
    /// Whether the name denotes a whole ad or the match record (`TARGET`, `MY`, `LEFT`, …) rather than
    /// one attribute: decided once here, as the matcher asks it for every reference it reads.
    let namesScope: Bool
    static let scopeNames: Set<String> = [
        "my", "self", "target", "other", "ad", "left", "right", "lctx", "rctx", "root", "toplevel", "parent", "symmetricmatch",
        "leftmatchesright", "rightmatchesleft", "leftrankvalue", "rightrankvalue",
    ]

    public init(_ s: String) {
        spelling = s
        let lowered = Array(s.utf8).map(Bytes.lowerASCII)
        key = String(decoding: lowered, as: UTF8.self)
        k = AttrKey(lowered)
        switch key {
        case "toplevel", "root": special = .root
        case "self", "my": special = .current
        case "parent": special = .parent
        case "currenttime": special = .currentTime
        default: special = .none
        }
        namesScope = AttrName.scopeNames.contains(key)
    }
    public static func == (a: AttrName, b: AttrName) -> Bool { a.k == b.k }
    public func hash(into h: inout Hasher) { h.combine(k) }
    public var description: String { spelling }
}
