// HTCondor's value conversions (convertValueTo{String,Integer,Real}Value), used by the builtins.

import Foundation

enum Convert {
    /// string(): numbers, booleans, lists and records as HTCondor prints them.
    static func toString(_ v: Value) -> Value {
        switch v {
        case .undefined, .error, .string: return v
        case .absTime(let s, let o): return .string(Bytes(TimeFormat.absTimeString(secs: s, offset: o)))
        case .relTime(let r): return .string(Bytes(TimeFormat.relTimeText(r)))
        default: return .string(Bytes(Unparser.unparse(v, style: .htcondor)))
        }
    }

    static func stringBytes(_ v: Value) -> Bytes? {
        if case .string(let s) = toString(v) { return s }
        return nil
    }

    /// C's (long long) cast of a double as x86-64 performs it: out-of-range and NaN give INT64_MIN.
    static func truncate(_ r: Double) -> Int64 {
        if r.isNaN || r >= 9223372036854775808.0 || r < -9223372036854775808.0 { return .min }
        return Int64(r.rounded(.towardZero))
    }

    /// C's (int) cast of a double as x86-64 performs it: out of the int's range and NaN give INT_MIN.
    static func cInt(_ r: Double) -> Int32 {
        if r.isNaN || r >= 2147483648.0 || r <= -2147483649.0 { return .min }
        return Int32(r.rounded(.towardZero))
    }

    static func toInteger(_ v: Value) -> Value {
        switch v {
        case .undefined, .error: return v
        case .boolean(let b): return .integer(b ? 1 : 0)
        case .integer: return v
        case .real(let r): return .integer(truncate(r))
        case .absTime(let s, _): return .integer(s)
        case .relTime(let r): return .integer(truncate(r))
        case .list, .classad: return .error
        case .string:
            // HTCondor reads the string with strtod and truncates: "0x10" is 16, "1e3" is 1000, "12abc" is 12.
            guard case .real(let r) = toReal(v) else { return .error }
            return .integer(truncate(r))
        }
    }

    static func toReal(_ v: Value) -> Value {
        switch v {
        case .undefined, .error: return v
        case .boolean(let b): return .real(b ? 1 : 0)
        case .integer(let i): return .real(Double(i))
        case .real: return v
        case .absTime(let s, _): return .real(Double(s))
        case .relTime(let r): return .real(Double(truncate(r)))  // whole seconds, as HTCondor converts it
        case .list, .classad: return .error
        case .string(let s):
            var buf = s.cString + [0]
            return buf.withUnsafeMutableBufferPointer { p -> Value in
                let base = UnsafeMutableRawPointer(p.baseAddress!).assumingMemoryBound(to: CChar.self)
                var end: UnsafeMutablePointer<CChar>? = nil
                let r = strtod(base, &end)
                if end == base && r == 0 { return .error }
                return .real(r)
            }
        }
    }

    /// Numbers and strings convertible to a real, as a Swift Double.
    static func realValue(_ v: Value) -> Double? {
        if case .real(let r) = toReal(v) { return r }
        return nil
    }
}
