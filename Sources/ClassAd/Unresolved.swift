// unresolved(attr [, pattern]): the references an attribute's expression makes that nothing defines,
// as HTCondor lists them: sorted and deduplicated without regard to case, joined by commas; with a
// pattern, whether any of them matches it. The spelling follows HTCondor's, measured against its
// library (Tests/differential/functions.py): TARGET.a is listed as "a" (sorted as "target.a"),
// other.b as written, parent.y as "'parent'.y", a field of a record that lacks it by its own name.

import CPCRE2

extension Builtins {
    static func unresolved(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count == 1 || a.count == 2 else { return .error }
        guard let cur = st.curAd else { return .undefined }
        /// The record and attribute a reference names: x, MY.x, or a path into records, a.b.c.
        func target(_ e: Expr) -> (ClassAd, AttrName)?? {
            switch e {
            case .attr(let n, false): return (cur, n)
            case .select(.attr(let b, false), let n) where b.key == "my" || b.key == "self": return (cur, n)
            case .select(let base, let n):
                guard let t = target(base) else { return .none }
                guard let (ad, bn) = t, case .record(let r)? = ad.lookup(bn) else { return .some(nil) }
                return (r, n)
            default: return .none
            }
        }
        guard let named = target(a[0]) else { return .error }
        guard let (ad, name) = named, let slot = ad.slot(name) else { return .undefined }
        var refs = References(scope: ad)
        refs.followed.insert("\(ObjectIdentifier(ad)) \(name.key)")
        refs.onStack.insert("\(ObjectIdentifier(ad)) \(name.key)")
        let listed = refs.collect(ad.expr(at: slot)) ? refs.sorted : []
        guard a.count == 2 else { return .string(Bytes(Array(listed.joined(separator: ",").utf8))) }
        guard case .string(let pattern) = try ev(a[1], &st) else { return .error }
        let caseless = UInt32(PCRE2_CASELESS)
        guard RegexEngine.compile(pattern.cString, caseless) != nil else { return .error }
        if pattern.isEmpty { return .boolean(false) }
        return .boolean(listed.contains { RegexEngine.matches(pattern.cString, Array($0.utf8), options: caseless) == true })
    }
}

/// The walk behind unresolved(): references and whether the scopes they name define them.
struct References {
    let scope: ClassAd
    /// Sort key (lower case) → the spelling listed.
    var found: [String: String] = [:]
    /// Attributes already followed (a reference to a defined attribute is followed into its expression),
    /// and those being followed now: a reference back to one of those is a cycle, and HTCondor then
    /// lists nothing at all.
    var followed = Set<String>()
    var onStack = Set<String>()

    /// Walks the expression of a defined attribute once; false on a cycle.
    mutating func follow(_ ad: ClassAd, _ i: Int, _ name: AttrName) -> Bool {
        let id = "\(ObjectIdentifier(ad)) \(name.key)"
        if onStack.contains(id) { return false }
        guard followed.insert(id).inserted else { return true }
        onStack.insert(id)
        defer { onStack.remove(id) }
        return collect(ad.expr(at: i), in: ad)
    }

    init(scope: ClassAd) { self.scope = scope }

    var sorted: [String] { found.keys.sorted().map { found[$0]! } }

    mutating func add(_ spelling: String, key: String? = nil) {
        let k = (key ?? spelling).lowercased()
        if found[k] == nil { found[k] = spelling }
    }

    /// Whether `name` is defined in `ad` or the records around it; a defined one's expression is
    /// walked too (once), so what it leaves unresolved is listed as well.
    /// nil on a cycle.
    mutating func defined(_ name: AttrName, from ad: ClassAd) -> Bool? {
        var cur: ClassAd? = ad
        while let c = cur {
            if let i = c.slot(name) { return follow(c, i, name) ? true : nil }
            cur = c.parentScope
        }
        return false
    }

    /// The record `name` holds, looked up from `ad` outward, if it is one written as a record.
    func record(_ name: AttrName, from ad: ClassAd) -> ClassAd? {
        var cur: ClassAd? = ad
        while let c = cur {
            if let e = c.lookup(name) {
                if case .record(let r) = e { return r }
                return nil
            }
            cur = c.parentScope
        }
        return nil
    }

    /// The dotted path of a selection chain rooted at a plain name, e.g. zz.yy, with its root.
    static func path(_ e: Expr) -> (root: AttrName, text: String)? {
        switch e {
        case .attr(let n, false): return (n, n.spelling)
        case .select(let b, let n): return path(b).map { ($0.root, $0.text + "." + n.spelling) }
        default: return nil
        }
    }

    /// Collects the references of `e` read in `ad`; false when HTCondor gives up on the whole (a
    /// selection from a list literal).
    mutating func collect(_ e: Expr, in adOrNil: ClassAd? = nil) -> Bool {
        let ad = adOrNil ?? scope
        switch e {
        case .literal: return true
        case .attr(let n, let absolute):
            switch n.key {
            case "my", "self", "target", "other", "parent", "root", "toplevel": return true
            default: break
            }
            if absolute {
                var root = ad
                while let p = root.parentScope { root = p }
                if root.slot(n) == nil { add(n.spelling) }
            } else {
                guard let d = defined(n, from: ad) else { return false }
                if !d { add(n.spelling) }
            }
            return true
        case .select(let base, let n):
            if case .list = base { return false }
            if case .attr(let b, false) = base {
                switch b.key {
                case "my", "self":
                    guard let i = ad.slot(n) else { add(n.spelling); return true }
                    return follow(ad, i, n)
                case "target":
                    add(n.spelling, key: "target." + n.spelling)
                    return true
                case "other":
                    add(b.spelling + "." + n.spelling)
                    return true
                case "parent":
                    add("'parent'." + n.spelling)
                    return true
                case "root", "toplevel":
                    var root = ad
                    while let p = root.parentScope { root = p }
                    if root.slot(n) == nil { add(n.spelling) }
                    return true
                default:
                    if let r = record(b, from: ad) {
                        if r.slot(n) == nil { add(n.spelling) }
                        return true
                    }
                    guard let d = defined(b, from: ad) else { return false }
                    if !d { add(b.spelling + "." + n.spelling) }
                    return true
                }
            }
            if case .select = base, let p = Self.path(base) {
                if p.root.key == "target" {
                    let text = String(p.text.split(separator: ".", maxSplits: 1).last ?? "") + "." + n.spelling
                    add(text, key: "target." + text)
                    return true
                }
                guard let d = defined(p.root, from: ad) else { return false }
                if !d { add(p.text + "." + n.spelling) }
                return true
            }
            return collect(base, in: ad)
        case .record(let r):
            for i in 0..<r.count where !collect(r.expr(at: i), in: r) { return false }
            return true
        default:
            for c in e.children where !collect(c, in: ad) { return false }
            return true
        }
    }
}
