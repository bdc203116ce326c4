// The builtin functions, with HTCondor's argument checking and UNDEFINED/ERROR rules for each.
// Names are looked up case-insensitively; a few functions (the version*() family) also check the
// spelling as HTCondor does.

import Foundation

public typealias Builtin = @Sendable (_ name: String, _ args: [Expr], _ state: inout EvalState) throws -> Value

public enum Builtins {
    public static func lookup(_ name: String) -> Builtin? { table[name.lowercased()] }
    public static var names: [String] { table.keys.sorted() }

    @inline(__always)
    static func ev(_ e: Expr, _ st: inout EvalState) throws -> Value { try Evaluator.eval(e, &st) }

    static let table: [String: Builtin] = {
        var t: [String: Builtin] = [:]
        // type predicates
        let predicates: [(String, @Sendable (Value) -> Bool)] = [
            ("isundefined", { @Sendable v in v.isUndefined }), ("iserror", { @Sendable v in v.isError }),
            (
                "isstring",
                { @Sendable v in
                    if case .string = v { return true }; return false
                }
            ),
            (
                "isinteger",
                { @Sendable v in
                    if case .integer = v { return true }; return false
                }
            ),
            (
                "isreal",
                { @Sendable v in
                    if case .real = v { return true }; return false
                }
            ),
            (
                "islist",
                { @Sendable v in
                    if case .list = v { return true }; return false
                }
            ),
            (
                "isclassad",
                { @Sendable v in
                    if case .classad = v { return true }; return false
                }
            ),
            (
                "isboolean",
                { @Sendable v in
                    if case .boolean = v { return true }; return false
                }
            ),
            (
                "isabstime",
                { @Sendable v in
                    if case .absTime = v { return true }; return false
                }
            ),
            (
                "isreltime",
                { @Sendable v in
                    if case .relTime = v { return true }; return false
                }
            ),
        ]
        for (n, pred) in predicates {
            t[n] = { _, a, st throws in
                guard a.count == 1 else { return .error }
                return .boolean(pred(try ev(a[0], &st)))
            }
        }
        t["member"] = { n, a, st throws in try member(a, &st, identical: false) }
        t["identicalmember"] = { n, a, st throws in try member(a, &st, identical: true) }
        t["size"] = { _, a, st throws in
            guard a.count == 1 else { return .error }
            switch try ev(a[0], &st) {
            case .undefined: return .undefined
            case .list(let l): return .integer(Int64(l.items.count))
            case .classad(let c): return .integer(Int64(c.count))
            case .string(let s): return .integer(Int64(s.cString.count))
            default: return .error
            }
        }
        t["sum"] = { _, a, st throws in try sumAvg(a, &st, average: false) }
        t["avg"] = { _, a, st throws in try sumAvg(a, &st, average: true) }
        t["min"] = { _, a, st throws in try minMax(a, &st, op: .lessThan) }
        t["max"] = { _, a, st throws in try minMax(a, &st, op: .greaterThan) }
        t["anycompare"] = { _, a, st throws in try listCompare(a, &st, all: false) }
        t["allcompare"] = { _, a, st throws in try listCompare(a, &st, all: true) }

        // strings
        t["strcat"] = { n, a, st throws in try strcat(a, &st, join: false) }
        t["join"] = { n, a, st throws in try strcat(a, &st, join: true) }
        t["toupper"] = { _, a, st throws in try changeCase(a, &st, upper: true) }
        t["tolower"] = { _, a, st throws in try changeCase(a, &st, upper: false) }
        t["substr"] = { _, a, st throws in try substr(a, &st) }
        t["strcmp"] = { _, a, st throws in try compareStrings(a, &st, ignoreCase: false) }
        t["stricmp"] = { _, a, st throws in try compareStrings(a, &st, ignoreCase: true) }
        for n in ["versioncmp", "versionle", "versionlt", "versionge", "versiongt", "versioneq"] {
            t[n] = { _, a, st throws in try compareVersion(n, a, &st) }  // n: the name lowercased once, not per call
        }
        t["version_in_range"] = { _, a, st throws in try versionInRange(a, &st) }
        // Deliberate addition: HTCondor documents versionInRange() but registers it as version_in_range().
        t["versioninrange"] = t["version_in_range"]

        // regular expressions
        t["regexp"] = { _, a, st throws in try regexp(a, &st) }
        t["regexpmember"] = { _, a, st throws in try regexpMember(a, &st) }
        t["regexps"] = { n, a, st throws in try substPattern(a, &st, extra: []) }
        t["replace"] = { n, a, st throws in try substPattern(a, &st, extra: Array("f".utf8)) }
        t["replaceall"] = { n, a, st throws in try substPattern(a, &st, extra: Array("fg".utf8)) }

        // conversions
        t["int"] = { _, a, st throws in a.count == 1 ? Convert.toInteger(try ev(a[0], &st)) : .error }
        t["real"] = { _, a, st throws in a.count == 1 ? Convert.toReal(try ev(a[0], &st)) : .error }
        t["string"] = { _, a, st throws in a.count == 1 ? Convert.toString(try ev(a[0], &st)) : .error }
        t["bool"] = { _, a, st throws in try toBool(a, &st) }
        t["abstime"] = { _, a, st throws in try absTime(a, &st) }
        t["reltime"] = { _, a, st throws in try relTime(a, &st) }
        t["unparse"] = { _, a, st throws in unparse(a, &st) }

        // math
        for n in ["floor", "ceil", "ceiling", "round"] { t[n] = { _, a, st throws in try round(n, a, &st) } }
        t["pow"] = { _, a, st throws in try pow(a, &st) }
        t["quantize"] = { _, a, st throws in try quantize(a, &st) }
        t["random"] = { _, a, st throws in try random(a, &st) }

        // control and reflection
        t["ifthenelse"] = { _, a, st throws in
            guard a.count == 3 else { return .error }
            let c = try ev(a[0], &st)
            switch c {
            case .undefined: return .undefined
            case .boolean, .integer, .real: return try ev(a[c.booleanEquivalent! ? 1 : 2], &st)
            default: return .error
            }
        }
        t["eval"] = { _, a, st throws in try evalString(a, &st) }
        t["interval"] = { _, a, st throws in try interval(a, &st) }
        t["splittime"] = { _, a, st throws in try splitTime(a, &st) }
        t["formattime"] = { _, a, st throws in try formatTime(a, &st) }
        t["debug"] = { _, a, st throws in a.count == 1 ? try ev(a[0], &st) : .error }

        // time
        t["time"] = { _, a, _ in a.isEmpty ? .integer(Int64(Foundation.time(nil))) : .error }
        t["currenttime"] = { _, a, _ in a.isEmpty ? now() : .error }
        t["timezoneoffset"] = { _, a, _ in a.isEmpty ? .relTime(Double(localOffset(Int64(Foundation.time(nil))))) : .error }
        t["daytime"] = { _, a, _ in
            guard a.isEmpty else { return .error }
            var tt = Foundation.time(nil); var tmv = tm(); localtime_r(&tt, &tmv)
            return .relTime(Double(Int(tmv.tm_hour) * 3600 + Int(tmv.tm_min) * 60 + Int(tmv.tm_sec)))
        }
        for n in ["getyear", "getmonth", "getdayofyear", "getdayofmonth", "getdayofweek", "getdays", "gethours", "getminutes", "getseconds"] {
            t[n] = { _, a, st throws in try getField(n, a, &st) }
        }

        // string lists (HTCondor's compatibility layer)
        t["stringlistsize"] = { _, a, st throws in try stringListSize(a, &st) }
        for n in ["stringlistsum", "stringlistavg", "stringlistmin", "stringlistmax"] {
            t[n] = { _, a, st throws in try stringListSummarize(n, a, &st) }
        }
        t["stringlistmember"] = { _, a, st throws in try stringListMember(a, &st, ignoreCase: false) }
        t["stringlistimember"] = { _, a, st throws in try stringListMember(a, &st, ignoreCase: true) }
        t["stringlistsubsetmatch"] = { _, a, st throws in try stringListSubset(a, &st, ignoreCase: false) }
        t["stringlistisubsetmatch"] = { _, a, st throws in try stringListSubset(a, &st, ignoreCase: true) }
        t["stringlistsintersect"] = { _, a, st throws in try stringListsIntersect(a, &st) }
        // HTCondor's name has the underscore; stringListRegexpMember is an unknown function there.
        t["stringlist_regexpmember"] = { _, a, st throws in try stringListRegexpMember(a, &st) }
        t["split"] = { _, a, st throws in try split(a, &st) }
        t["splitusername"] = { _, a, st throws in try splitAt(a, &st, slot: false) }
        t["splitslotname"] = { _, a, st throws in try splitAt(a, &st, slot: true) }
        registerCompat(&t)
        return t
    }()

