// Printing expressions and values.
//
// Three styles:
//  - .htcondor: exactly what HTCondor's ClassAdUnParser prints (used by string() and strcat());
//  - .pretty:   HTCondor's PrettyPrint (used by unparse()), which breaks lists and records over lines;
//  - .canonical: HTCondor's layout, but reals are printed so they read back bit-for-bit, names that are
//    keywords are quoted and parentheses are added where a hand-built tree needs them, so that the
//    text always parses back to the same tree.

import Foundation

public enum UnparseStyle: Sendable { case htcondor, pretty, canonical }

public struct Unparser {
    public let style: UnparseStyle
    private var indent = 0

    public init(style: UnparseStyle = .canonical) { self.style = style }

    public static func unparse(_ e: Expr, style: UnparseStyle = .canonical) -> String {
        var u = Unparser(style: style)
        var out = ""
        u.expr(e, &out)
        return out
    }

    public static func unparse(_ v: Value, style: UnparseStyle = .canonical) -> String {
        var u = Unparser(style: style)
        var out = ""
        u.value(v, &out)
        return out
    }

    public static func unparse(_ ad: ClassAd, style: UnparseStyle = .canonical) -> String {
        unparse(.record(ad), style: style)
    }

    /// One attribute per line, `Name = expr` (the old ClassAd format).
    public static func unparseOld(_ ad: ClassAd) -> String {
        ad.orderedAttributes.map { "\(quoteName($0.0.spelling, canonical: true)) = \(unparse($0.1))" }.joined(separator: "\n") + "\n"
    }

    // MARK: values

    mutating func value(_ v: Value, _ out: inout String) {
        switch v {
        case .undefined: out += "undefined"
        case .error: out += "error"
        case .boolean(let b): out += b ? "true" : "false"
        case .integer(let i): out += String(i)
        case .real(let r): out += Unparser.formatReal(r, exact: style == .canonical)
        case .string(let s): out += Unparser.quoteString(s, delimiter: UInt8(ascii: "\""))
        case .list(let l): list(l.items, &out)
        case .classad(let c): record(c, &out)
        case .absTime(let s, let o): out += "absTime(\"" + TimeFormat.absTimeString(secs: s, offset: o) + "\")"
        case .relTime(let r): out += "relTime(\"" + TimeFormat.relTimeString(r) + "\")"
        }
    }

    public static func formatReal(_ r: Double, exact: Bool) -> String {
        if r == 0 { return r.sign == .minus ? "-0.0" : "0.0" }
        if r.isNaN { return "real(\"NaN\")" }
        if r.isInfinite { return r < 0 ? "real(\"-INF\")" : "real(\"INF\")" }
        if exact {
            // Shortest text that reads back as the same double; always contains '.' or 'E'.
            var s = "\(r)"
            if !s.contains(".") && !s.contains("e") && !s.contains("E") { s += ".0" }
            return s.replacingOccurrences(of: "e", with: "E")
        }
        return String(format: "%1.15E", r)
    }

    public static func quoteString(_ s: Bytes, delimiter: UInt8) -> String {
        var out: [UInt8] = [delimiter]
        for c in s.b {
            if c == delimiter { out += [92, delimiter]; continue }
            switch c {
            case 7: out += Array("\\a".utf8)
            case 8: out += Array("\\b".utf8)
            case 12: out += Array("\\f".utf8)
            case 10: out += Array("\\n".utf8)
            case 13: out += Array("\\r".utf8)
            case 9: out += Array("\\t".utf8)
            case 11: out += Array("\\v".utf8)
            case 92: out += Array("\\\\".utf8)
            default:
                if c < 32 || c >= 127 {
                    out += Array(String(format: "\\%03o", Int(c)).utf8)
                } else {
                    out.append(c)
                }
            }
        }
        out.append(delimiter)
        return String(decoding: out, as: UTF8.self)
    }

    /// Names HTCondor quotes when it prints them as an attribute (but not after a `.`).
    static let reservedNames: Set<String> = ["true", "false", "undefined", "error", "is", "isnt", "parent"]

