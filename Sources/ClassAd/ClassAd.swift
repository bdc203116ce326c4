// A ClassAd record: case-insensitive attributes bound to expressions, with a lexical parent scope.

/// A ClassAd (also the value of a record literal `[ a = 1; ... ]`).
public final class ClassAd: @unchecked Sendable {
    /// Attribute names as first spelled, in insertion order (replacing keeps the first spelling, as HTCondor does).
    public private(set) var names: [AttrName] = []
    public private(set) var exprs: [Expr] = []
    private var index: [AttrKey: Int] = [:]

    /// The record this one is written inside (or, in a match, its context record); unscoped names that
    /// are not found here are looked up there.
    public internal(set) weak var parentScope: ClassAd?
    /// In a match, the other ad: HTCondor's old-ClassAd fallback for unscoped names.
    internal weak var alternateScope: ClassAd?

    public init() {}

    public init(_ attributes: [(String, Expr)]) {
        for (n, e) in attributes { insert(n, e) }
    }

    public var count: Int { names.count }

    /// Binds `name` to `expr`. Records written inside `expr` get this ad as their parent scope.
    public func insert(_ name: String, _ expr: Expr) {
        let n = AttrName(name)
        adopt(expr)
        if let i = index[n.k] {
            exprs[i] = expr
        } else {
            index[n.k] = names.count
            names.append(n)
            exprs.append(expr)
        }
    }

    public func insert(_ name: String, _ value: Value) { insert(name, .literal(value)) }

    @discardableResult
    public func remove(_ name: String) -> Expr? {
        guard let i = index[AttrName(name).k] else { return nil }
        let e = exprs[i]
        names.remove(at: i)
        exprs.remove(at: i)
        index = [:]
        for (j, n) in names.enumerated() { index[n.k] = j }
        return e
    }

    @inline(__always)
    public func lookup(_ name: AttrName) -> Expr? {
        if let i = index[name.k] { return exprs[i] }
        return nil
    }

    public func lookup(_ name: String) -> Expr? { lookup(AttrName(name)) }

    @inline(__always) func slot(_ name: AttrName) -> Int? { index[name.k] }
    @inline(__always) func expr(at i: Int) -> Expr { exprs[i] }

    /// Attributes in HTCondor's storage order (shortest name first, then case-insensitively), which is
    /// the order HTCondor prints them in.
    public var orderedAttributes: [(AttrName, Expr)] {
        zip(names, exprs).sorted { a, b in
            let x = Array(a.0.spelling.utf8), y = Array(b.0.spelling.utf8)
            if x.count != y.count { return x.count < y.count }
            return Bytes.caseCompare(x, y) < 0
        }
    }

    /// Sets the parent scope of every record directly inside `expr` (not of records nested in those), as
    /// inserting `expr` into this ad would: used to evaluate an expression "as an attribute of" this ad.
    public func adopt(_ expr: Expr) {
        switch expr {
        case .literal(let v):
            if case .classad(let c) = v { c.parentScope = self }
        case .attr: break
        case .select(let b, _): adopt(b)
        case .subscript_(let a, let b): adopt(a); adopt(b)
        case .unary(_, let a), .paren(let a): adopt(a)
        case .binary(_, let a, let b), .elvis(let a, let b): adopt(a); adopt(b)
        case .ternary(let a, let b, let c): adopt(a); adopt(b); adopt(c)
        case .call(_, let args): args.forEach(adopt)
        case .list(let items): items.forEach(adopt)
        case .record(let r): r.parentScope = self
        }
    }

    /// A deep copy with no parent scope.
    public func copy() -> ClassAd {
        let c = ClassAd()
        for (n, e) in zip(names, exprs) { c.insert(n.spelling, Expr.deepCopy(e)) }
        return c
    }
}

extension Expr {
    /// Copies records so that the copy's scopes do not alias the original's.
    static func deepCopy(_ e: Expr) -> Expr {
        switch e {
        case .literal(let v):
            if case .classad(let c) = v { return .literal(.classad(c.copy())) }
            return e
        case .attr: return e
        case .select(let b, let n): return .select(deepCopy(b), n)
        case .subscript_(let a, let b): return .subscript_(deepCopy(a), deepCopy(b))
        case .unary(let op, let a): return .unary(op, deepCopy(a))
        case .paren(let a): return .paren(deepCopy(a))
        case .binary(let op, let a, let b): return .binary(op, deepCopy(a), deepCopy(b))
        case .elvis(let a, let b): return .elvis(deepCopy(a), deepCopy(b))
        case .ternary(let a, let b, let c): return .ternary(deepCopy(a), deepCopy(b), deepCopy(c))
        case .call(let f, let args): return .call(f, args.map(deepCopy))
        case .list(let items): return .list(items.map(deepCopy))
        case .record(let r): return .record(r.copy())
        }
    }
}