    // MARK: lists

    static func member(_ a: [Expr], _ st: inout EvalState, identical: Bool) throws -> Value {
        guard a.count == 2 else { return .error }
        let item = try ev(a[0], &st)
        let listV = try ev(a[1], &st)
        if listV.isUndefined || (!identical && item.isUndefined) { return .undefined }
        guard case .list(let l) = listV else { return .error }
        switch item {
        case .list, .classad: return .error;
        default: break
        }
        if !identical && item.isError { return .error }
        for e in l.items {
            let v = try ev(e, &st)
            if case .boolean(true) = Operators.binary(identical ? .metaEqual : .equal, v, item) { return .boolean(true) }
        }
        return .boolean(false)
    }

    static func listArg(_ a: [Expr], _ st: inout EvalState) throws -> Value? {
        guard a.count == 1 else { return .error }
        let v = try ev(a[0], &st)
        if v.isUndefined { return .undefined }
        guard case .list = v else { return .error }
        return nil
    }

    /// List elements as numbers for sum/avg/min/max: UNDEFINED elements are skipped, booleans count as
    /// 0/1, anything else that is not a number makes the result ERROR (nil).
    static func numericElements(_ l: ListValue, _ st: inout EvalState) throws -> [Value]? {
        var out: [Value] = []
        for e in l.items {
            switch try ev(e, &st) {
            case .undefined: continue
            case .integer(let i): out.append(.integer(i))
            case .real(let r): out.append(.real(r))
            case .boolean(let b): out.append(.boolean(b))
            default: return nil
            }
        }
        return out
    }

    static func sumAvg(_ a: [Expr], _ st: inout EvalState, average: Bool) throws -> Value {
        if let r = try listArg(a, &st) { return r }
        guard case .list(let l) = try ev(a[0], &st), let nums = try numericElements(l, &st) else { return .error }
        // A single element comes back as it is (a boolean stays a boolean); arithmetic turns booleans into 0/1.
        var result: Value = .integer(0)
        for (i, v) in nums.enumerated() { result = i == 0 ? v : Operators.binary(.add, result, v) }
        // HTCondor returns the integer 0 (not UNDEFINED) for the average of an empty list.
        if !average || nums.isEmpty { return result }
        return Operators.binary(.divide, result, .real(Double(nums.count)))
    }

