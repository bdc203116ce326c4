// Recursive-descent parser for ClassAd expressions and records (new syntax) and for the old
// line-oriented ad format (`Name = expr` per line).
//
// Precedence, lowest first: `c ? t : f`, ||, &&, |, ^, &, == != is isnt =?= =!=, < <= > >=,
// << >> >>>, + -, * / %, unary + - ! ~, then the postfix operators `.name`, `[i]` and `a ?: b`.
// As in HTCondor, `?:` (also written `? :`) is a postfix operator whose right operand is a postfix
// expression: `10 ?: 2 + 3` is `(10 ?: 2) + 3` = 13.

public enum Parser {
    /// HTCondor's parser gives up past 165 nested brackets; so do we (it also bounds our stack use).
    static let maxNesting = 165

    /// Parses one expression; the whole input must be consumed.
    public static func parseExpression(_ text: String) throws(ParseError) -> Expr {
        try parseExpression(Array(text.utf8))
    }

    public static func parseExpression(_ bytes: [UInt8], oldSyntax: Bool = false) throws(ParseError) -> Expr {
        var p = try State(bytes, oldSyntax: oldSyntax)
        let e = try p.expression()
        guard p.tok == .end else { throw p.lex.error("unexpected \(p.describe(p.tok)) after the end of the expression") }
        return e
    }

    /// Parses a record `[ name = expr; ... ]`.
    public static func parseClassAd(_ text: String) throws(ParseError) -> ClassAd {
        var p = try State(Array(text.utf8), oldSyntax: false)
        guard p.tok == .punct("[") else { throw p.lex.error("a ClassAd starts with '['") }
        let e = try p.primary()
        guard p.tok == .end else { throw p.lex.error("unexpected \(p.describe(p.tok)) after the end of the ClassAd") }
        guard case .record(let ad) = e else { throw p.lex.error("expected a ClassAd") }
        return ad
    }

    /// Parses an ad in either syntax: `[ ... ]`, or old-style `Name = expr` lines (blank lines and lines
    /// starting with `#` are ignored).
    public static func parseAd(_ text: String) throws(ParseError) -> ClassAd {
        let trimmed = text.drop { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }
        if trimmed.first == "[" { return try parseClassAd(text) }
        return try parseOldAd(text)
    }

    public static func parseOldAd(_ text: String) throws(ParseError) -> ClassAd {
        let ad = ClassAd()
        let bytes = Array(text.utf8)
        var lineStart = 0
        var lineNo = 0
        while lineStart <= bytes.count {
            lineNo += 1
            var lineEnd = lineStart
            while lineEnd < bytes.count && bytes[lineEnd] != 10 { lineEnd += 1 }
            let line = Array(bytes[lineStart..<lineEnd])
            defer { lineStart = lineEnd + 1 }
            let content = line.drop { $0 == 32 || $0 == 9 || $0 == 13 }
            if content.isEmpty || content.first == UInt8(ascii: "#") { continue }
            guard let eq = line.firstIndex(of: UInt8(ascii: "=")) else {
                throw Lexer(bytes).error("expected 'Name = expression' (old ClassAd syntax)", at: lineStart)
            }
            let name = String(decoding: line[..<eq], as: UTF8.self).trimmingSpaces
            guard !name.isEmpty, name.utf8.allSatisfy({ Lexer.isAlpha($0) || Lexer.isDigit($0) || $0 == UInt8(ascii: "_") }),
                !Lexer.isDigit(name.utf8.first)
            else {
                throw Lexer(bytes).error("'\(name)' is not a valid attribute name", at: lineStart)
            }
            // Parse the right-hand side in place so that errors point into the file.
            var rhs = [UInt8](repeating: 32, count: lineStart + eq + 1)
            for i in 0..<rhs.count where bytes[i] == 10 { rhs[i] = 10 }
            rhs += Array(line[(eq + 1)...])
            do {
                ad.insert(name, try parseExpression(rhs, oldSyntax: true))
            } catch {
                // Same offsets as the file: point into the file's own text.
                throw Lexer(bytes).error(error.message, at: error.offset)
            }
        }
        return ad
    }

