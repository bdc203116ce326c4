// The expression tree, as the parser builds it and the unparser prints it.

/// Operators, in the groups HTCondor's evaluator treats alike.
public enum BinaryOp: UInt8, Sendable, CaseIterable {
    case lessThan, lessOrEqual, notEqual, equal, greaterOrEqual, greaterThan
    case metaEqual, metaNotEqual            // =?= / is, =!= / isnt
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
        switch self { case .plus: return " +"; case .minus: return " -"; case .not: return " !"; case .bitNot: return " ~" }
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

/// A function call target: the name as written and the builtin it resolved to (nil: unknown → ERROR).
public struct Function: @unchecked Sendable {
    public let name: String
    public let builtin: Builtin?
    public init(name: String) {
        self.name = name
        self.builtin = Builtins.lookup(name)
    }
}