    static func quoteName(_ name: String, canonical: Bool, selected: Bool = false) -> String {
        let u = Array(name.utf8)
        var plain =
            !u.isEmpty && (Lexer.isAlpha(u[0]) || u[0] == UInt8(ascii: "_"))
            && u.allSatisfy { Lexer.isAlpha($0) || Lexer.isDigit($0) || $0 == UInt8(ascii: "_") }
        if (canonical || !selected) && reservedNames.contains(name.lowercased()) { plain = false }
        if plain { return name }
        return quoteString(Bytes(u), delimiter: UInt8(ascii: "'"))
    }

    // MARK: expressions

    mutating func list(_ items: [Expr], _ out: inout String) {
        if style == .pretty {
            indent += 3
            out += "\n" + String(repeating: " ", count: indent) + "{"
            indent += 3
            for (i, e) in items.enumerated() {
                out += "\n" + String(repeating: " ", count: indent)
                expr(e, &out)
                if i + 1 < items.count { out += "," }
            }
            indent -= 3
            out += "\n" + String(repeating: " ", count: indent) + "}"
            indent -= 3
            return
        }
        out += "{ "
        for (i, e) in items.enumerated() {
            expr(e, &out)
            if i + 1 < items.count { out += "," }
        }
        out += " }"
    }

    mutating func record(_ ad: ClassAd, _ out: inout String) {
        let attrs = ad.orderedAttributes
        if style == .pretty {
            indent += 4
            out += "\n" + String(repeating: " ", count: indent) + "["
            indent += 4
            for (i, (n, e)) in attrs.enumerated() {
                out += "\n" + String(repeating: " ", count: indent)
                out += Unparser.quoteName(n.spelling, canonical: false) + " = "
                expr(e, &out)
                if i + 1 < attrs.count { out += "; " }
            }
            indent -= 4
            out += "\n" + String(repeating: " ", count: indent) + "]"
            indent -= 4
            return
        }
        out += "[ "
        for (i, (n, e)) in attrs.enumerated() {
            out += Unparser.quoteName(n.spelling, canonical: style == .canonical) + " = "
            expr(e, &out)
            if i + 1 < attrs.count { out += "; " }
        }
        out += " ]"
    }

    /// Binding strength, for the canonical style's parentheses.
    static func precedence(_ e: Expr) -> Int {
        switch e {
        case .ternary, .elvis: return 1
        case .binary(let op, _, _):
            switch op {
            case .logicalOr: return 2
            case .logicalAnd: return 3
            case .bitOr: return 4
            case .bitXor: return 5
            case .bitAnd: return 6
            case .equal, .notEqual, .metaEqual, .metaNotEqual: return 7
            case .lessThan, .lessOrEqual, .greaterThan, .greaterOrEqual: return 8
            case .leftShift, .rightShift, .unsignedRightShift: return 9
            case .add, .subtract: return 10
            case .multiply, .divide, .modulus: return 11
            }
        case .unary: return 12
        default: return 13
        }
    }

    mutating func sub(_ e: Expr, minPrec: Int, _ out: inout String) {
        if style == .canonical && Unparser.precedence(e) < minPrec {
            out += "("
            expr(e, &out)
            out += ")"
        } else {
            expr(e, &out)
        }
    }