    struct State {
        var lex: Lexer
        var tok: Token
        var depth = 0

        init(_ bytes: [UInt8], oldSyntax: Bool) throws(ParseError) {
            lex = Lexer(bytes, oldSyntax: oldSyntax)
            tok = try lex.next()
        }

        func describe(_ t: Token) -> String {
            switch t {
            case .end: return "end of input"
            case .punct(let p): return "'\(p)'"
            case .identifier(let s): return "name '\(s)'"
            case .integer, .real: return "number"
            case .string: return "string"
            case .boolean(let b): return "'\(b)'"
            case .undefined: return "'undefined'"
            case .error: return "'error'"
            }
        }

        mutating func advance() throws(ParseError) { tok = try lex.next() }

        /// absTime("…") with one string literal is a time, read now; relTime("…") is checked now and
        /// read when evaluated (its value is a real there). A string neither reads is a parse error, as
        /// in HTCondor (TimeParse).
        func timeLiteral(_ name: String, _ args: [Expr]) throws(ParseError) -> Expr? {
            guard args.count == 1, let text = args[0].stringLiteral else { return nil }
            switch name.lowercased() {
            case "abstime":
                guard let t = TimeParse.absTime(text) else {
                    throw lex.error(
                        "absTime(\"\(String(decoding: text, as: UTF8.self))\") is not a time: write it as YYYY-MM-DDTHH:MM:SS, with Z or ±HH:MM")
                }
                return .literal(.absTime(secs: t.secs, offset: t.offset))
            case "reltime":
                guard TimeParse.relTime(text) != nil else {
                    throw lex.error("relTime(\"\(String(decoding: text, as: UTF8.self))\") is not a duration: write it as [-][D+][HH:][MM:]SS")
                }
                return nil
            default: return nil
            }
        }

        mutating func expect(_ p: String, _ what: String) throws(ParseError) {
            guard tok == .punct(p) else { throw lex.error("expected '\(p)' \(what), found \(describe(tok))") }
            try advance()
        }

        mutating func enter() throws(ParseError) {
            depth += 1
            if depth > Parser.maxNesting { throw lex.error("expression nested too deeply (more than \(Parser.maxNesting) levels)") }
        }

        mutating func expression() throws(ParseError) -> Expr {
            let cond = try binary(0)
            guard tok == .punct("?") else { return cond }
            try enter(); defer { depth -= 1 }
            try advance()
            let t = try expression()
            try expect(":", "in the conditional expression")
            return .ternary(cond, t, try expression())
        }

        static let levels: [[(String, BinaryOp)]] = [
            [("||", .logicalOr)],
            [("&&", .logicalAnd)],
            [("|", .bitOr)],
            [("^", .bitXor)],
            [("&", .bitAnd)],
            [("==", .equal), ("!=", .notEqual), ("is", .metaEqual), ("isnt", .metaNotEqual)],
            [("<", .lessThan), ("<=", .lessOrEqual), (">", .greaterThan), (">=", .greaterOrEqual)],
            [("<<", .leftShift), (">>", .rightShift), (">>>", .unsignedRightShift)],
            [("+", .add), ("-", .subtract)],
            [("*", .multiply), ("/", .divide), ("%", .modulus)],
        ]

        mutating func binary(_ level: Int) throws(ParseError) -> Expr {
            if level == State.levels.count { return try unary() }
            var lhs = try binary(level + 1)
            outer: while case .punct(let p) = tok {
                for (s, op) in State.levels[level] where s == p {
                    try advance()
                    let rhs = try binary(level + 1)
                    lhs = .binary(op, lhs, rhs)
                    continue outer
                }
                break
            }
            return lhs
        }

        mutating func unary() throws(ParseError) -> Expr {
            if case .punct(let p) = tok, let op: UnaryOp = (p == "-" ? .minus : p == "+" ? .plus : p == "!" ? .not : p == "~" ? .bitNot : nil) {
                try enter(); defer { depth -= 1 }
                try advance()
                return .unary(op, try unary())
            }
            return try postfix()
        }