    static func minMax(_ a: [Expr], _ st: inout EvalState, op: BinaryOp) throws -> Value {
        if let r = try listArg(a, &st) { return r }
        guard case .list(let l) = try ev(a[0], &st), let nums = try numericElements(l, &st) else { return .error }
        guard var result = nums.first else { return .undefined }
        if nums.count == 1 { return result }
        var anyReal = false
        for v in nums {
            if case .real = v { anyReal = true }
            if case .boolean(true) = Operators.binary(op, v, result) { result = v }
        }
        // With several elements the result is a number: real if any element was, else an integer.
        switch result {
        case .boolean(let b): return anyReal ? .real(b ? 1 : 0) : .integer(b ? 1 : 0)
        case .integer(let i): return anyReal ? .real(Double(i)) : result
        default: return result
        }
    }

    static func listCompare(_ a: [Expr], _ st: inout EvalState, all: Bool) throws -> Value {
        guard a.count == 3 else { return .error }
        let opV = try ev(a[0], &st)
        if opV.isUndefined { return .undefined }
        guard case .string(let s) = opV else { return .error }
        let ops: [String: BinaryOp] = [
            "<": .lessThan, "<=": .lessOrEqual, "!=": .notEqual, "==": .equal,
            ">": .greaterThan, ">=": .greaterOrEqual, "is": .metaEqual, "isnt": .metaNotEqual,
        ]
        guard let op = ops[s.description] else { return .error }
        let listV = try ev(a[1], &st)
        if listV.isUndefined { return .undefined }
        guard case .list(let l) = listV else { return .error }
        let target = try ev(a[2], &st)
        for e in l.items {
            let r = Operators.binary(op, try ev(e, &st), target)
            guard case .boolean(let b) = r else {
                // An UNDEFINED comparison ends the scan with FALSE; any other non-boolean is ERROR.
                return r.isUndefined ? .boolean(false) : .error
            }
            if b && !all { return .boolean(true) }
            if !b && all { return .boolean(false) }
        }
        return .boolean(all)
    }

    // MARK: strings

    /// strcat() stops at the first UNDEFINED or ERROR argument. join() skips UNDEFINED items (an
    /// UNDEFINED separator counts as empty) and is UNDEFINED only when it skipped something and joined nothing.
    static func strcat(_ argsIn: [Expr], _ st: inout EvalState, join: Bool) throws -> Value {
        var args = argsIn
        if join && (1...2).contains(args.count) {
            if case .list(let l) = try ev(args[args.count - 1], &st) {
                args = (args.count == 2 ? [args[0]] : [.literal(.string(Bytes([])))]) + l.items
            }
        }
        var buf: [UInt8] = []
        var sep: [UInt8] = []
        var skipped = false
        for (i, e) in args.enumerated() {
            let v = try ev(e, &st)
            let s: [UInt8]
            switch Convert.toString(v) {
            case .string(let b): s = b.b
            case .undefined:
                if !join { return .undefined }
                skipped = true
                continue
            default: return .error
            }
            if join {
                if i == 0 { sep = s; continue }
                // The separator goes in once the result holds something: join(",", "", "a") is "a",
                // join(",", "a", "") is "a," (HTCondor's join).
                if !buf.isEmpty { buf += sep }
            }
            buf += s
        }
        if join && skipped && buf.isEmpty { return .undefined }
        return .string(Bytes(buf))
    }

    static func changeCase(_ a: [Expr], _ st: inout EvalState, upper: Bool) throws -> Value {
        guard a.count == 1 else { return .error }
        switch Convert.toString(try ev(a[0], &st)) {
        case .string(let s): return .string(upper ? s.uppercased : s.lowercased)
        case .undefined: return .undefined
        default: return .error
        }
    }

    static func substr(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count == 2 || a.count == 3 else { return .error }
        let s = try ev(a[0], &st), o = try ev(a[1], &st)
        let l: Value = a.count == 3 ? try ev(a[2], &st) : .integer(0)
        if s.isUndefined || o.isUndefined || l.isUndefined { return .undefined }
        guard case .string(let str) = s, case .integer(let o64) = o, case .integer(let l64) = l else { return .error }
        let bytes = str.cString
        let alen = bytes.count
        var offset = Int(Int32(truncatingIfNeeded: o64))
        var len = Int(Int32(truncatingIfNeeded: l64))
        // A negative offset counts from the end; one reaching before the start is the start.
        if offset < 0 { offset = Swift.max(0, alen + offset) } else if offset >= alen { offset = alen }
        if len <= 0 {
            len = alen - offset + len
            if len < 0 { len = 0 }
        } else if len > alen - offset {
            len = alen - offset
        }
        if a.count == 3 && Int32(truncatingIfNeeded: l64) == 0 { len = 0 }
        return .string(Bytes(bytes[offset..<Swift.min(alen, offset + len)]))
    }

    static func compareStrings(_ a: [Expr], _ st: inout EvalState, ignoreCase: Bool) throws -> Value {
        guard a.count == 2 else { return .error }
        let x = try ev(a[0], &st), y = try ev(a[1], &st)
        if x.isUndefined || y.isUndefined { return .undefined }
        guard let s0 = Convert.stringBytes(x), let s1 = Convert.stringBytes(y) else { return .error }
        let c = ignoreCase ? Bytes.caseCompare(s0.cString, s1.cString) : Bytes.compare(s0.cString, s1.cString)
        return .integer(c < 0 ? -1 : (c > 0 ? 1 : 0))
    }

