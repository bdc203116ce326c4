// Match expressions compiled once against the other ad's attributes, for the matchmaker's hot loop.
//
// In a match (MatchContext) a name in one ad's Requirements or Rank resolves to a literal of that ad,
// or, failing that, to an attribute of the other ad (`TARGET.x`, or an unscoped `x` through the
// old-ClassAd fallback). A compiled expression has the first folded in as constants and the second
// turned into slots: position k of the partner's "row", the value of the partner's k-th named
// attribute. A row holds only values that reading the attribute in a match would produce unchanged
// (plain literals, lists of literals, UNDEFINED for a missing name); a partner whose attribute is
// anything else (an expression) is marked, and that pair goes to the exact evaluator.
//
// What compiles: literals, attribute references as above, operators, `c ? a : b`, `a ?: b` and calls of
// every builtin that reads only its arguments' values. What does not (the whole expression then stays
// with the exact evaluator): subscripts, records, absolute and scope names (`MY` as a record,
// `PARENT`, `CurrentTime`…), own attributes bound to expressions, and the functions that look at
// expressions or scopes rather than values (eval, unparse, unresolved, evalInEachContext,
// countMatches). The operators and builtins are the exact evaluator's own; only the lookups differ.

extension Value {
    /// Not a list or a record: a value whose reading cannot depend on the ad it is read in.
    var isPlain: Bool {
        switch self {
        case .list, .classad: return false
        default: return true
        }
    }
}

extension Expr {
    /// A plain literal, or a list written with only such elements: nothing in it can refer to another ad.
    var isConstant: Bool {
        switch self {
        case .literal(let v): return v.isPlain
        case .list(let items): return items.allSatisfy(\.isConstant)
        default: return false
        }
    }
}

/// Names of the partner's attributes that compiled expressions read, each given a slot.
public struct PartnerLayout {
    public private(set) var names: [AttrName] = []
    var slotOf: [AttrKey: Int] = [:]
    public init() {}

    public var count: Int { names.count }

    mutating func slot(_ n: AttrName) -> Int {
        if let s = slotOf[n.k] { return s }
        names.append(n)
        slotOf[n.k] = names.count - 1
        return names.count - 1
    }

    /// What the partner `ad` gives each slot, or nil where reading it in a match would evaluate an
    /// expression (that slot then sends the pair to the exact evaluator).
    func row(of ad: ClassAd) -> [Value?] { names.map { CompiledExpr.plainValue(ad, $0) } }
}

