// Evaluation with HTCondor's scoping rules (as its daemons run it, i.e. with "old ClassAd" fallbacks on):
// unscoped names resolve in the current record, then its enclosing records up to the root, then (in a
// match) in the other ad; `MY`/`SELF`, `PARENT`, `TOPLEVEL`/`ROOT` and `CurrentTime` are special names.

import Foundation

/// An evaluation that cannot complete (HTCondor's Evaluate() returning false): an absolute reference
/// with no root scope, or more than 400 nested attribute references. Callers see it as ERROR.
public struct EvalFailure: Error {
    /// What the failed evaluation left behind, which a list subscript passes on: a failing attribute
    /// reference leaves UNDEFINED; any operator or call around it turns that into ERROR.
    public var residue: Value = .error
    static let undefinedResidue = EvalFailure(residue: .undefined)
}

/// The scope an evaluation runs in.
public struct EvalState {
    public var curAd: ClassAd?
    public var rootAd: ClassAd?
    /// HTCondor allows 400 nested attribute dereferences; the 401st fails the evaluation.
    var depthRemaining = 400
    /// Attributes being evaluated right now; referring back to one of them is a cycle and gives UNDEFINED.
    var inProgress: [(ObjectIdentifier, Int)] = []
    /// Nested compound-expression evaluations; bounded so that no input can exhaust the stack
    /// (HTCondor itself crashes on some self-referential records; we return ERROR instead).
    var frames = 0
    static let maxFrames = 4000

    public init(scope: ClassAd?) { setScopes(scope) }

    /// A fresh evaluation rooted at `scope` that still counts against `outer`'s reference stack, depth and
    /// frame budget, so that an evaluation cannot escape its limits by starting a new one.
    init(scope: ClassAd?, within outer: EvalState?) {
        self.init(scope: scope)
        if let outer {
            inProgress = outer.inProgress
            depthRemaining = outer.depthRemaining
            frames = outer.frames
        }
    }

    mutating func setScopes(_ ad: ClassAd?) {
        curAd = ad
        guard let ad else { rootAd = nil; return }
        var prev = ad
        var cur = ad.parentScope
        while let c = cur {
            if c === ad { rootAd = nil; return }
            prev = c
            cur = c.parentScope
        }
        rootAd = prev
    }
}

enum LookupResult {
    case found(Expr, in: ClassAd, slot: Int)
    case value(Value)
    case undefined
    case failed
}

public enum Evaluator {
    // MARK: Attribute lookup

    static func lookupInScope(_ start: ClassAd, _ name: AttrName, _ st: inout EvalState) -> LookupResult {
        var current: ClassAd? = start
        while let cur = current {
            st.curAd = cur
            if let i = cur.slot(name) { return .found(cur.expr(at: i), in: cur, slot: i) }
            let superScope: ClassAd? = (st.rootAd === cur) ? nil : cur.parentScope
            switch name.special {
            case .root:
                guard let r = st.rootAd else { return .failed }
                return .value(.classad(r))
            case .current:
                return .value(.classad(cur))
            case .parent:
                if let s = superScope { return .value(.classad(s)) }
                return .undefined
            case .currentTime:
                return .value(.integer(Int64(time(nil))))
            case .none:
                current = superScope
                if current === start { return .undefined }
            }
        }
        return .undefined
    }

    static func evalAttr(base: Expr?, name: AttrName, absolute: Bool, _ st: inout EvalState) throws -> Value {
        let savedCur = st.curAd
        defer { st.curAd = savedCur }
        var current: ClassAd?
        if let base {
            let v = try eval(base, &st)
            switch v {
            case .undefined: return .undefined
            case .error: return .error
            case .classad(let c): current = c
            case .list(let l):
                // `list.name` applies the selection to every element.
                var out: [Value] = []
                out.reserveCapacity(l.items.count)
                for item in l.items {
                    var t = EvalState(scope: st.curAd, within: st)
                    out.append(try evalAttr(base: item, name: name, absolute: false, &t))
                }
                return .list(ListValue(values: out))
            default: return .error
            }
        } else {
            current = absolute ? st.rootAd : st.curAd
            if absolute && current == nil { throw EvalFailure.undefinedResidue }
        }
        guard let cur = current else { return .undefined }
        var r = lookupInScope(cur, name, &st)
        if base == nil, !absolute, case .undefined = r, let alt = cur.alternateScope {
            r = lookupInScope(alt, name, &st)
        }
        switch r {
        case .undefined: return .undefined
        case .failed: throw EvalFailure.undefinedResidue
        case .value(let v): return v
        case .found(let e, let ad, let slot):
            let id = ObjectIdentifier(ad)
            for (a, s) in st.inProgress where a == id && s == slot { return .undefined }
            if st.depthRemaining <= 0 { throw EvalFailure() }
            st.depthRemaining -= 1
            st.inProgress.append((id, slot))
            defer { st.inProgress.removeLast(); st.depthRemaining += 1 }
            return try eval(e, &st)
        }
    }

