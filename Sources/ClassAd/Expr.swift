// The expression tree, as the parser builds it and the unparser prints it.

/// Operators, in the groups HTCondor's evaluator treats alike.
public enum BinaryOp: UInt8, Sendable, CaseIterable {
    case lessThan, lessOrEqual, notEqual, equal, greaterOrEqual, greaterThan
    case metaEqual, metaNotEqual  // =?= / is, =!= / isnt
    case add, subtract, multiply, divide, modulus
    case logicalOr, logicalAnd
    case bitOr, bitXor, bitAnd, leftShift, rightShift, unsignedRightShift

    var isComparison: Bool { rawValue <= BinaryOp.metaNotEqual.rawValue }
    var isArithmetic: Bool { (BinaryOp.add.rawValue...BinaryOp.modulus.rawValue).contains(rawValue) }
    var isBitwise: Bool { rawValue >= BinaryOp.bitOr.rawValue }
    /// Strict operators turn an UNDEFINED or ERROR operand into the result.
    var isStrict: Bool {
        switch self {
        case .metaEqual, .metaNotEqual, .logicalOr, .logicalAnd: return false
        default: return true
        }
    }
    /// How HTCondor prints the operator (spaces included).
    var spelling: String {
        switch self {
        case .lessThan: return " < "
        case .lessOrEqual: return " <= "
        case .notEqual: return " != "
        case .equal: return " == "
        case .greaterOrEqual: return " >= "
        case .greaterThan: return " > "
        case .metaEqual: return " is "
        case .metaNotEqual: return " isnt "
        case .add: return " + "
        case .subtract: return " - "
        case .multiply: return " * "
        case .divide: return " / "
        case .modulus: return " % "
        case .logicalOr: return " || "
        case .logicalAnd: return " && "
        case .bitOr: return " | "
        case .bitXor: return " ^ "
        case .bitAnd: return " & "
        case .leftShift: return " << "
        case .rightShift: return " >> "
        case .unsignedRightShift: return " >>> "
        }
    }
}

public enum UnaryOp: UInt8, Sendable {
    case plus, minus, not, bitNot
    var spelling: String {
        switch self {
        case .plus: return " +";
        case .minus: return " -";
        case .not: return " !";
        case .bitNot: return " ~"
        }
    }
}

/// An expression. Records are `ClassAd` objects so that they can carry their lexical parent scope.
public indirect enum Expr: @unchecked Sendable {
    case literal(Value)
    /// `name` (absolute == false) or `.name` (absolute == true).
    case attr(AttrName, absolute: Bool)
    /// `base.name`
    case select(Expr, AttrName)
    /// `base[index]`
    case subscript_(Expr, Expr)
    case unary(UnaryOp, Expr)
    case binary(BinaryOp, Expr, Expr)
    case ternary(Expr, Expr, Expr)
    /// `a ?: b`
    case elvis(Expr, Expr)
    case paren(Expr)
    case call(Function, [Expr])
    case list([Expr])
    case record(ClassAd)
}

extension Expr {
    /// The direct subexpressions (a record's attributes are not: a record is its own scope).
    public var children: [Expr] {
        switch self {
        case .literal, .attr, .record: return []
        case .select(let b, _): return [b]
        case .unary(_, let a), .paren(let a): return [a]
        case .subscript_(let a, let b), .binary(_, let a, let b), .elvis(let a, let b): return [a, b]
        case .ternary(let a, let b, let c): return [a, b, c]
        case .call(_, let args): return args
        case .list(let items): return items
        }
    }

    /// Calls `body` with each direct subexpression, as `children` lists them, without making the list.
    @inline(__always)
    public func forEachChild(_ body: (Expr) -> Void) {
        switch self {
        case .literal, .attr, .record: return
        case .select(let a, _), .unary(_, let a), .paren(let a): body(a)
        case .subscript_(let a, let b), .binary(_, let a, let b), .elvis(let a, let b):
            body(a)
            body(b)
        case .ternary(let a, let b, let c):
            body(a)
            body(b)
            body(c)
        case .call(_, let items), .list(let items): for x in items { body(x) }
        }
    }

    /// The same node with each direct subexpression replaced by `f(child)`.
    public func mapChildren(_ f: (Expr) -> Expr) -> Expr {
        switch self {
        case .literal, .attr, .record: return self
        case .select(let b, let n): return .select(f(b), n)
        case .subscript_(let a, let b): return .subscript_(f(a), f(b))
        case .unary(let op, let a): return .unary(op, f(a))
        case .paren(let a): return .paren(f(a))
        case .binary(let op, let a, let b): return .binary(op, f(a), f(b))
        case .elvis(let a, let b): return .elvis(f(a), f(b))
        case .ternary(let a, let b, let c): return .ternary(f(a), f(b), f(c))
        case .call(let fn, let args): return .call(fn, args.map(f))
        case .list(let items): return .list(items.map(f))
        }
    }

    /// The top-level `&&` operands (looking through parentheses).
    public var conjuncts: [Expr] {
        switch self {
        case .binary(.logicalAnd, let a, let b): return a.conjuncts + b.conjuncts
        case .paren(let a): return a.conjuncts
        default: return [self]
        }
    }
}

/// A function call target: the name as written and the builtin it resolved to (nil: unknown → ERROR).
public struct Function: @unchecked Sendable {
    public let name: String
    /// The name's identity (function names are case-insensitive), made once rather than per evaluation.
    public let lowercasedName: String
    public let builtin: Builtin?
    public init(name: String) {
        self.name = name
        lowercasedName = name.lowercased()
        builtin = Builtins.table[lowercasedName]
    }
}