indirect enum CompiledExpr {
    case constant(Value)
    case slot(Int)
    case unary(UnaryOp, CompiledExpr)
    case binary(BinaryOp, CompiledExpr, CompiledExpr)
    /// `slot op integer` or `integer op slot` (`constantFirst`): the common shape, without the generic dispatch.
    case compareInteger(BinaryOp, Int, Int64, constantFirst: Bool)
    /// The same with a string constant.
    case compareString(BinaryOp, Int, Bytes, constantFirst: Bool)
    case ternary(CompiledExpr, CompiledExpr, CompiledExpr)
    case elvis(CompiledExpr, CompiledExpr)
    /// A builtin; `constants` holds the literal expression of each constant argument, made once.
    case call(String, Builtin, [CompiledExpr], constants: [Expr?])

    /// Functions whose result depends on how their arguments are written or on the scope they run in.
    static let scopeReaders: Set<String> = ["eval", "unparse", "unresolved", "evalineachcontext", "countmatches"]
    /// Deeper expressions are left to the exact evaluator (its own frame limit stays the judge).
    static let maxDepth = 200

    /// The value `ad`'s attribute `name` has when read in a match, if that is a plain value: a literal,
    /// a list written with literals only (in `ad`'s scope, as the evaluator makes it), or UNDEFINED when
    /// `ad` lacks it and no scope of the match record defines it. nil: anything else.
    static func plainValue(_ ad: ClassAd, _ name: AttrName) -> Value? {
        guard let e = ad.lookup(name) else {
            return partnerName(name) ? .undefined : nil
        }
        switch e {
        case .literal(let v): return v.isPlain ? v : nil
        case .list(let items) where items.allSatisfy(\.isConstant): return .list(ListValue(items, scope: ad))
        default: return nil
        }
    }

    /// Compiles `e`, an attribute expression of `own`, for evaluation against partners laid out in
    /// `layout` (which grows by the names it reads). nil: the expression must go to the exact evaluator.
    static func compile(_ e: Expr, own: ClassAd, layout: inout PartnerLayout) -> CompiledExpr? {
        var staged = layout  // a clause that does not compile leaves no slots behind
        guard let c = compile(e, own, &staged, depth: 0) else { return nil }
        layout = staged
        return c
    }

    static func partnerName(_ n: AttrName) -> Bool { n.special == .none && !n.namesScope }

    private static func compile(_ e: Expr, _ own: ClassAd, _ layout: inout PartnerLayout, depth: Int) -> CompiledExpr? {
        guard depth < maxDepth else { return nil }
        func sub(_ x: Expr) -> CompiledExpr? { compile(x, own, &layout, depth: depth + 1) }
        switch e {
        case .literal(let v):
            return v.isPlain ? .constant(v) : nil
        case .list(let items):
            return items.allSatisfy(\.isConstant) ? .constant(.list(ListValue(items, scope: own))) : nil
        case .attr(let n, false):
            guard partnerName(n) else { return nil }
            if own.lookup(n) != nil { return plainValue(own, n).map { .constant($0) } }
            return .slot(layout.slot(n))  // not here: the other ad's (old-ClassAd fallback), or UNDEFINED
        case .select(.attr(let b, false), let n) where own.lookup(b) == nil && partnerName(n):
            switch b.key {
            case "target", "other": return .slot(layout.slot(n))
            case "my", "self": return plainValue(own, n).map { .constant($0) }  // MY.x does not fall back to the other ad
            default: return nil
            }
        case .paren(let a):
            return sub(a)
        case .unary(let op, let a):
            return sub(a).map { .unary(op, $0) }
        case .binary(let op, let a, let b):
            guard let x = sub(a), let y = sub(b) else { return nil }
            if op.isComparison {
                switch (x, y) {
                case (.slot(let k), .constant(.integer(let c))): return .compareInteger(op, k, c, constantFirst: false)
                case (.constant(.integer(let c)), .slot(let k)): return .compareInteger(op, k, c, constantFirst: true)
                case (.slot(let k), .constant(.string(let s))): return .compareString(op, k, s, constantFirst: false)
                case (.constant(.string(let s)), .slot(let k)): return .compareString(op, k, s, constantFirst: true)
                default: break
                }
            }
            return .binary(op, x, y)
        case .ternary(let c, let t, let f):
            guard let x = sub(c), let y = sub(t), let z = sub(f) else { return nil }
            return .ternary(x, y, z)
        case .elvis(let a, let b):
            guard let x = sub(a), let y = sub(b) else { return nil }
            return .elvis(x, y)
        case .call(let f, let args):
            guard let fn = f.builtin else { return .constant(.error) }  // an unknown function is ERROR
            guard !scopeReaders.contains(f.lowercasedName) else { return nil }
            var compiled: [CompiledExpr] = []
            var constants: [Expr?] = []
            for a in args {
                guard let c = sub(a) else { return nil }
                compiled.append(c)
                if case .constant(let v) = c { constants.append(.literal(v)) } else { constants.append(nil) }
            }
            return .call(f.name, fn, compiled, constants: constants)
        default:
            return nil
        }
    }

    /// The slots this expression reads.
    var slots: [Int] {
        var out: [Int] = []
        func go(_ c: CompiledExpr) {
            switch c {
            case .constant: break
            case .slot(let k), .compareInteger(_, let k, _, _), .compareString(_, let k, _, _): if !out.contains(k) { out.append(k) }
            case .unary(_, let a): go(a)
            case .binary(_, let a, let b), .elvis(let a, let b): go(a); go(b)
            case .ternary(let a, let b, let c): go(a); go(b); go(c)
            case .call(_, _, let args, _): args.forEach(go)
            }
        }
        go(self)
        return out
    }

    /// Evaluates against a partner whose slot k holds `row[k * stride]` (every slot read must be plain).
    /// Throws where the exact evaluator would fail the evaluation; callers then ask the exact evaluator.
    func eval(_ row: UnsafePointer<Value>, stride: Int) throws -> Value {
        switch self {
        case .constant(let v): return v
        case .slot(let k): return row[k &* stride]
        case .compareInteger(let op, let k, let c, let first):
            if case .integer(let x) = row[k &* stride] {
                let (l, r) = first ? (c, x) : (x, c)
                return .boolean(Operators.ordered(op, l < r ? -1 : (l == r ? 0 : 1)))
            }
            let v = row[k &* stride]
            return first ? Operators.binary(op, .integer(c), v) : Operators.binary(op, v, .integer(c))
        case .compareString(let op, let k, let s, let first):
            if case .string(let x) = row[k &* stride] {
                let meta = op == .metaEqual || op == .metaNotEqual
                let (l, r) = first ? (s.b, x.b) : (x.b, s.b)
                return .boolean(Operators.ordered(op, meta ? Bytes.compare(l, r) : Bytes.caseCompare(l, r)))
            }
            let v = row[k &* stride]
            return first ? Operators.binary(op, .string(s), v) : Operators.binary(op, v, .string(s))
        case .unary(let op, let a):
            return Operators.unary(op, try a.eval(row, stride: stride))
        case .binary(let op, let a, let b):
            let v1 = try a.eval(row, stride: stride)
            if op == .logicalOr, v1.booleanEquivalent == true { return .boolean(true) }
            if op == .logicalAnd, v1.booleanEquivalent == false { return .boolean(false) }
            return Operators.binary(op, v1, try b.eval(row, stride: stride))
        case .ternary(let c, let t, let f):
            let v1 = try c.eval(row, stride: stride)
            if let b = v1.booleanEquivalent { return try (b ? t : f).eval(row, stride: stride) }
            return v1.isUndefined ? .undefined : .error
        case .elvis(let a, let b):
            let v1 = try a.eval(row, stride: stride)
            return v1.isUndefined ? try b.eval(row, stride: stride) : v1
        case .call(let name, let fn, let args, let constants):
            var exprs: [Expr] = []
            exprs.reserveCapacity(args.count)
            for (a, c) in zip(args, constants) { exprs.append(try c ?? .literal(a.eval(row, stride: stride))) }
            var st = EvalState(scope: nil)
            return try fn(name, exprs, &st)
        }
    }
}

/// An ad's attribute expression compiled for matching, with the slots it reads.
final class CompiledClause {
    let expr: CompiledExpr
    let slots: [Int]

    init?(_ e: Expr, of own: ClassAd, layout: inout PartnerLayout) {
        guard let c = CompiledExpr.compile(e, own: own, layout: &layout) else { return nil }
        expr = c
        slots = c.slots
    }

    /// Attribute `name` of `own`, as a match evaluates it; nil when `own` lacks it or it does not compile.
    convenience init?(attribute name: String, of own: ClassAd, layout: inout PartnerLayout) {
        guard let e = own.lookup(name) else { return nil }
        self.init(e, of: own, layout: &layout)
    }
}
