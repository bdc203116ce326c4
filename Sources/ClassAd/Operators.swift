// Operator semantics, following HTCondor's Operation::_doOperation case by case.

import Foundation

enum Operators {
    static func unary(_ op: UnaryOp, _ v: Value) -> Value {
        switch op {
        case .plus:
            switch v {
            case .boolean, .string, .list, .classad, .absTime: return .error
            default: return v
            }
        case .minus:
            switch v {
            case .error, .undefined: return v
            case .integer(let i): return .integer(0 &- i)
            case .real(let r): return .real(-r)
            case .relTime(let t): return .relTime(-t)
            default: return .error  // includes booleans: HTCondor's code falls through to ERROR
            }
        case .not:
            switch v {
            case .error, .undefined: return v
            default:
                if let b = v.booleanEquivalent { return .boolean(!b) }
                return .error
            }
        case .bitNot:
            switch v {
            case .error, .undefined: return v
            case .integer(let i): return .integer(~i)
            default: return .error
            }
        }
    }

    @inline(__always)
    static func binary(_ op: BinaryOp, _ a: Value, _ b: Value) -> Value {
        if op.isStrict {
            if a.isError || b.isError { return .error }
            if a.isUndefined || b.isUndefined { return .undefined }
        }
        if op.isComparison { return compare(op, a, b) }
        if op.isArithmetic { return arithmetic(op, a, b) }
        if op.isBitwise { return bitwise(op, a, b) }
        return logical(op, a, b)
    }

    // MARK: Comparison

    /// The type a comparison or arithmetic is carried out in, after HTCondor's promotions.
    enum Domain { case classad, list, string, undefined, error, absTime, relTime, integer(Int64, Int64), real(Double, Double) }

    @inline(__always)
    static func coerce(_ a: Value, _ b: Value) -> Domain {
        switch (a, b) {
        case (.integer(let x), .integer(let y)): return .integer(x, y)
        case (.real(let x), .real(let y)): return .real(x, y)
        case (.integer(let x), .real(let y)): return .real(Double(x), y)
        case (.real(let x), .integer(let y)): return .real(x, Double(y))
        default: break
        }
        if case .classad = a { return .classad }; if case .classad = b { return .classad }
        if case .list = a { return .list }; if case .list = b { return .list }
        if case .string = a { return .string }; if case .string = b { return .string }
        if a.isUndefined || b.isUndefined { return .undefined }
        if a.isError || b.isError { return .error }
        if case .absTime = a { return .absTime }; if case .absTime = b { return .absTime }
        if case .relTime = a { return .relTime }; if case .relTime = b { return .relTime }
        // booleans become integers
        func num(_ v: Value) -> (Int64?, Double?) {
            switch v {
            case .boolean(let t): return (t ? 1 : 0, nil)
            case .integer(let i): return (i, nil)
            case .real(let r): return (nil, r)
            default: return (0, nil)
            }
        }
        let (ia, ra) = num(a), (ib, rb) = num(b)
        if let ia, let ib { return .integer(ia, ib) }
        return .real(ra ?? Double(ia!), rb ?? Double(ib!))
    }

    @inline(__always)
    static func ordered(_ op: BinaryOp, _ c: Int) -> Bool {
        switch op {
        case .lessThan: return c < 0
        case .lessOrEqual: return c <= 0
        case .equal, .metaEqual: return c == 0
        case .notEqual, .metaNotEqual: return c != 0
        case .greaterOrEqual: return c >= 0
        case .greaterThan: return c > 0
        default: return false
        }
    }

    @inline(__always)
    static func realCompare(_ op: BinaryOp, _ x: Double, _ y: Double) -> Bool {
        switch op {
        case .lessThan: return x < y
        case .lessOrEqual: return x <= y
        case .equal, .metaEqual: return x == y
        case .notEqual, .metaNotEqual: return x != y
        case .greaterOrEqual: return x >= y
        case .greaterThan: return x > y
        default: return false
        }
    }

    static func sameType(_ a: Value, _ b: Value) -> Bool {
        switch (a, b) {
        case (.undefined, .undefined), (.error, .error), (.boolean, .boolean), (.integer, .integer),
            (.real, .real), (.string, .string), (.classad, .classad),
            (.absTime, .absTime), (.relTime, .relTime):
            return true
        case (.list(let x), .list(let y)): return x.built == y.built
        default: return false
        }
    }

    static func compare(_ op: BinaryOp, _ a: Value, _ b: Value) -> Value {
        if op == .metaEqual || op == .metaNotEqual {
            // No promotions: different types are simply not identical.
            if !sameType(a, b) { return .boolean(op == .metaNotEqual) }
            switch (a, b) {
            case (.undefined, _), (.error, _): return .boolean(op == .metaEqual)
            case (.boolean(let x), .boolean(let y)): return .boolean(ordered(op, x == y ? 0 : 1))
            case (.integer(let x), .integer(let y)): return .boolean(ordered(op, x == y ? 0 : 1))
            case (.real(let x), .real(let y)): return .boolean(realCompare(op, x, y))
            case (.string(let x), .string(let y)): return .boolean(ordered(op, Bytes.compare(x.b, y.b)))
            case (.absTime(let s1, let o1), .absTime(let s2, let o2)):
                return .boolean((s1 == s2 && o1 == o2) == (op == .metaEqual))
            case (.relTime(let x), .relTime(let y)): return .boolean(realCompare(op, x, y))
            default: return .error  // lists and records cannot be compared
            }
        }
        switch coerce(a, b) {
        case .string:
            guard case .string(let x) = a, case .string(let y) = b else { return .error }
            return .boolean(ordered(op, Bytes.caseCompare(x.b, y.b)))
        case .integer(let x, let y): return .boolean(ordered(op, x < y ? -1 : (x == y ? 0 : 1)))
        case .real(let x, let y): return .boolean(realCompare(op, x, y))
        case .absTime:
            guard case .absTime(let s1, _) = a, case .absTime(let s2, _) = b else { return .error }
            return .boolean(ordered(op, s1 < s2 ? -1 : (s1 == s2 ? 0 : 1)))
        case .relTime:
            guard case .relTime(let x) = a, case .relTime(let y) = b else { return .error }
            return .boolean(realCompare(op, x, y))
        default: return .error
        }
    }

