// The partners' attribute values in columns, and compiled expressions run down them.
//
// A compiled expression (Compiled.swift) reads its partner's plain values by slot. Against many
// partners at once (a job's Requirements against every image, an image's against its candidate jobs)
// the values sit in columns, one per slot, and an expression runs down them as a whole: `&&`, `||` and
// `!` combine their operands' value codes row by row, an integer attribute against a constant is a loop
// over the column's integers, and an expression of one attribute is evaluated once per distinct value.
// Whatever cannot be told this way is `unknown` for that row, and the caller asks the compiled
// expression, then the exact evaluator (`PartnerColumns.holds`).

/// How a value takes part in `&&`, `||` and `!`: all a Requirements conjunct's value is needed for.
enum MatchCode: UInt8 {
    case f = 0, t = 1, u = 2, e = 3, other = 4
    /// Not told by the columns (a value that is not plain, an evaluation that failed).
    case unknown = 255

    init(_ v: Value) {
        switch v {
        case .undefined: self = .u
        case .error: self = .e
        default:
            if let b = v.booleanEquivalent { self = b ? .t : .f } else { self = .other }
        }
    }

    /// HTCondor's `&&`, `||` and `!` on codes (f, t, u, e, other; `table[a * 5 + b]`), read off the
    /// operators themselves with one value of each code, and checked with a second set (0 for false, a
    /// real for true, a list for "other"): nil if the two disagreed, and the column path is not taken.
    static let logic: (and: [UInt8], or: [UInt8], not: [UInt8])? = {
        func tables(_ reps: [Value]) -> [[UInt8]] {
            var and: [UInt8] = [], or: [UInt8] = []
            for a in reps {
                for b in reps {
                    // The evaluator's short-circuits: `false && x` and `true || x` never look at x.
                    and.append(MatchCode(a.booleanEquivalent == false ? .boolean(false) : Operators.binary(.logicalAnd, a, b)).rawValue)
                    or.append(MatchCode(a.booleanEquivalent == true ? .boolean(true) : Operators.binary(.logicalOr, a, b)).rawValue)
                }
            }
            return [and, or, reps.map { MatchCode(Operators.unary(.not, $0)).rawValue }]
        }
        let one = tables([.boolean(false), .boolean(true), .undefined, .error, .string("x")])
        let two = tables([.integer(0), .real(2.5), .undefined, .error, .list(ListValue([]))])
        return one == two ? (one[0], one[1], one[2]) : nil
    }()
}

/// What two plain values share only when every expression gives them the same result: the type and
/// the value (a real by its bits: 0.0 and -0.0 compare equal but divide differently; a list by its
/// canonical text). None for a record or a list holding anything but strings, integers, booleans,
/// UNDEFINED, ERROR and lists of those.
enum ValueIdentity: Hashable {
    case integer(Int64), real(UInt64), string([UInt8]), boolean(Bool), undefined, error, text(String)

    init?(_ v: Value) {
        switch v {
        case .integer(let i): self = .integer(i)
        case .real(let r): self = .real(r.bitPattern)
        case .string(let b): self = .string(b.b)
        case .boolean(let b): self = .boolean(b)
        case .undefined: self = .undefined
        case .error: self = .error
        case .list(let l):
            func exactText(_ e: Expr) -> Bool {
                switch e {
                case .literal(.string), .literal(.integer), .literal(.boolean), .literal(.undefined), .literal(.error): return true
                case .list(let items): return items.allSatisfy(exactText)
                default: return false
                }
            }
            guard l.items.allSatisfy(exactText) else { return nil }
            self = .text("l" + Unparser.unparse(v))
        case .classad: return nil
        default: self = .text(v.typeName + ":" + Unparser.unparse(v))
        }
    }
}

/// The partners' plain values, one column per slot, and which (slot, partner) cells are not plain.
struct PartnerColumns {
    let count: Int
    /// Column-major: slot k of partner i at `values[k * count + i]`.
    var values: [Value] = []
    var exact: [Bool] = []
    var filled = 0

