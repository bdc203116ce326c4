// Sizes as users and admins write them, parsed in one place for every front end: --vm-mem, the
// daemon's cache quota, the VMM's --mem, the CLI's chunk and prune sizes. No Foundation, so the
// static VMM can use it without growing.

public enum ByteSize {
    /// What a number without a suffix counts: `--vm-mem 512` is MiB (as Slurm's --mem), a quota of
    /// 1048576 is bytes.
    public enum Unit: Int64, Sendable {
        case bytes = 1
        case mebibytes = 1_048_576
    }

    public struct Invalid: Error, CustomStringConvertible, Equatable, Sendable {
        public let text: String
        public let bare: Unit
        public var description: String {
            "'\(text)' is not a size; write a number with K, M, G or T (binary units: 512M, 1.5G, 2T)"
                + (bare == .mebibytes ? " or a plain number of MiB" : " or a plain number of bytes")
        }
    }

    /// Parses `N`, `N.F`, either with an optional K/M/G/T suffix (powers of 1024; `Ki`/`Gi`… are the
    /// same); `B`, `KB`, `GB` are refused, because whether they mean 1000 or 1024 is a guess. Fractions
    /// round up to a whole byte. Returns bytes.
    public static func parse(_ text: String, bare: Unit) throws(Invalid) -> Int64 {
        var s = Substring(text)
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        var multiplier = bare.rawValue
        if let l = s.last, l == "i" || l == "I" {
            s = s.dropLast()
            guard let u = s.last, "KkMmGgTt".contains(u) else { throw Invalid(text: text, bare: bare) }
        }
        if let u = s.last, let m = suffix(u) {
            multiplier = m
            s = s.dropLast()
        }
        // Digits with at most one point; no sign, exponent, inf or nan (Double(_:) would take those).
        guard !s.isEmpty, s.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }), s.filter({ $0 == "." }).count <= 1,
            s != ".", let v = Double(String(s))
        else {
            throw Invalid(text: text, bare: bare)
        }
        let bytes = (v * Double(multiplier)).rounded(.up)
        guard bytes < 9.0e18 else { throw Invalid(text: text, bare: bare) }
        return Int64(bytes)
    }

    static func suffix(_ c: Character) -> Int64? {
        switch c {
        case "K", "k": return 1 << 10
        case "M", "m": return 1 << 20
        case "G", "g": return 1 << 30
        case "T", "t": return 1 << 40
        default: return nil
        }
    }

    /// Whole MiB, rounding up (`--vm-mem 1500K` is 2 MiB).
    public static func mebibytes(_ bytes: Int64) -> Int64 { (bytes + (1 << 20) - 1) >> 20 }
}

extension ByteSize {
    /// Sizes as people read them: MiB below a GiB, GiB above, one decimal ("1.5 GiB", "12.0 MiB").
    public static func describe(_ n: Int64) -> String {
        let unit: Int64 = n >= 1 << 30 ? 1 << 30 : 1 << 20
        let tenths = (n * 10 + unit / 2) / unit
        return "\(tenths / 10).\(tenths % 10) \(unit == 1 << 30 ? "GiB" : "MiB")"
    }
}