    // MARK: Arithmetic

    static func isArithmeticOperand(_ v: Value) -> Bool {
        switch v {
        case .integer, .real, .absTime, .relTime, .boolean: return true
        default: return false
        }
    }

    static func arithmetic(_ op: BinaryOp, _ a: Value, _ b: Value) -> Value {
        guard isArithmeticOperand(a), isArithmeticOperand(b) else { return .error }
        switch coerce(a, b) {
        case .integer(let x, let y):
            switch op {
            case .add: return .integer(x &+ y)
            case .subtract: return .integer(x &- y)
            case .multiply: return .integer(x &* y)
            case .divide:
                if x == .min && y == -1 { return .integer(.max) }
                return y == 0 ? .error : .integer(x / y)
            case .modulus:
                if x == .min && y == -1 { return .integer(0) }
                return y == 0 ? .error : .integer(x % y)
            default: return .error
            }
        case .real(let x, let y):
            let r: Double
            switch op {
            case .add: r = x + y
            case .subtract: r = x - y
            case .multiply: r = x * y
            case .divide: r = x / y
            default: return .error  // % is not defined on reals
            }
            // HTCondor treats a result of HUGE_VAL (+inf, not -inf) as an error.
            return r == .infinity ? .error : .real(r)
        case .absTime, .relTime:
            return timeArithmetic(op, a, b)
        default:
            return .error
        }
    }

    static func timeArithmetic(_ op: BinaryOp, _ a: Value, _ b: Value) -> Value {
        func t(_ d: Double) -> Int64 { Int64(Int32(truncatingIfNeeded: Int64(exactly: d.rounded(.towardZero)) ?? 0)) }
        switch (op, a, b) {
        case (.add, .absTime(let s, let o), .relTime(let r)): return .absTime(secs: s + t(r), offset: o)
        case (.add, .relTime(let r), .absTime(let s, let o)): return .absTime(secs: s + t(r), offset: o)
        case (.add, .relTime(let x), .relTime(let y)): return .relTime(x + y)
        case (.subtract, .absTime(let s1, _), .absTime(let s2, _)): return .relTime(Double(s1 - s2))
        case (.subtract, .absTime(let s, let o), .relTime(let r)): return .absTime(secs: s - t(r), offset: o)
        case (.subtract, .relTime(let x), .relTime(let y)): return .relTime(x - y)
        case (.multiply, .relTime(let x), .integer(let n)): return .relTime(x * Double(n))
        case (.divide, .relTime(let x), .integer(let n)): return .relTime(x / Double(n))
        case (.multiply, .relTime(let x), .real(let n)): return .relTime(x * n)
        case (.divide, .relTime(let x), .real(let n)): return .relTime(x / n)
        case (.multiply, .integer(let n), .relTime(let x)): return .relTime(Double(n) * x)
        case (.multiply, .real(let n), .relTime(let x)): return .relTime(n * x)
        default: return .error
        }
    }

    // MARK: Bitwise

    static func bitwise(_ op: BinaryOp, _ a: Value, _ b: Value) -> Value {
        guard case .integer(let x) = a, case .integer(let y) = b else { return .error }
        switch op {
        case .bitOr: return .integer(x | y)
        case .bitAnd: return .integer(x & y)
        case .bitXor: return .integer(x ^ y)
        // Shift counts behave as on x86-64 (the count is taken modulo 64), as in HTCondor's binaries.
        case .leftShift: return .integer(x &<< y)
        case .rightShift:
            if x >= 0 { return .integer(x &>> y) }
            if y <= 0 { return .integer(x) }
            return .integer(x >> Swift.min(y, 63))
        case .unsignedRightShift:
            if x >= 0 { return .integer(x &>> y) }
            return .integer(((x >> 1) & .max) &>> (y &- 1))
        default: return .error
        }
    }

    // MARK: Logic (non-strict: three-valued with UNDEFINED and ERROR)

    static func logical(_ op: BinaryOp, _ a: Value, _ b: Value) -> Value {
        func norm(_ v: Value) -> Value? {
            switch v {
            case .undefined, .error, .boolean: return v
            default: if let t = v.booleanEquivalent { return .boolean(t) }; return nil
            }
        }
        guard let v1 = norm(a), let v2 = norm(b) else { return .error }
        if op == .logicalOr {
            switch v1 {
            case .boolean(true): return .boolean(true)
            case .error: return .error
            case .boolean(false): return v2
            default:
                guard case .boolean(let y) = v2 else { return v2 }
                return y ? .boolean(true) : .undefined
            }
        } else {
            switch v1 {
            case .boolean(false): return .boolean(false)
            case .error: return .error
            case .boolean(true): return v2
            default:
                guard case .boolean(let y) = v2 else { return v2 }
                return y ? .undefined : .boolean(false)
            }
        }
    }
}
