// Tokens of the ClassAd language, with the positions parse errors point at.

enum Token: Equatable {
    case integer(Int64)
    case real(Double)
    case string(Bytes)
    case identifier(String)  // also 'quoted names'
    case boolean(Bool)
    case undefined, error
    case punct(String)  // operators and brackets
    case end
}

/// Where a parse went wrong.
public struct ParseError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public let line: Int
    public let column: Int
    /// The source line with a caret under the offending text.
    public let excerpt: String
    /// Byte offset of the error in the input.
    public let offset: Int
    public var description: String { "parse error at line \(line), column \(column): \(message)\n\(excerpt)" }
}

struct Lexer {
    let src: [UInt8]
    var pos = 0
    /// Old ClassAd syntax: a backslash only escapes a double quote.
    let oldSyntax: Bool
    /// The previous token decides whether `-5` is a negative literal or a minus sign.
    var previous: Token? = nil
    private(set) var tokenStart = 0

    init(_ text: [UInt8], oldSyntax: Bool = false) {
        src = text
        self.oldSyntax = oldSyntax
    }

    func error(_ msg: String, at p: Int? = nil) -> ParseError {
        let at = Swift.min(p ?? tokenStart, src.count)
        var line = 1, lineStart = 0
        var i = 0
        while i < at { if src[i] == 10 { line += 1; lineStart = i + 1 }; i += 1 }
        var lineEnd = lineStart
        while lineEnd < src.count && src[lineEnd] != 10 { lineEnd += 1 }
        let col = at - lineStart + 1
        var text = String(decoding: src[lineStart..<lineEnd], as: UTF8.self)
        var caretCol = col - 1
        // keep very long lines readable
        if text.count > 160 {
            let from = Swift.max(0, caretCol - 60)
            let chars = Array(text)
            text = (from > 0 ? "…" : "") + String(chars[from..<Swift.min(chars.count, from + 120)])
            caretCol = caretCol - from + (from > 0 ? 1 : 0)
        }
        let excerpt = "  " + text + "\n  " + String(repeating: " ", count: Swift.max(0, caretCol)) + "^"
        return ParseError(message: msg, line: line, column: col, excerpt: excerpt, offset: at)
    }

    @inline(__always) func peekByte(_ off: Int = 0) -> UInt8? { pos + off < src.count ? src[pos + off] : nil }
    @inline(__always) static func isDigit(_ c: UInt8?) -> Bool { c.map { $0 >= 48 && $0 <= 57 } ?? false }
    @inline(__always) static func isAlpha(_ c: UInt8?) -> Bool {
        guard let c else { return false }
        return (c >= 65 && c <= 90) || (c >= 97 && c <= 122)
    }
    @inline(__always) static func isSpace(_ c: UInt8) -> Bool { c == 32 || (c >= 9 && c <= 13) }

    mutating func skipSpaceAndComments() throws(ParseError) {
        while pos < src.count {
            let c = src[pos]
            if Lexer.isSpace(c) { pos += 1; continue }
            if c == UInt8(ascii: "/") && peekByte(1) == UInt8(ascii: "/") {
                while pos < src.count && src[pos] != 10 { pos += 1 }
                continue
            }
            if c == UInt8(ascii: "/") && peekByte(1) == UInt8(ascii: "*") {
                let start = pos
                pos += 2
                while pos < src.count && !(src[pos] == UInt8(ascii: "*") && peekByte(1) == UInt8(ascii: "/")) { pos += 1 }
                if pos >= src.count { throw error("unterminated /* comment", at: start) }
                pos += 2
                continue
            }
            break
        }
    }

    mutating func next() throws(ParseError) -> Token {
        let t = try scan()
        previous = t
        return t
    }