    /// strverscmp-like ordering: runs of digits compare as numbers (HTCondor's natural_cmp).
    public static func naturalCompare(_ a: [UInt8], _ b: [UInt8]) -> Int {
        let s1 = a + [0], s2 = b + [0]
        func dig(_ c: UInt8) -> Bool { c >= 48 && c <= 57 }
        var i = 0
        while s1[i] != 0 && s1[i] == s2[i] { i += 1 }
        if s1[i] == s2[i] { return 0 }
        var n1 = i
        while n1 > 0 && dig(s1[n1 - 1]) { n1 -= 1 }
        let n2 = n1  // both strings share the prefix up to i
        // C's char is signed here: a byte past ASCII counts as negative, as in HTCondor's natural_cmp.
        func ch(_ c: UInt8) -> Int { Int(Int8(bitPattern: c)) }
        if n1 == i && (!dig(s1[i]) || !dig(s2[i])) { return ch(s1[i]) - ch(s2[i]) }
        var z1 = n1, z2 = n2
        while s1[z1] == 48 { z1 += 1 }
        while s2[z2] == 48 { z2 += 1 }
        if z1 > n1 && !dig(s1[z1]) { z1 -= 1 }
        if z2 > n2 && !dig(s2[z2]) { z2 -= 1 }
        if z1 - n1 != z2 - n2 { return (z2 - n2) - (z1 - n1) }
        if z1 > n1 { return ch(s1[i]) - ch(s2[i]) }
        var e1 = z1, e2 = z2
        while dig(s1[e1]) { e1 += 1 }
        while dig(s2[e2]) { e2 += 1 }
        if e1 - n1 != e2 - n2 { return (e1 - n1) - (e2 - n2) }
        return ch(s1[i]) - ch(s2[i])
    }

    /// `name`: lowercased (HTCondor 25 takes any capitalisation).
    static func compareVersion(_ name: String, _ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count == 2 else { return .error }
        let l = try ev(a[0], &st), r = try ev(a[1], &st)
        if l.isUndefined || r.isUndefined { return .undefined }
        guard let sl = Convert.stringBytes(l), let sr = Convert.stringBytes(r) else { return .error }
        let c = naturalCompare(sl.cString, sr.cString)
        switch name {
        case "versioncmp": return .integer(Int64(c))
        case "versionle": return .boolean(c <= 0)
        case "versionlt": return .boolean(c < 0)
        case "versionge": return .boolean(c >= 0)
        case "versiongt": return .boolean(c > 0)
        case "versioneq": return .boolean(c == 0)
        default: return .error
        }
    }

    static func versionInRange(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count == 3 else { return .error }
        let t = try ev(a[0], &st), lo = try ev(a[1], &st), hi = try ev(a[2], &st)
        if lo.isUndefined || hi.isUndefined { return .undefined }
        guard let st0 = Convert.stringBytes(t), let s1 = Convert.stringBytes(lo), let s2 = Convert.stringBytes(hi) else { return .error }
        return .boolean(naturalCompare(s1.cString, st0.cString) <= 0 && naturalCompare(st0.cString, s2.cString) <= 0)
    }

    // MARK: regular expressions

    static func regexp(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count == 2 || a.count == 3 else { return .error }
        let p = try ev(a[0], &st), t = try ev(a[1], &st)
        let o: Value = a.count == 3 ? try ev(a[2], &st) : .string(Bytes([]))
        if p.isError || t.isError || o.isError { return .error }
        if p.isUndefined || t.isUndefined || o.isUndefined { return .undefined }
        guard case .string(let opts) = o, case .string(let pat) = p, case .string(let tgt) = t else { return .error }
        guard let m = RegexEngine.matches(pat.cString, tgt.cString, options: RegexEngine.options(opts.b)) else { return .error }
        return .boolean(m)
    }

    static func regexpMember(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count == 2 || a.count == 3 else { return .error }
        let p = try ev(a[0], &st), l = try ev(a[1], &st)
        let o: Value = a.count == 3 ? try ev(a[2], &st) : .string(Bytes([]))
        if p.isError || l.isError || o.isError { return .error }
        if p.isUndefined || l.isUndefined || o.isUndefined { return .undefined }
        guard case .string(let opts) = o, case .string(let pat) = p, case .list(let list) = l else { return .error }
        var couldBeUndefined = false
        for e in list.items {
            let v: Value
            do { v = try ev(e, &st) } catch { return .error }
            guard case .string(let s) = v else {
                if v.isUndefined { couldBeUndefined = true; continue }
                return .error
            }
            // A pattern that does not compile matches nothing here (HTCondor: FALSE), unlike regexp's ERROR.
            if RegexEngine.matches(pat.cString, s.cString, options: RegexEngine.options(opts.b)) == true { return .boolean(true) }
        }
        return couldBeUndefined ? .undefined : .boolean(false)
    }

    static func substPattern(_ a: [Expr], _ st: inout EvalState, extra: [UInt8]) throws -> Value {
        guard a.count == 3 || a.count == 4 else { return .error }
        let p = try ev(a[0], &st), t = try ev(a[1], &st), r = try ev(a[2], &st)
        let o: Value = a.count == 4 ? try ev(a[3], &st) : .string(Bytes([]))
        if p.isError || t.isError || r.isError || o.isError { return .error }
        if p.isUndefined || t.isUndefined || r.isUndefined || o.isUndefined { return .undefined }
        guard case .string(let ob) = o else { return .error }
        guard case .string(let pat) = p, case .string(let tgt) = t, case .string(let rep) = r else { return .error }
        let opts = ob.b + extra
        let full = opts.contains(UInt8(ascii: "f")), global = opts.contains(UInt8(ascii: "g"))
        guard
            let out = RegexEngine.substitute(
                pat.cString, tgt.cString, rep.cString, options: RegexEngine.options(opts),
                fullTarget: full, global: global)
        else { return .error }
        return .string(Bytes(out))
    }

    // MARK: conversions