    init(count: Int) { self.count = count }

    /// One partner's row (what `PartnerLayout.row` read).
    init(row: [Value?]) {
        count = 1
        values = row.map { $0 ?? .undefined }
        exact = row.map { $0 == nil }
        filled = row.count
    }

    /// Adds the columns of layout slots not yet filled, reading them from `ads`.
    mutating func extend(_ layout: PartnerLayout, _ ads: [ClassAd]) {
        guard filled < layout.count else { return }
        for k in filled..<layout.count {
            for ad in ads {
                let v = CompiledExpr.plainValue(ad, layout.names[k])
                values.append(v ?? .undefined)
                exact.append(v == nil)
            }
        }
        filled = layout.count
    }

    /// Whether every slot in `slots` is plain for partner `i`.
    @inline(__always)
    func plain(_ slots: [Int], _ i: Int) -> Bool {
        for k in slots where exact[k &* count &+ i] { return false }
        return true
    }

    /// Evaluates `c` (reading `slots`) against partner `i`; nil where the exact evaluator must answer.
    @inline(__always)
    func evaluate(_ c: CompiledExpr, slots: [Int], _ i: Int) -> Value? {
        guard plain(slots, i) else { return nil }
        return values.withUnsafeBufferPointer { b in try? c.eval(b.baseAddress! + i, stride: count) }
    }

    @inline(__always)
    func evaluate(_ c: CompiledClause, _ i: Int) -> Value? { evaluate(c.expr, slots: c.slots, i) }

    /// Whether `clause` holds for partner `i` (true, or a non-zero number), told by the cheapest that
    /// can: `code` from running the columns, else the compiled value, else `exactly()`, the exact
    /// evaluator in the match record.
    @inline(__always)
    func holds(_ code: UInt8, _ clause: CompiledClause?, _ i: Int, exactly: () -> Bool) -> Bool {
        if code != MatchCode.unknown.rawValue { return code == MatchCode.t.rawValue }
        if let clause, let v = evaluate(clause, i) { return v.booleanEquivalent ?? false }
        return exactly()
    }
}

/// The values of a Rank that reads one partner attribute (the commonest kind), kept per distinct value
/// of it, so that it is evaluated once per value rather than once per partner.
struct RankMemo {
    /// Each partner's value number (ColumnTable.distinctValues).
    let ids: [Int32]
    var byValue: [Double?]

    /// nil where a memo would not pay: a Rank reading several attributes (or none), or one whose every
    /// partner holds a different value.
    init?(_ rank: CompiledClause?, _ table: ColumnTable) {
        guard let rank, rank.slots.count == 1, let (ids, firsts) = table.distinctValues(rank.slots[0]), firsts.count < table.count else {
            return nil
        }
        self.ids = ids
        byValue = [Double?](repeating: nil, count: firsts.count)
    }
}

extension PartnerColumns {
    /// The Rank value of `rank` for partner `i`: remembered in `memo` (per value of the one attribute
    /// it reads), else compiled, else `exactly()`, the exact evaluator.
    @inline(__always)
    func rankValue(_ rank: CompiledClause?, _ i: Int, memo: inout RankMemo?, exactly: () -> Double) -> Double {
        if let m = memo, let known = m.byValue[Int(m.ids[i])] { return known }
        let value: Double
        if let rank, let v = evaluate(rank, i) { value = v.rankValue } else { value = exactly() }
        // Only a plain value stands for every partner that holds it (the exact evaluator read this ad).
        if memo != nil, let rank, plain(rank.slots, i) { memo!.byValue[Int(memo!.ids[i])] = value }
        return value
    }
}

/// The partners' columns with what running expressions down them keeps: per slot the integers (when
/// every partner holds a plain integer there) and the distinct values. Not thread-safe: one user at a
/// time.
final class ColumnTable {
    let count: Int
    private(set) var columns: PartnerColumns
    private var integers: [[Int64]?] = []
    private var distinct: [([Int32], [Int])??] = []
    private lazy var everyone = Array(0..<count)

