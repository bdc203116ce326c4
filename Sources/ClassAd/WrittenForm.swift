// An expression's written form as bytes: the key for "these are written the same", on which the batch
// matcher's autoclusters and shared clauses are keyed. It tells apart everything the unparser's text
// does (names as spelt, functions as written, parentheses, reals by their bits, and more: a list's
// kind), so two expressions with one key behave alike in every ad; and it is built without making text,
// which cost a third of a batch where every job is different.

struct WrittenForm {
    private(set) var bytes: [UInt8] = []

    init() { bytes.reserveCapacity(256) }

    /// Every attribute of `ad`, in order, as written (after a tag of its own, so that it is never the
    /// key of a list of some attributes).
    init(wholeAd ad: ClassAd) {
        self.init()
        append(tag: 0xfe)
        for (n, e) in zip(ad.names, ad.exprs) {
            append(text: n.spelling.utf8)
            append(e)
        }
    }

    /// The bytes with their hash made once, word by word: as a dictionary key a plain `[UInt8]` is
    /// hashed a byte at a time on every lookup, which took a tenth of a batch.
    struct Key: Hashable {
        let bytes: [UInt8]
        let hash: Int
        static func == (a: Key, b: Key) -> Bool { a.hash == b.hash && a.bytes == b.bytes }
        func hash(into hasher: inout Hasher) { hasher.combine(hash) }
    }

    var key: Key {
        var h: UInt64 = 0x9e37_79b9_7f4a_7c15 ^ UInt64(bytes.count)
        bytes.withUnsafeBytes { raw in
            func mix(_ w: UInt64) {
                h = (h ^ w) &* 0xff51_afd7_ed55_8ccd
                h ^= h >> 29
            }
            var i = 0
            while i + 8 <= raw.count {
                mix(raw.loadUnaligned(fromByteOffset: i, as: UInt64.self))
                i += 8
            }
            var tail: UInt64 = 0
            while i < raw.count {
                tail = tail << 8 | UInt64(raw[i])
                i += 1
            }
            mix(tail)
        }
        return Key(bytes: bytes, hash: Int(truncatingIfNeeded: h))
    }

    mutating func append(tag: UInt8) { bytes.append(tag) }

    mutating func append(_ x: Int64) {
        withUnsafeBytes(of: x.littleEndian) { bytes.append(contentsOf: $0) }
    }

    /// Length-prefixed, so that no text runs into what follows it.
    mutating func append<S: Collection>(text: S) where S.Element == UInt8 {
        append(Int64(text.count))
        bytes.append(contentsOf: text)
    }

    mutating func append(_ e: Expr) {
        switch e {
        case .literal(let v):
            append(tag: 1)
            append(v)
        case .attr(let n, let absolute):
            append(tag: absolute ? 2 : 3)
            append(text: n.spelling.utf8)
        case .select(let base, let n):
            append(tag: 4)
            append(base)
            append(text: n.spelling.utf8)
        case .subscript_(let a, let b):
            append(tag: 5)
            append(a)
            append(b)
        case .unary(let op, let a):
            append(tag: 6)
            append(tag: op.rawValue)
            append(a)
        case .binary(let op, let a, let b):
            append(tag: 7)
            append(tag: op.rawValue)
            append(a)
            append(b)
        case .ternary(let a, let b, let c):
            append(tag: 8)
            append(a)
            append(b)
            append(c)
        case .elvis(let a, let b):
            append(tag: 9)
            append(a)
            append(b)
        case .paren(let a):
            append(tag: 10)
            append(a)
        case .call(let f, let args):
            append(tag: 11)
            append(text: f.name.utf8)
            append(items: args)
        case .list(let items):
            append(tag: 12)
            append(items: items)
        case .record(let ad):
            append(tag: 13)
            append(text: Unparser.unparse(ad).utf8)  // rare in a Requirements; the text is exact
        }
    }

    /// A count, then each expression: a call's arguments, a list's elements.
    mutating func append(items: [Expr]) {
        append(Int64(items.count))
        for x in items { append(x) }
    }

    mutating func append(_ v: Value) {
        switch v {
        case .undefined: append(tag: 20)
        case .error: append(tag: 21)
        case .boolean(let b): append(tag: b ? 23 : 22)
        case .integer(let i):
            append(tag: 24)
            append(i)
        case .real(let r):
            append(tag: 25)
            append(Int64(bitPattern: r.bitPattern))
        case .string(let s):
            append(tag: 26)
            append(text: s.b)
        case .list(let l):
            append(tag: l.built ? 28 : 27)
            append(items: l.items)
        case .classad(let ad):
            append(tag: 29)
            append(text: Unparser.unparse(ad).utf8)
        case .absTime(let secs, let offset):
            append(tag: 30)
            append(secs)
            append(offset)
        case .relTime(let r):
            append(tag: 31)
            append(Int64(bitPattern: r.bitPattern))
        }
    }
}