    mutating func expr(_ e: Expr, _ out: inout String) {
        switch e {
        case .literal(let v):
            if style == .canonical, case .integer(let i) = v, i == .min {
                out += "-9223372036854775807 - 1"  // the literal itself does not read back on its own
                return
            }
            value(v, &out)
        case .attr(let n, let abs):
            if abs { out += "." }
            out += Unparser.quoteName(n.spelling, canonical: style == .canonical)
        case .select(let b, let n):
            sub(b, minPrec: 13, &out)
            out += "." + Unparser.quoteName(n.spelling, canonical: style == .canonical, selected: true)
        case .subscript_(let a, let i):
            sub(a, minPrec: 13, &out)
            out += "["
            expr(i, &out)
            out += "]"
        case .paren(let a):
            out += "("
            expr(a, &out)
            out += ")"
        case .unary(let op, let a):
            if style == .canonical {
                // "- 1" keeps the minus an operator; "-1" would read back as a negative literal.
                out += op.spelling + " "
                sub(a, minPrec: 12, &out)
            } else {
                out += op.spelling
                expr(a, &out)
            }
        case .binary(let op, let a, let b):
            let p = Unparser.precedence(e)
            sub(a, minPrec: p, &out)
            out += op.spelling
            sub(b, minPrec: p + 1, &out)
        case .ternary(let c, let t, let f):
            sub(c, minPrec: 2, &out)
            out += " ? "
            expr(t, &out)
            out += " : "
            sub(f, minPrec: 1, &out)
        case .elvis(let a, let b):
            sub(a, minPrec: 2, &out)
            out += " ?: "
            sub(b, minPrec: 1, &out)
        case .call(let f, let args):
            out += f.name + "("
            for (i, a) in args.enumerated() {
                expr(a, &out)
                if i + 1 < args.count { out += "," }
            }
            out += ")"
        case .list(let items): list(items, &out)
        case .record(let r): record(r, &out)
        }
    }
}

extension Expr: CustomStringConvertible {
    public var description: String { Unparser.unparse(self) }
}

extension Value: CustomStringConvertible {
    public var description: String { Unparser.unparse(self) }
}

extension ClassAd: CustomStringConvertible {
    public var description: String { Unparser.unparse(self) }
}

/// Text forms of time values.
enum TimeFormat {
    static func absTimeString(secs: Int64, offset: Int64) -> String {
        var t = time_t(secs + offset)
        var tmv = tm()
        gmtime_r(&t, &tmv)
        // HTCondor writes an offset of zero as -00:00, and the year without padding.
        let sign = offset > 0 ? "+" : "-"
        let o = abs(offset)
        return String(
            format: "%d-%02d-%02dT%02d:%02d:%02d%@%02d:%02d", Int(tmv.tm_year) + 1900, Int(tmv.tm_mon) + 1, Int(tmv.tm_mday),
            Int(tmv.tm_hour), Int(tmv.tm_min), Int(tmv.tm_sec), sign, Int(o / 3600), Int((o % 3600) / 60))
    }

    /// string() of a relative time: whole seconds in a C int ([-][D+][HH:][MM:]SS), as HTCondor
    /// converts it; a value out of the int's range is INT_MIN, as C's conversion gives on x86-64.
    static func relTimeText(_ r: Double) -> String {
        var secs = Convert.cInt(r)
        var out = ""
        if secs < 0 { out += "-"; secs = 0 &- secs }
        let days = secs / 86400, hrs = (secs % 86400) / 3600, mins = (secs % 3600) / 60, s = secs % 60
        if days != 0 { out += "\(days)+" }
        if days != 0 || hrs != 0 { out += String(format: "%02d:", hrs) }
        if days != 0 || hrs != 0 || mins != 0 { out += String(format: "%02d:", mins) }
        return out + String(format: "%02d", s)
    }

    static func relTimeString(_ r: Double) -> String {
        var secs = r
        var out = ""
        if secs < 0 { out += "-"; secs = -secs }
        let whole = Int64(secs)
        let days = whole / 86400, hrs = (whole % 86400) / 3600, mins = (whole % 3600) / 60
        let fsecs = Double(whole % 60) + (secs - Double(whole))
        if days != 0 { out += "\(days)+" }
        if days != 0 || hrs != 0 { out += String(format: "%02lld:", hrs) }
        if days != 0 || hrs != 0 || mins != 0 { out += String(format: "%02lld:", mins) }
        if fsecs == fsecs.rounded(.towardZero) { out += String(format: "%02lld", Int64(fsecs)) } else { out += String(format: "%02.3f", fsecs) }
        return out
    }
}