    static func toBool(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count == 1 else { return .error }
        let v = try ev(a[0], &st)
        switch v {
        case .undefined: return .undefined
        case .boolean: return v
        case .integer(let i): return .boolean(i != 0)
        case .real(let r): return .boolean(r != 0)
        case .relTime(let r): return .boolean(Int64(r) != 0)
        case .string(let s):
            let c = s.cString
            if Bytes.caseEqual(c, Array("false".utf8)) { return .boolean(false) }
            if Bytes.caseEqual(c, Array("true".utf8)) { return .boolean(true) }
            return .undefined
        default: return .error
        }
    }

    static func localOffset(_ secs: Int64) -> Int64 {
        var t = time_t(secs); var tmv = tm(); localtime_r(&t, &tmv)
        return Int64(tmv.tm_gmtoff)
    }

    static func now() -> Value {
        let s = Int64(Foundation.time(nil))
        return .absTime(secs: s, offset: localOffset(s))
    }

    static func absTime(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        if a.isEmpty { return now() }
        guard a.count <= 2 else { return .error }
        let v = try ev(a[0], &st)
        var offset: Int64? = nil
        if a.count == 2 {
            switch try ev(a[1], &st) {
            case .integer(let i): offset = Int64(Int32(truncatingIfNeeded: i))
            case .real(let r): offset = Int64(Convert.cInt(r))
            case .relTime(let r): offset = Convert.truncate(r)
            default: return .error
            }
        }
        switch v {
        case .undefined: return .undefined
        case .integer(let i):
            let s = Int64(Int32(truncatingIfNeeded: i))
            if offset == -1 { return .error }  // HTCondor's mark of an offset it could not find
            return .absTime(secs: s, offset: offset ?? localOffset(s))
        case .real(let r):
            let s = Int64(Convert.cInt(r))
            return .absTime(secs: s, offset: offset ?? localOffset(s))
        case .absTime: return v
        // A string written in the call became a time when parsed (Parser, TimeParse); one computed
        // at run time comes back unchanged, as HTCondor's absTime() returns it.
        case .string: return v
        case .relTime(let r):
            let s = Convert.truncate(r)
            return .absTime(secs: s, offset: offset ?? localOffset(s))
        default: return .error
        }
    }

    static func relTime(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count == 1 else { return .error }
        switch try ev(a[0], &st) {
        case .undefined: return .undefined
        case .integer(let i): return .relTime(Double(Int32(truncatingIfNeeded: i)))
        case .real(let r): return .relTime(r)
        case .absTime(let s, _): return .relTime(Double(s))
        case .relTime(let r): return .relTime(r)
        // A string literal was read when parsed (its value is a real there, as in HTCondor); a string
        // computed at run time is zero seconds, as HTCondor's relTime() makes it.
        case .string: return a[0].isStringLiteral ? TimeParse.relTime(a[0].stringLiteral!).map { .real($0) } ?? .error : .relTime(0)
        default: return .error
        }
    }

    static func getField(_ name: String, _ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count == 1 else { return .error }
        switch try ev(a[0], &st) {
        case .absTime(let s, _):
            var t = time_t(s); var tmv = tm(); localtime_r(&t, &tmv)
            switch name {
            case "getyear": return .integer(Int64(tmv.tm_year) + 1900)
            case "getmonth": return .integer(Int64(tmv.tm_mon) + 1)
            case "getdayofyear": return .integer(Int64(tmv.tm_yday))
            case "getdayofmonth": return .integer(Int64(tmv.tm_mday))
            case "getdayofweek": return .integer(Int64(tmv.tm_wday))
            case "gethours": return .integer(Int64(tmv.tm_hour))
            case "getminutes": return .integer(Int64(tmv.tm_min))
            case "getseconds": return .integer(Int64(tmv.tm_sec))
            default: return .error
            }
        case .relTime(let r):
            let s = Convert.truncate(r)
            switch name {
            case "getdays": return .integer(s / 86400)
            case "gethours": return .integer((s % 86400) / 3600)
            case "getminutes": return .integer((s % 3600) / 60)
            case "getseconds": return .integer(s % 60)
            default: return .error
            }
        default: return .error
        }
    }

    static func unparse(_ a: [Expr], _ st: inout EvalState) -> Value {
        guard a.count == 1 else { return .error }
        switch a[0] {
        case .attr, .select: break
        default: return .error
        }
        // HTCondor prints the argument and looks that text up, literally, in the current ad only.
        let name = Unparser.unparse(a[0], style: .pretty)
        if let ad = st.curAd, let e = ad.lookup(AttrName(name)) {
            return .string(Bytes(Unparser.unparse(e, style: .pretty)))
        }
        return .string(Bytes([]))
    }

    // MARK: math

    static func round(_ name: String, _ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count == 1 else { return .error }
        let v = try ev(a[0], &st)
        if case .integer = v { return v }
        guard let r = Convert.realValue(v) else { return .error }
        switch name {  // lowercased where registered
        case "floor": return .integer(Convert.truncate(r.rounded(.down)))
        case "ceil", "ceiling": return .integer(Convert.truncate(r.rounded(.up)))
        default: return .integer(Convert.truncate(r.rounded(.toNearestOrEven)))
        }
    }

    static func pow(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count == 2 else { return .error }
        let x = try ev(a[0], &st), y = try ev(a[1], &st)
        if case .integer(let i) = x, case .integer(let b) = y, b >= 0 {
            return .integer(Convert.truncate(Foundation.pow(Double(i), Double(b)) + 0.5))
        }
        guard let r = Convert.realValue(x), let b = Convert.realValue(y) else { return .error }
        return .real(Foundation.pow(r, b))
    }