        mutating func postfix() throws(ParseError) -> Expr {
            var e = try primary()
            while true {
                if tok == .punct(".") {
                    let dot = lex.tokenStart
                    try advance()
                    // HTCondor reads "a..b" (the dots adjacent) as a.b.
                    if tok == .punct("."), lex.tokenStart == dot + 1 { try advance() }
                    guard case .identifier(let n) = tok else { throw lex.error("expected an attribute name after '.', found \(describe(tok))") }
                    try advance()
                    e = .select(e, AttrName(n))
                } else if tok == .punct("?:") {
                    try enter(); defer { depth -= 1 }
                    try advance()
                    e = .elvis(e, try postfix())
                } else if tok == .punct("[") {
                    try enter(); defer { depth -= 1 }
                    try advance()
                    let i = try expression()
                    try expect("]", "to close the subscript")
                    e = .subscript_(e, i)
                } else {
                    return e
                }
            }
        }

        mutating func primary() throws(ParseError) -> Expr {
            let t = tok
            switch t {
            case .integer(let i): try advance(); return .literal(.integer(i))
            case .real(let r): try advance(); return .literal(.real(r))
            case .string(let s): try advance(); return .literal(.string(s))
            case .boolean(let b): try advance(); return .literal(.boolean(b))
            case .undefined: try advance(); return .literal(.undefined)
            case .error: try advance(); return .literal(.error)
            case .identifier(let name):
                try advance()
                if tok == .punct("(") {
                    try enter(); defer { depth -= 1 }
                    try advance()
                    var args: [Expr] = []
                    while tok != .punct(")") {
                        args.append(try expression())
                        if tok == .punct(",") || tok == .punct(";") { try advance(); continue }
                        guard tok == .punct(")") else { throw lex.error("expected ',' or ')' in the arguments of \(name)(), found \(describe(tok))") }
                    }
                    try expect(")", "to close the argument list of \(name)()")
                    return try timeLiteral(name, args) ?? .call(Function(name: name), args)
                }
                return .attr(AttrName(name), absolute: false)
            case .punct("."):
                try advance()
                guard case .identifier(let n) = tok else { throw lex.error("expected an attribute name after '.', found \(describe(tok))") }
                try advance()
                return .attr(AttrName(n), absolute: true)
            case .punct("("):
                try enter(); defer { depth -= 1 }
                try advance()
                let e = try expression()
                try expect(")", "to close '('")
                return .paren(e)
            case .punct("{"):
                try enter(); defer { depth -= 1 }
                try advance()
                var items: [Expr] = []
                if tok != .punct("}") {
                    while true {
                        items.append(try expression())
                        if tok == .punct(",") { try advance(); continue }
                        break
                    }
                }
                try expect("}", "to close the list")
                return .list(items)
            case .punct("["):
                try enter(); defer { depth -= 1 }
                try advance()
                let ad = ClassAd()
                var first = true
                // Leading semicolons are tolerated before the first attribute (but `[;]` is not a ClassAd).
                var leading = false
                while tok == .punct(";") { try advance(); leading = true }
                if leading && tok == .punct("]") { throw lex.error("a ClassAd may not consist of ';' alone") }
                while tok != .punct("]") {
                    if case .identifier(let n) = tok {
                        try advance()
                        try expect("=", "after attribute name '\(n)'")
                        ad.insert(n, try expression())
                        first = false
                        if tok == .punct(";") {
                            while tok == .punct(";") { try advance() }
                            continue
                        }
                        guard tok == .punct("]") else { throw lex.error("expected ';' or ']' after the value of '\(n)', found \(describe(tok))") }
                    } else {
                        throw lex.error(
                            first && tok == .punct(";") ? "a ClassAd may not start with ';'" : "expected an attribute name, found \(describe(tok))")
                    }
                }
                try advance()
                return .record(ad)
            case .end:
                throw lex.error("unexpected end of input: an expression is missing")
            default:
                throw lex.error("unexpected \(describe(t))")
            }
        }
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\r" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\r" { s = s.dropLast() }
        return String(s)
    }
}