    // MARK: Expressions

    public static func eval(_ e: Expr, _ st: inout EvalState) throws -> Value {
        switch e {
        case .literal(let v): return v
        case .attr(let n, let abs): return try evalAttr(base: nil, name: n, absolute: abs, &st)
        case .select(let b, let n): return try evalAttr(base: b, name: n, absolute: false, &st)
        default:
            if st.frames >= EvalState.maxFrames { throw EvalFailure(residue: .error) }
            st.frames += 1
            defer { st.frames -= 1 }
            do { return try evalCompound(e, &st) } catch { throw EvalFailure(residue: .error) }
        }
    }

    static func evalCompound(_ e: Expr, _ st: inout EvalState) throws -> Value {
        switch e {
        case .literal, .attr, .select: return try eval(e, &st)
        case .paren(let a): return try eval(a, &st)
        case .list(let items): return .list(ListValue(items, scope: st.curAd))
        case .record(let r): return .classad(r)
        case .unary(let op, let a): return Operators.unary(op, try eval(a, &st))
        case .binary(let op, let a, let b):
            let v1 = try eval(a, &st)
            if op == .logicalOr, v1.booleanEquivalent == true { return .boolean(true) }
            if op == .logicalAnd, v1.booleanEquivalent == false { return .boolean(false) }
            let v2 = try eval(b, &st)
            return Operators.binary(op, v1, v2)
        case .ternary(let c, let t, let f):
            let v1 = try eval(c, &st)
            if let b = v1.booleanEquivalent { return try eval(b ? t : f, &st) }
            return v1.isUndefined ? .undefined : .error
        case .elvis(let a, let b):
            let v1 = try eval(a, &st)
            if !v1.isUndefined { return v1 }
            return try eval(b, &st)
        case .subscript_(let a, let b):
            let v1 = try eval(a, &st)
            let v2 = try eval(b, &st)
            return try subscriptValue(v1, v2, &st)
        case .call(let f, let args):
            guard let fn = f.builtin else { return .error }
            return try fn(f.name, args, &st)
        }
    }

    static func subscriptValue(_ v1: Value, _ v2: Value, _ st: inout EvalState) throws -> Value {
        if v1.isError || v2.isError { return .error }
        if v1.isUndefined || v2.isUndefined { return .undefined }
        switch (v1, v2) {
        case (.classad(let c), .string(let s)):
            let name = AttrName(s.description)
            guard c.lookup(name) != nil else { return .undefined }
            return evaluateAttribute(c, name, within: st)
        case (.list(let l), .integer(let i)):
            // HTCondor reads the index as a C int.
            let idx = Int(Int32(truncatingIfNeeded: i))
            guard idx >= 0, idx < l.items.count else { return .error }
            return elementValue(l, idx, &st)
        default:
            return .error
        }
    }

    /// A subscripted list element: evaluated in the list's own scope.
    static func elementValue(_ l: ListValue, _ i: Int, _ st: inout EvalState) -> Value {
        let saved = st.curAd
        st.curAd = l.scope
        defer { st.curAd = saved }
        // A subscript passes on what a failed element evaluation left behind instead of failing.
        do { return try eval(l.items[i], &st) } catch let f as EvalFailure { return f.residue } catch { return .error }
    }

    /// ClassAd::EvaluateAttr: a fresh evaluation rooted at `ad`. Like HTCondor, a record or list result
    /// is handed back as a copy that no longer sits in any scope.
    public static func evaluateAttribute(_ ad: ClassAd, _ name: AttrName) -> Value {
        evaluateAttribute(ad, name, within: nil)
    }

    /// `outer`: the evaluation this one runs inside; its reference stack, depth and frame budget carry
    /// over, so that a record that subscripts itself ends in UNDEFINED rather than endless recursion.
    static func evaluateAttribute(_ ad: ClassAd, _ name: AttrName, within outer: EvalState?) -> Value {
        var st = EvalState(scope: ad, within: outer)
        let v: Value
        do { v = try evalAttr(base: nil, name: name, absolute: false, &st) } catch { return .error }
        switch v {
        case .classad(let c): return .classad(c.copy())
        case .list(let l): return .list(ListValue(l.items.map(Expr.deepCopy), scope: nil, built: true))
        default: return v
        }
    }
}

extension ClassAd {
    /// Evaluates attribute `name` of this ad on its own (no match partner).
    public func evaluate(_ name: String) -> Value { Evaluator.evaluateAttribute(self, AttrName(name)) }

    /// Evaluates `expr` as if it were an attribute of this ad.
    public func evaluate(expr: Expr) -> Value {
        var st = EvalState(scope: self)
        do { return try Evaluator.eval(expr, &st) } catch { return .error }
    }
}

extension Expr {
    /// Evaluates the expression with no enclosing ad.
    public func evaluate() -> Value {
        var st = EvalState(scope: nil)
        do { return try Evaluator.eval(self, &st) } catch { return .error }
    }
}
