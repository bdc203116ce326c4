// How HTCondor reads the time strings written in absTime("…") and relTime("…"). It reads them when it
// parses the expression, not when it evaluates it: a string it cannot read makes the whole expression
// a parse error, and a string computed at run time is not read at all (Builtins.absTime/relTime).
// Both readings are lenient in HTCondor's own ways, kept here because a differential test against its
// library judges them (Tests/differential/functions.py).

import Foundation

enum TimeParse {
    /// absTime("…"): a year of up to four digits, then up to five two-digit fields (month, day, hour,
    /// minute, second), each after any run of non-digits, then nothing but non-digits; an offset at
    /// the very end as Z, ±HHMM or ±HH:MM (no trailing space before ±). Fields are not range-checked:
    /// C's mktime carries them over (month 13 is January of the next year, day 0 the last of the
    /// month before). A missing month is January, a missing day 0. Without an offset, the local one.
    /// nil when the year is missing, digits are left over, or the time is -1 (mktime's failure).
    static func absTime(_ text: [UInt8]) -> (secs: Int64, offset: Int64)? {
        var s = text
        var tzhr = 0, tzmin = 0, hasOffset = false
        func isDigit(_ c: UInt8) -> Bool { Lexer.isDigit(c) }
        let isSpace = Lexer.isSpace
        var len = s.count
        var i = len - 1
        while i >= 0 && isSpace(s[i]) { i -= 1 }
        /// The last five bytes as ±HHMM, removed when they are one.
        func takeOffset() -> Bool {
            let n = s.count
            guard n >= 5 else { return false }
            let o = Array(s[(n - 5)...])
            guard o[0] == UInt8(ascii: "+") || o[0] == UInt8(ascii: "-"), o[1...].allSatisfy(isDigit) else { return false }
            s.removeLast(5)
            let h = Int(o[1] - 48) * 10 + Int(o[2] - 48), m = Int(o[3] - 48) * 10 + Int(o[4] - 48)
            (tzhr, tzmin) = o[0] == UInt8(ascii: "+") ? (h, m) : (-h, -m)
            return true
        }
        if i > 0 && (s[i] == UInt8(ascii: "z") || s[i] == UInt8(ascii: "Z")) {
            hasOffset = true
            s.remove(at: i)
        } else if len > 5 && (s[len - 5] == UInt8(ascii: "+") || s[len - 5] == UInt8(ascii: "-")) {
            hasOffset = takeOffset()
        } else if len > 6 && (s[len - 6] == UInt8(ascii: "+") || s[len - 6] == UInt8(ascii: "-")) && s[len - 3] == UInt8(ascii: ":") {
            s.remove(at: len - 3)
            hasOffset = takeOffset()
        }
        len = s.count
        i = 0
        func skipToDigit() { while i < len && !isDigit(s[i]) { i += 1 } }
        /// C's atoi of the `width` bytes at i: the digits they start with.
        func atoi(_ width: Int) -> Int32 {
            var v: Int32 = 0
            var j = i
            while j < i + width && j < len && isDigit(s[j]) { v = v &* 10 &+ Int32(s[j] - 48); j += 1 }
            return v
        }
        var t = tm()
        skipToDigit()
        guard i <= len - 4 else { return nil }
        t.tm_year = atoi(4) - 1900
        i += 4
        var fields: [Int32] = []
        for _ in 0..<5 {
            skipToDigit()
            if i <= len - 2 { fields.append(atoi(2)); i += 2 } else { break }
        }
        skipToDigit()
        if i <= len - 1 && isDigit(s[i]) { return nil }
        if fields.count > 0 { t.tm_mon = fields[0] - 1 }
        if fields.count > 1 { t.tm_mday = fields[1] }
        if fields.count > 2 { t.tm_hour = fields[2] }
        if fields.count > 3 { t.tm_min = fields[3] }
        if fields.count > 4 { t.tm_sec = fields[4] }
        t.tm_isdst = 0
        let local = Int64(mktime(&t))
        guard local != -1 else { return nil }
        // mktime read the fields as local time; as UTC they are that much later.
        let secs = local + Builtins.localOffset(local)
        let offset = hasOffset ? Int64(tzhr * 3600 + tzmin * 60) : Builtins.localOffset(secs)
        return (secs - offset, offset)
    }

    /// relTime("…"): read from the end as [-][days(+|d)][hours(:|h)][minutes(:|m)]seconds[s], seconds
    /// with an optional fraction, spaces allowed between the parts; nil when anything else is left.
    /// An empty string is zero.
    static func relTime(_ text: [UInt8]) -> Double? {
        let s = text
        func isDigit(_ c: UInt8) -> Bool { Lexer.isDigit(c) }
        let isSpace = Lexer.isSpace
        var i = s.count - 1
        func skipSpaces() { while i >= 0 && isSpace(s[i]) { i -= 1 } }
        /// The digits ending at i, read left to right (C's from_chars into an int: 0 when too long).
        func digitsBefore() -> String {
            var rev: [UInt8] = []
            while i >= 0 && isDigit(s[i]) { rev.append(s[i]); i -= 1 }
            return String(decoding: rev.reversed(), as: UTF8.self)
        }
        func int(_ d: String) -> Int32 { Int32(d) ?? 0 }
        var secs = 0.0
        var mins: Int32 = 0, hrs: Int32 = 0, days: Int32 = 0
        var negative = false
        skipSpaces()
        if i >= 0 && (s[i] == UInt8(ascii: "s") || s[i] == UInt8(ascii: "S") || isDigit(s[i])) {
            if !isDigit(s[i]) { i -= 1 }
            skipSpaces()
            var text = digitsBefore()
            if i >= 0 && s[i] == UInt8(ascii: ".") {
                i -= 1
                text = digitsBefore() + "." + text
            }
            secs = text.withCString { strtod($0, nil) }
        }
        for (unit, letters) in [(1, "mM"), (2, "hH"), (3, "dD")] {
            skipSpaces()
            let sep: UInt8 = unit == 3 ? UInt8(ascii: "+") : UInt8(ascii: ":")
            guard i >= 0, s[i] == sep || letters.utf8.contains(s[i]) else { continue }
            i -= 1
            skipSpaces()
            let v = int(digitsBefore())
            switch unit {
            case 1: mins = v
            case 2: hrs = v
            default: days = v
            }
        }
        skipSpaces()
        if i >= 0 && s[i] == UInt8(ascii: "-") { negative = true; i -= 1 }
        skipSpaces()
        if i >= 0 && !isSpace(s[i]) { return nil }
        // The whole units in a C int, as HTCondor adds them (wrapping past its range).
        return (negative ? -1 : 1) * (Double(days &* 86400 &+ hrs &* 3600 &+ mins &* 60) + secs)
    }
}

extension Expr {
    /// The bytes of a string literal (the argument of absTime("…") and relTime("…")).
    var stringLiteral: [UInt8]? {
        if case .literal(.string(let s)) = self { return s.b }
        return nil
    }
    var isStringLiteral: Bool { stringLiteral != nil }
}