    static func quantize(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count == 2 else { return .error }
        let arg = try ev(a[0], &st)
        var arg2 = try ev(a[1], &st)
        guard let rval = Convert.realValue(arg) else { return .error }
        var rbase = 0.0
        if case .list(let l) = arg2 {
            var base: Value = .real(0)
            for e in l.items {
                base = try ev(e, &st)
                guard let b = Convert.realValue(base) else { return .error }
                rbase = b
                if rbase >= rval { return base }
            }
            arg2 = base
        } else {
            guard let b = Convert.realValue(arg2) else { return .error }
            rbase = b
        }
        if case .integer(let ibase) = arg2 {
            if ibase == 0 { return arg }
            if case .integer(let ival) = arg { return .integer(((ival &+ ibase &- 1) / ibase) &* ibase) }
            return .real((rval / Double(ibase)).rounded(.up) * Double(ibase))
        }
        if abs(rbase) <= 1e-8 { return arg }
        return .real((rval / rbase).rounded(.up) * rbase)
    }

    static func random(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count <= 1 else { return .error }
        let v: Value = a.isEmpty ? .real(1) : try ev(a[0], &st)
        switch v {
        // HTCondor's bound is a C int (2^31 wraps negative) and must be positive, or the evaluation fails.
        case .integer(let m):
            let mx = Int64(Int32(truncatingIfNeeded: m))
            guard mx > 0 else { return .error }
            return .integer(Int64.random(in: 0..<Int64(Int32.max)) % mx)
        case .real(let m):
            if m <= 0 { return .error }  // NaN passes, as in HTCondor
            return .real(m * Double.random(in: 0..<1))
        default: return .error
        }
    }

    static func evalString(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count == 1 else { return .error }
        let v = try ev(a[0], &st)
        guard let s = Convert.stringBytes(v) else { return .error }
        if st.depthRemaining <= 0 { throw EvalFailure() }
        guard let e = try? Parser.parseExpression(s.cString) else { return .error }
        st.depthRemaining -= 1
        defer { st.depthRemaining += 1 }
        // The parsed expression lives in the current ad's scope.
        let holder = ClassAd()
        holder.parentScope = st.curAd
        do { return try ev(e, &st) } catch { return .error }
    }

    /// splitTime(t): a time's parts as a record. A number is an absolute time at the local offset; a
    /// record is refused (formatTime takes one).
    static func splitTime(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count == 1 else { return .error }
        let v = try ev(a[0], &st)
        if v.isUndefined { return .undefined }
        if case .classad = v { return .error }
        return split(v).map { .classad($0) } ?? .error
    }

    /// HTCondor's doSplitTime: Type, Year, Month, Day, Hours, Minutes, Seconds, Offset of an absolute
    /// time (read in its own offset), Type, Days, Hours, Minutes, Seconds of a relative one (the first
    /// part that is not zero carries the sign; Seconds keeps the fraction). A record is itself.
    static func split(_ v: Value) -> ClassAd? {
        func absolute(_ secs: Int64, _ offset: Int64) -> ClassAd {
            var clock = time_t(secs &+ offset)
            var t = tm()
            gmtime_r(&clock, &t)  // a time past the year 2^31 leaves what glibc leaves, as in HTCondor
            let ad = ClassAd()
            ad.insert("Type", .string(Bytes("AbsoluteTime")))
            ad.insert("Year", .integer(Int64(t.tm_year) + 1900))
            ad.insert("Month", .integer(Int64(t.tm_mon) + 1))
            ad.insert("Day", .integer(Int64(t.tm_mday)))
            ad.insert("Hours", .integer(Int64(t.tm_hour)))
            ad.insert("Minutes", .integer(Int64(t.tm_min)))
            ad.insert("Seconds", .integer(Int64(t.tm_sec)))
            ad.insert("Offset", .integer(offset))
            return ad
        }
        switch v {
        case .integer(let i): return absolute(i, localOffset(i))
        case .real(let r):
            let s = Int64(Convert.cInt(r))
            return absolute(s, localOffset(s))
        case .absTime(let s, let o): return absolute(s, o)
        case .relTime(var r):
            let negative = r < 0
            if negative { r = -r }
            let whole = Convert.cInt(r)
            var days = whole, hrs = whole % 86400, mins = hrs % 3600
            var secs = Double(mins % 60) + (r - r.rounded(.down))
            days /= 86400; hrs /= 3600; mins /= 60
            if negative {
                if days > 0 { days = -days } else if hrs > 0 { hrs = -hrs } else if mins > 0 { mins = -mins } else { secs = -secs }
            }
            let ad = ClassAd()
            ad.insert("Type", .string(Bytes("RelativeTime")))
            ad.insert("Days", .integer(Int64(days)))
            ad.insert("Hours", .integer(Int64(hrs)))
            ad.insert("Minutes", .integer(Int64(mins)))
            ad.insert("Seconds", .real(secs))
            return ad
        case .classad(let c): return c
        default: return nil
        }
    }

    /// formatTime([t [, format]]): strftime of an absolute time (a number, or a record of splitTime's
    /// parts) read in its own offset; "%c" by default, the current local time without arguments.
    static func formatTime(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        var t = tm()
        if a.isEmpty {
            var now = Foundation.time(nil)
            localtime_r(&now, &t)
            return .string(Bytes(strftime("%c", t)))
        }
        guard a.count <= 2 else { return .error }
        let v = try ev(a[0], &st)
        if case .relTime = v { return .error }
        guard let parts = split(v) else { return .error }
        /// A part as HTCondor's EvaluateAttrInt reads it: an integer (wrapped to a C int); anything else,
        /// a real included, is no part (0).
        func part(_ name: String) -> Int32? {
            if case .integer(let i) = parts.evaluate(name) { return Int32(truncatingIfNeeded: i) }
            return nil
        }
        t.tm_sec = part("Seconds") ?? 0
        t.tm_min = part("Minutes") ?? 0
        t.tm_hour = part("Hours") ?? 0
        t.tm_mday = part("Day") ?? 0
        t.tm_mon = part("Month").map { $0 &- 1 } ?? 0
        t.tm_year = part("Year").map { $0 &- 1900 } ?? 0
        (t.tm_wday, t.tm_yday) = dayNumbers(year: t.tm_year &+ 1900, month: t.tm_mon &+ 1, day: t.tm_mday)
        var format = "%c"
        if a.count == 2 {
            guard case .string(let f) = try ev(a[1], &st) else { return .error }
            format = String(decoding: f.cString, as: UTF8.self)
        }
        return .string(Bytes(strftime(format, t)))
    }

