// The record HTCondor builds to evaluate one ad against another (classad::MatchClassAd), reproduced
// so that every name the two ads can reach resolves exactly as in HTCondor:
//
//   [ lCtx = [ ad = .LEFT; my = .LEFT; other = .RIGHT; target = .RIGHT ]; LEFT = <left>;
//     rCtx = [ ad = .RIGHT; my = .RIGHT; other = .LEFT; target = .LEFT ]; RIGHT = <right>;
//     leftRankValue = LEFT.rank; rightRankValue = RIGHT.rank;
//     symmetricMatch = RIGHT.requirements && LEFT.requirements;
//     leftMatchesRight = RIGHT.requirements; rightMatchesLeft = LEFT.requirements ]
//
// with <left>'s parent scope lCtx and <right>'s rCtx, and each ad's alternate scope the other ad.

public final class MatchContext {
    public private(set) var left: ClassAd
    public private(set) var right: ClassAd
    let root = ClassAd()
    let lCtx: ClassAd, rCtx: ClassAd
    private var saved: (ClassAd?, ClassAd?, ClassAd?, ClassAd?)

    public init(left: ClassAd, right: ClassAd) {
        self.left = left
        self.right = right
        saved = (nil, nil, nil, nil)
        func ref(_ n: String) -> Expr { .attr(AttrName(n), absolute: true) }
        lCtx = ClassAd([("ad", ref("LEFT")), ("my", ref("LEFT")), ("other", ref("RIGHT")), ("target", ref("RIGHT"))])
        rCtx = ClassAd([("ad", ref("RIGHT")), ("my", ref("RIGHT")), ("other", ref("LEFT")), ("target", ref("LEFT"))])
        root.insert("lCtx", .record(lCtx))
        root.insert("rCtx", .record(rCtx))
        root.insert("leftRankValue", .select(ref("LEFT"), AttrName("rank")))
        root.insert("rightRankValue", .select(ref("RIGHT"), AttrName("rank")))
        root.insert(
            "symmetricMatch", .binary(.logicalAnd, .select(ref("RIGHT"), AttrName("requirements")), .select(ref("LEFT"), AttrName("requirements"))))
        root.insert("leftMatchesRight", .select(ref("RIGHT"), AttrName("requirements")))
        root.insert("rightMatchesLeft", .select(ref("LEFT"), AttrName("requirements")))
        attach(left, right)
    }

    deinit { release() }

    private var released = false

    /// Reuses this match record for another pair (as HTCondor's negotiator reuses its match ad).
    public func rebind(left newLeft: ClassAd, right newRight: ClassAd) {
        release()
        attach(newLeft, newRight)
    }

    /// Puts `l` and `r` into the record, remembering their scopes to restore on release.
    private func attach(_ l: ClassAd, _ r: ClassAd) {
        released = false
        left = l
        right = r
        saved = (l.parentScope, l.alternateScope, r.parentScope, r.alternateScope)
        root.insert("LEFT", .record(l))
        root.insert("RIGHT", .record(r))
        l.parentScope = lCtx
        r.parentScope = rCtx
        l.alternateScope = r
        r.alternateScope = l
    }

    /// Puts the two ads back as they were (once; later calls do nothing).
    public func release() {
        if released { return }
        released = true
        left.parentScope = saved.0
        left.alternateScope = saved.1
        right.parentScope = saved.2
        right.alternateScope = saved.3
    }

    /// Evaluates `expr` as an attribute of `scope` (the left or the right ad).
    public func evaluate(_ expr: Expr, in scope: ClassAd) -> Value {
        var st = EvalState(scope: scope)
        do { return try Evaluator.eval(expr, &st) } catch { return .error }
    }

    /// Evaluates attribute `name` of `scope`.
    public func evaluate(attribute name: String, of scope: ClassAd) -> Value {
        var st = EvalState(scope: scope)
        do { return try Evaluator.evalAttr(base: nil, name: AttrName(name), absolute: false, &st) } catch { return .error }
    }

    /// Does `ad`'s Requirements accept its partner? (true, or a non-zero number, as HTCondor's matchmaker counts it)
    public func requirementsHold(of ad: ClassAd) -> Bool {
        guard ad.lookup("Requirements") != nil else { return false }
        return evaluate(attribute: "Requirements", of: ad).booleanEquivalent ?? false
    }
}

extension Value {
    /// A Rank value as HTCondor's negotiator reads it (EvalFloat): numbers and booleans, anything else 0.
    public var rankValue: Double {
        switch self {
        case .integer(let i): return Double(i)
        case .real(let r): return r
        case .boolean(let b): return b ? 1 : 0
        default: return 0
        }
    }
}