    private mutating func scan() throws(ParseError) -> Token {
        try skipSpaceAndComments()
        tokenStart = pos
        guard pos < src.count else { return .end }
        let c = src[pos]
        if c == 0 { throw error("NUL byte in input") }
        if c == UInt8(ascii: "-") && !previousEndsOperand {
            if Lexer.isDigit(peekByte(1)) || (peekByte(1) == UInt8(ascii: ".") && Lexer.isDigit(peekByte(2))) {
                return try number()
            }
        }
        if Lexer.isDigit(c) || (c == UInt8(ascii: ".") && Lexer.isDigit(peekByte(1))) { return try number() }
        if Lexer.isAlpha(c) || c == UInt8(ascii: "_") { return identifierOrKeyword() }
        if c == UInt8(ascii: "\"") { return .string(try stringLiteral(delimiter: c)) }
        if c == UInt8(ascii: "'") {
            let b = try stringLiteral(delimiter: c)
            return .identifier(String(decoding: b.b, as: UTF8.self))
        }
        return try punctuation()
    }

    private var previousEndsOperand: Bool {
        switch previous {
        case .integer, .real, .boolean, .string, .undefined, .error, .identifier: return true
        case .punct(let p): return p == "." || p == "]" || p == ")" || p == "}"
        default: return false
        }
    }

    private mutating func number() throws(ParseError) -> Token {
        let start = pos
        let negative = src[pos] == UInt8(ascii: "-")
        if negative { pos += 1 }
        let digitsStart = pos
        // A negative literal goes through HTCondor's other scanner, which takes -0x… (as 0: the value is
        // then read in base 10) and -0… with octal digits (read in decimal): "-0x1f" is 0, "-010" is
        // -10, "-08" an error (measured against its library; eval(string(relTime(-1.5))) reads "-01").
        if negative, src[pos] == UInt8(ascii: "0"), let x = peekByte(1), x == UInt8(ascii: "x") || x == UInt8(ascii: "X") {
            pos += 2
            let hexStart = pos
            while let c = peekByte(), Lexer.isDigit(c) || (c | 0x20 >= UInt8(ascii: "a") && c | 0x20 <= UInt8(ascii: "f")) { pos += 1 }
            guard pos > hexStart else { throw error("a hexadecimal number needs digits after 0x", at: start) }
            return .integer(0)
        }
        while Lexer.isDigit(peekByte()) { pos += 1 }
        let intDigits = pos - digitsStart
        var isReal = false
        if peekByte() == UInt8(ascii: ".") {
            guard Lexer.isDigit(peekByte(1)) else { throw error("a digit must follow the decimal point", at: pos) }
            isReal = true
            pos += 1
            while Lexer.isDigit(peekByte()) { pos += 1 }
        }
        if let e = peekByte(), e == UInt8(ascii: "e") || e == UInt8(ascii: "E") {
            isReal = true
            pos += 1
            if peekByte() == UInt8(ascii: "+") || peekByte() == UInt8(ascii: "-") { pos += 1 }
            guard Lexer.isDigit(peekByte()) else { throw error("the exponent has no digits", at: pos) }
            while Lexer.isDigit(peekByte()) { pos += 1 }
        }
        let text = String(decoding: src[start..<pos], as: UTF8.self)
        if isReal {
            return .real(strtodValue(text))
        }
        if intDigits > 1 && src[digitsStart] == UInt8(ascii: "0") {
            let octal = src[(digitsStart + 1)..<(digitsStart + intDigits)].allSatisfy { $0 >= 48 && $0 <= 55 }
            if !negative || !octal {
                throw error("integers may not have leading zeros (octal and hexadecimal are not ClassAd syntax)", at: start)
            }
        }
        // HTCondor reads an integer literal that does not fit in 64 bits as 0.
        return .integer(Int64(text) ?? 0)
    }

    private mutating func identifierOrKeyword() -> Token {
        let start = pos
        while let c = peekByte(), Lexer.isAlpha(c) || Lexer.isDigit(c) || c == UInt8(ascii: "_") { pos += 1 }
        let s = String(decoding: src[start..<pos], as: UTF8.self)
        switch s.lowercased() {
        case "true": return .boolean(true)
        case "false": return .boolean(false)
        case "undefined": return .undefined
        case "error": return .error
        case "is": return .punct("is")
        case "isnt": return .punct("isnt")
        default: return .identifier(s)
        }
    }