    /// The weekday (Sunday 0) and the day of the year (0-based) as HTCondor's formatTime computes them:
    /// from the date's day number in the proleptic Gregorian calendar (day 1 is 0001-01-01, a Monday),
    /// in C int arithmetic, without normalising the month or day (a weekday below 0 prints as "?").
    static func dayNumbers(year: Int32, month: Int32, day: Int32) -> (Int32, Int32) {
        func leap(_ y: Int32) -> Bool {
            let m400 = y % 400
            return y % 4 == 0 && m400 != 100 && m400 != 200 && m400 != 300
        }
        func fixed(_ y: Int32, _ m: Int32, _ d: Int32) -> Int32 {
            let adjust: Int32 = m <= 2 ? 0 : leap(y) ? -1 : -2
            let p = y &- 1
            return 365 &* p &+ p / 4 &- p / 100 &+ p / 400 &+ (367 &* m &- 362) / 12 &+ adjust &+ d
        }
        let f = fixed(year, month, day)
        return (f % 7, f &- fixed(year, 1, 1))
    }

    static func strftime(_ format: String, _ t: tm) -> String {
        var t = t
        var buf = [CChar](repeating: 0, count: 1024)
        let n = Glibc.strftime(&buf, 1023, format, &t)
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func interval(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count == 1 else { return .error }
        guard case .integer(let i64) = Convert.toInteger(try ev(a[0], &st)) else { return .error }
        var tot = Int(Int32(truncatingIfNeeded: i64))
        let days = tot / 86400; tot %= 86400
        let hours = tot / 3600; tot %= 3600
        let mins = tot / 60, secs = tot % 60
        let s: String
        if days != 0 {
            s = String(format: "%d+%02d:%02d:%02d", days, abs(hours), abs(mins), abs(secs))
        } else if hours != 0 {
            s = String(format: "%d:%02d:%02d", hours, abs(mins), abs(secs))
        } else if mins != 0 {
            s = String(format: "%d:%02d", mins, abs(secs))
        } else {
            s = String(secs)
        }
        return .string(Bytes(s))
    }

    // MARK: string lists

    /// HTCondor's StringList: items separated by any delimiter character, surrounding white space trimmed,
    /// empty items dropped.
    static func stringListItems(_ s: [UInt8], _ delims: [UInt8]) -> [[UInt8]] {
        var items: [[UInt8]] = []
        var cur: [UInt8] = []
        func flush() {
            var a = 0, b = cur.count
            while a < b && Lexer.isSpace(cur[a]) { a += 1 }
            while b > a && Lexer.isSpace(cur[b - 1]) { b -= 1 }
            if b > a { items.append(Array(cur[a..<b])) }
            cur = []
        }
        for c in s {
            if delims.contains(c) { flush() } else { cur.append(c) }
        }
        flush()
        return items
    }

    static let defaultDelims = Array(", ".utf8)
    /// The membership and subset tests split on white space too when no delimiters are given (HTCondor
    /// tokenizes them differently from stringListSize and the others: "a\tb" is one item there, two here).
    static let memberDelims = Array(", \t\r\n".utf8)

    /// Evaluates the arguments, all of which must be strings; nil args means ERROR.
    static func stringArgs(_ a: [Expr], _ st: inout EvalState, min: Int, max: Int) throws -> [[UInt8]]? {
        guard a.count >= min && a.count <= max else { return nil }
        var out: [[UInt8]] = []
        for e in a {
            guard case .string(let s) = try ev(e, &st) else { return nil }
            out.append(s.cString)
        }
        return out
    }

    static func stringListSize(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard let s = try stringArgs(a, &st, min: 1, max: 2) else { return .error }
        return .integer(Int64(stringListItems(s[0], s.count == 2 ? s[1] : defaultDelims).count))
    }

    static func stringListSummarize(_ name: String, _ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard let s = try stringArgs(a, &st, min: 1, max: 2) else { return .error }
        let items = stringListItems(s[0], s.count == 2 ? s[1] : defaultDelims)
        var acc: Double
        var emptyAllowed = false
        let fn: (Double, Double) -> Double
        switch name {
        case "stringlistsum", "stringlistavg": acc = 0; emptyAllowed = true; fn = { $0 + $1 }
        case "stringlistmin": acc = Double(Float.greatestFiniteMagnitude); fn = { $0 < $1 ? $0 : $1 }
        default: acc = Double(Float.leastNormalMagnitude); fn = { $0 > $1 ? $0 : $1 }  // FLT_MIN, as HTCondor starts
        }
        if items.isEmpty { return emptyAllowed ? .real(0) : .undefined }
        var isReal = false
        for item in items {
            var buf = item + [0]
            var x = 0.0
            let n = buf.withUnsafeMutableBufferPointer { p -> Int32 in
                withVaList([withUnsafeMutablePointer(to: &x) { $0 }]) {
                    vsscanf(UnsafeRawPointer(p.baseAddress!).assumingMemoryBound(to: CChar.self), "%lf", $0)
                }
            }
            if n != 1 { return .error }
            if !item.allSatisfy({ "+-0123456789".utf8.contains($0) }) { isReal = true }
            acc = fn(x, acc)
        }
        if name == "stringlistavg" { acc /= Double(items.count) }
        return isReal ? .real(acc) : .integer(Convert.truncate(acc))
    }

    /// For the membership tests an UNDEFINED argument is an absent list or item (FALSE); other non-strings are ERROR.
    static func optionalStrings(_ a: [Expr], _ st: inout EvalState, min: Int, max: Int) throws -> [[UInt8]?]? {
        guard a.count >= min && a.count <= max else { return nil }
        var out: [[UInt8]?] = []
        for e in a {
            switch try ev(e, &st) {
            case .string(let s): out.append(s.cString)
            case .undefined: out.append(nil)
            default: return nil
            }
        }
        return out
    }

    static func stringListMember(_ a: [Expr], _ st: inout EvalState, ignoreCase: Bool) throws -> Value {
        guard let s = try optionalStrings(a, &st, min: 2, max: 3) else { return .error }
        if s[0] == nil && s[1] == nil { return .undefined }
        guard let item = s[0], let list = s[1] else { return .boolean(false) }
        // An UNDEFINED delimiter set is the default one.
        let items = stringListItems(list, s.count == 3 ? (s[2] ?? memberDelims) : memberDelims)
        return .boolean(items.contains { ignoreCase ? Bytes.caseEqual($0, item) : $0 == item })
    }

    static func stringListSubset(_ a: [Expr], _ st: inout EvalState, ignoreCase: Bool) throws -> Value {
        guard let s = try optionalStrings(a, &st, min: 2, max: 3) else { return .error }
        let d = s.count == 3 ? (s[2] ?? memberDelims) : memberDelims
        if s[0] == nil && s[1] == nil { return .undefined }
        // The empty list is a subset even of an absent one.
        guard let supList = s[1] else { return .boolean(s[0]?.isEmpty == true) }
        let sub = s[0].map { stringListItems($0, d) } ?? []
        // A list that is not empty but holds no item (blanks, delimiters) is a subset of nothing.
        if let text = s[0], !text.isEmpty, sub.isEmpty { return .boolean(false) }
        let sup = stringListItems(supList, d)
        return .boolean(sub.allSatisfy { x in sup.contains { ignoreCase ? Bytes.caseEqual($0, x) : $0 == x } })
    }

    static func stringListsIntersect(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count == 2 || a.count == 3 else { return .error }
        var vals: [Value] = []
        for e in a {
            do { vals.append(try ev(e, &st)) } catch { return .error }
        }
        if vals.contains(where: { $0.isError }) { return .error }
        if vals.contains(where: { $0.isUndefined }) { return .undefined }
        var strs: [[UInt8]] = []
        for v in vals { guard case .string(let s) = v else { return .error }; strs.append(s.cString) }
        let d = strs.count == 3 && !strs[2].isEmpty ? strs[2] : defaultDelims
        // split_string_list: items between delimiters, not trimmed
        func items(_ s: [UInt8]) -> [[UInt8]] { s.split(omittingEmptySubsequences: true) { d.contains($0) }.map(Array.init) }
        let set1 = Set(items(strs[1]))
        return .boolean(items(strs[0]).contains { set1.contains($0) })
    }

    static func stringListRegexpMember(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard let s = try stringArgs(a, &st, min: 2, max: 4) else { return .error }
        let items = stringListItems(s[1], s.count >= 3 ? s[2] : defaultDelims)
        let opts = RegexEngine.options(s.count == 4 ? s[3] : [], anyCase: true)
        guard RegexEngine.compile(s[0], opts) != nil else { return .error }  // before the empty list's UNDEFINED
        if items.isEmpty { return .undefined }
        for item in items where RegexEngine.matches(s[0], item, options: opts) == true { return .boolean(true) }
        return .boolean(false)
    }

    static func split(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count == 1 || a.count == 2 else { return .error }
        let v = try ev(a[0], &st)
        let sepV: Value = a.count == 2 ? try ev(a[1], &st) : .string(Bytes(", \t"))
        guard case .string(let sb) = v, case .string(let sepb) = sepV else { return .error }
        let str = sb.cString, seps = sepb.cString
        var out: [Value] = []
        var last = 0
        var prevSep: Int = -1  // the last non-space separator seen
        if !seps.isEmpty {
            var ix = str.indices.first { seps.contains(str[$0]) } ?? str.count
            while ix < str.count {
                if ix - last > 0 {
                    out.append(.string(Bytes(str[last..<ix])))
                } else if !(prevSep >= 0 && Lexer.isSpace(UInt8(prevSep))) && prevSep == Int(str[ix]) {
                    out.append(.string(Bytes([])))
                }
                if !Lexer.isSpace(str[ix]) { prevSep = Int(str[ix]) }
                last = ix + 1
                ix = (last..<str.count).first { seps.contains(str[$0]) } ?? str.count
            }
        }
        if str.count > last { out.append(.string(Bytes(str[last...]))) }
        return .list(ListValue(values: out))
    }

    static func splitAt(_ a: [Expr], _ st: inout EvalState, slot: Bool) throws -> Value {
        guard a.count == 1 else { return .error }
        guard case .string(let sb) = try ev(a[0], &st) else { return .error }
        let s = sb.cString
        let parts: [[UInt8]]
        if let at = s.firstIndex(of: UInt8(ascii: "@")) {
            parts = [Array(s[..<at]), Array(s[(at + 1)...])]
        } else {
            parts = slot ? [[], s] : [s, []]
        }
        return .list(ListValue(values: parts.map { .string(Bytes($0)) }))
    }
}