    init(count: Int) {
        self.count = count
        columns = PartnerColumns(count: count)
    }

    func extend(_ layout: PartnerLayout, _ ads: [ClassAd]) {
        columns.extend(layout, ads)
        while integers.count < layout.count {
            let k = integers.count
            var out: [Int64] = []
            out.reserveCapacity(count)
            for i in 0..<count {
                guard !columns.exact[k * count + i], case .integer(let x) = columns.values[k * count + i] else { out = []; break }
                out.append(x)
            }
            integers.append(out.count == count ? out : nil)
            distinct.append(nil)
        }
    }

    /// Slot k: each partner's distinct-value number, and the first partner with each value. A value
    /// that is not plain (the exact evaluator reads the ad itself) is distinct from every other.
    func distinctValues(_ k: Int) -> ([Int32], [Int])? {
        if let known = distinct[k] { return known }
        var number: [ValueIdentity: Int32] = [:]
        var ids = [Int32](repeating: 0, count: count), firsts: [Int] = []
        for i in 0..<count {
            let cell = k * count + i
            let key = columns.exact[cell] ? nil : ValueIdentity(columns.values[cell])
            if let key, let d = number[key] {
                ids[i] = d
                continue
            }
            ids[i] = Int32(firsts.count)
            if let key { number[key] = Int32(firsts.count) }
            firsts.append(i)
        }
        distinct[k] = .some((ids, firsts))
        return (ids, firsts)
    }

    /// A compiled expression's MatchCode for every partner (`unknown` where the columns cannot tell).
    func codes(_ c: CompiledExpr) -> [UInt8] { codes(c, among: everyone) }

    /// The same for the rows in `idx` only, in that order. `&&` and `||` run their right operand only
    /// on the rows their left one leaves open, as the evaluator's short-circuits do.
    func codes(_ c: CompiledExpr, among idx: [Int]) -> [UInt8] {
        let unknown = MatchCode.unknown.rawValue
        switch c {
        case .binary(let op, let x, let y) where (op == .logicalAnd || op == .logicalOr) && MatchCode.logic != nil:
            let table = op == .logicalAnd ? MatchCode.logic!.and : MatchCode.logic!.or
            let decided = op == .logicalAnd ? MatchCode.f.rawValue : MatchCode.t.rawValue
            var out = codes(x, among: idx)
            let open = idx.indices.filter { out[$0] != decided && out[$0] != unknown }
            let b = codes(y, among: open.map { idx[$0] })
            for (n, j) in open.enumerated() { out[j] = b[n] == unknown ? unknown : table[Int(out[j]) &* 5 &+ Int(b[n])] }
            return out
        case .unary(.not, let x) where MatchCode.logic != nil:
            let table = MatchCode.logic!.not
            return codes(x, among: idx).map { $0 == unknown ? unknown : table[Int($0)] }
        case .compareInteger(let op, let k, let constant, let first) where integers[k] != nil:
            // The operator decided once: the code for each of "column below, at, above the constant".
            func code(_ c: Int) -> UInt8 { Operators.ordered(op, first ? -c : c) ? MatchCode.t.rawValue : MatchCode.f.rawValue }
            let below = code(-1), at = code(0), above = code(1)
            return integers[k]!.withUnsafeBufferPointer { ints in
                idx.map { i in
                    let x = ints[i]
                    return x < constant ? below : (x == constant ? at : above)
                }
            }
        default:
            let slots = c.slots
            let columns = self.columns  // once: read through the class at every row, it is retained at every row
            func at(_ i: Int) -> UInt8 { columns.evaluate(c, slots: slots, i).map { MatchCode($0).rawValue } ?? unknown }
            if slots.count == 1, let (ids, firsts) = distinctValues(slots[0]), firsts.count < count {
                var byValue = [UInt8?](repeating: nil, count: firsts.count)
                return idx.map { i in
                    let d = Int(ids[i])
                    if let known = byValue[d] { return known }
                    let v = at(firsts[d])
                    byValue[d] = v
                    return v
                }
            }
            return idx.map(at)
        }
    }
}
