// The typed JSON form of a value used by `slurm-vm classad eval --jsonl` for differential testing:
// {"type":"integer","value":7}, lists and records evaluated element by element.

import Foundation

public enum TypedJSON {
    /// How deep lists and records are expanded; a self-referential list would otherwise never end.
    public static let maxDepth = 6

    /// `state` is the evaluation the value came from: list elements are evaluated in it, as `(E)[i]` would be.
    public static func encode(_ v: Value, state: EvalState, depth: Int = 0) -> Any {
        switch v {
        case .undefined: return ["type": "undefined"]
        case .error: return ["type": "error"]
        case .boolean(let b): return ["type": "boolean", "value": b]
        case .integer(let i): return ["type": "integer", "value": i]
        case .real(let r):
            if r.isNaN { return ["type": "real", "value": "nan"] }
            if r.isInfinite { return ["type": "real", "value": r < 0 ? "-inf" : "inf"] }
            return ["type": "real", "value": r]
        case .string(let s): return ["type": "string", "value": String(decoding: s.b, as: UTF8.self)]
        case .absTime(let s, let o): return ["type": "abstime", "value": s, "offset": o]
        case .relTime(let r):
            if r.isNaN { return ["type": "reltime", "value": "nan"] }
            if r.isInfinite { return ["type": "reltime", "value": r < 0 ? "-inf" : "inf"] }
            return ["type": "reltime", "value": r]
        case .list(let l):
            if depth >= maxDepth { return ["type": "list", "value": "…"] }
            var items: [Any] = []
            for i in l.items.indices {
                var st = state
                let x = Evaluator.elementValue(l, i, &st)  // as `(E)[i]` evaluates it
                items.append(encode(x, state: st, depth: depth + 1))
            }
            return ["type": "list", "value": items]
        case .classad(let c):
            if depth >= maxDepth { return ["type": "classad", "value": "…"] }
            var d: [String: Any] = [:]
            for (n, _) in c.orderedAttributes {
                let x = Evaluator.evaluateAttribute(c, n)
                // Lists inside records are still evaluated in the outer scope, as `((E)["k"])[j]` is.
                d[n.spelling] = encode(x, state: state, depth: depth + 1)
            }
            return ["type": "classad", "value": d]
        }
    }
}

/// A small JSON writer: exact shortest round-trip doubles and stable key order.
public enum JSONWriter {
    public static func write(_ v: Any, into out: inout String) {
        switch v {
        case let s as String: string(s, &out)
        case let b as Bool: out += b ? "true" : "false"
        case let i as Int64: out += String(i)
        case let i as Int: out += String(i)
        case let d as Double:
            if d.isFinite { out += "\(d)" } else { out += "null" }
        case let a as [Any]:
            out += "["
            for (i, x) in a.enumerated() { if i > 0 { out += "," }; write(x, into: &out) }
            out += "]"
        case let m as [String: Any]:
            out += "{"
            for (i, k) in m.keys.sorted().enumerated() {
                if i > 0 { out += "," }
                string(k, &out); out += ":"; write(m[k]!, into: &out)
            }
            out += "}"
        default: out += "null"
        }
    }

    public static func string(_ s: String, _ out: inout String) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
            }
        }
        out += "\""
    }

    public static func encode(_ v: Any) -> String { var s = ""; write(v, into: &s); return s }
}