    /// A string literal (or 'quoted name'); adjacent literals separated only by white space are joined.
    private mutating func stringLiteral(delimiter: UInt8) throws(ParseError) -> Bytes {
        var raw: [UInt8] = []
        let start = pos
        while true {
            pos += 1  // opening delimiter
            var backslashes = 0
            while true {
                guard let c = peekByte() else { throw error("unterminated string", at: start) }
                if c == 0 { throw error("NUL byte in string", at: pos) }
                if oldSyntax {
                    if c == delimiter {
                        // old syntax: \" is a quote unless it ends the line
                        if raw.last == UInt8(ascii: "\\"), let n = peekByte(1), n != 10 {
                            raw[raw.count - 1] = c; pos += 1; continue
                        }
                        break
                    }
                } else if c == delimiter && backslashes % 2 == 0 {
                    break
                }
                backslashes = c == UInt8(ascii: "\\") ? backslashes + 1 : 0
                raw.append(c)
                pos += 1
            }
            pos += 1  // closing delimiter
            // look ahead for an adjacent literal with the same delimiter
            var p = pos
            while p < src.count && Lexer.isSpace(src[p]) { p += 1 }
            if !oldSyntax && p < src.count && src[p] == delimiter { pos = p; continue }
            break
        }
        if oldSyntax { return Bytes(raw) }
        var out: [UInt8] = []
        out.reserveCapacity(raw.count)
        var i = 0
        func octal(_ c: UInt8) -> Bool { c >= 48 && c <= 55 }
        while i < raw.count {
            let c = raw[i]
            if c != UInt8(ascii: "\\") || i == raw.count - 1 { out.append(c); i += 1; continue }
            i += 1
            let e = raw[i]
            switch e {
            case UInt8(ascii: "a"): out.append(7)
            case UInt8(ascii: "b"): out.append(8)
            case UInt8(ascii: "f"): out.append(12)
            case UInt8(ascii: "n"): out.append(10)
            case UInt8(ascii: "r"): out.append(13)
            case UInt8(ascii: "t"): out.append(9)
            case UInt8(ascii: "v"): out.append(11)
            default:
                if octal(e) {
                    var n = Int(e - 48)
                    if e <= UInt8(ascii: "3"), i + 2 < raw.count, octal(raw[i + 1]), octal(raw[i + 2]) {
                        n = n * 64 + Int(raw[i + 1] - 48) * 8 + Int(raw[i + 2] - 48); i += 2
                    } else if i + 1 < raw.count, octal(raw[i + 1]) {
                        n = n * 8 + Int(raw[i + 1] - 48); i += 1
                    }
                    if n == 0 { throw error("a string may not contain a NUL character", at: start) }
                    out.append(UInt8(truncatingIfNeeded: n))
                } else {
                    out.append(e)  // \\, \", \', \? and unknown escapes: the character itself
                }
            }
            i += 1
        }
        return Bytes(out)
    }

    private static let puncts3 = [">>>", "=?=", "=!="]
    private static let puncts2 = ["==", "!=", "<=", ">=", "&&", "||", "<<", ">>"]

    private mutating func punctuation() throws(ParseError) -> Token {
        // `?` followed (after any blanks) by `:` is one token, the postfix default operator `?:`.
        if src[pos] == UInt8(ascii: "?") {
            var p = pos + 1
            while p < src.count && Lexer.isSpace(src[p]) { p += 1 }
            if p < src.count && src[p] == UInt8(ascii: ":") { pos = p + 1; return .punct("?:") }
        }
        for p in Lexer.puncts3 where matches(p) { pos += 3; return .punct(p == "=?=" ? "is" : p == "=!=" ? "isnt" : p) }
        for p in Lexer.puncts2 where matches(p) { pos += 2; return .punct(p) }
        let c = src[pos]
        if "()[]{},;.?:=<>+-*/%!~&|^".utf8.contains(c) {
            pos += 1
            return .punct(String(UnicodeScalar(c)))
        }
        throw error("unexpected character '\(c >= 32 && c < 127 ? String(UnicodeScalar(c)) : "\\x" + String(c, radix: 16))'")
    }

    private func matches(_ p: String) -> Bool {
        let u = Array(p.utf8)
        guard pos + u.count <= src.count else { return false }
        for (i, c) in u.enumerated() where src[pos + i] != c { return false }
        return true
    }
}

/// strtod semantics: overflow gives ±inf.
func strtodValue(_ s: String) -> Double {
    s.withCString { strtod($0, nil) }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
