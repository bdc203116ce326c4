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
        case .literal(.classad(let c)), .record(let c): c.parentScope = self
        default: expr.children.forEach(adopt)
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
        case .literal(.classad(let c)): return .literal(.classad(c.copy()))
        case .record(let r): return .record(r.copy())
        default: return e.mapChildren(deepCopy)
        }
    }
}
