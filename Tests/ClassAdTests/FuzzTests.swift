import Foundation
import Testing
import Support
@testable import ClassAd

/// Whatever the input, the parser and evaluator return (a value or a ParseError): no crash, no hang.
@Suite struct Fuzz {
    static let alphabet = Array("abcxyzMYTARGET0123456789.eE+-*/%<>=!?:&|^~()[]{},; \"'\\\n\t_".utf8)
    static let tokens = [
        "1", "2.5", "\"s\"", "x", "MY.x", "TARGET.y", "true", "undefined", "error", "{", "}", "[", "]", "(", ")",
        "+", "-", "*", "/", "==", "=?=", "&&", "||", "?", ":", "?:", ",", ";", "=", "a", "member(", "regexp(",
        "strcat(", "eval(", ".", "[a = 1; b = a]", "{1, 2}", "real(\"INF\")", "9223372036854775807",
    ]

    func exercise(_ text: [UInt8]) {
        if let e = try? Parser.parseExpression(text) {
            _ = e.evaluate()
            let ad = ClassAd([("x", .literal(.integer(1))), ("Requirements", e)])
            let other = ClassAd([("y", e)])
            let ctx = MatchContext(left: ad, right: other)
            _ = ctx.requirementsHold(of: ad)
            _ = ctx.evaluate(attribute: "y", of: other)
            ctx.release()
            // the canonical form reads back to the same tree
            let printed = Unparser.unparse(e)
            let again = try? Parser.parseExpression(printed)
            #expect(again != nil, "canonical text does not parse: \(printed)")
            if let again { #expect(Unparser.unparse(again) == printed, "round trip changed \(printed)") }
        }
        _ = try? Parser.parseAd(String(decoding: text, as: UTF8.self))
    }

    @Test func randomBytes() {
        var rng = SeededRandom(seed: 42)
        for _ in 0..<20_000 {
            let n = Int.random(in: 0..<60, using: &rng)
            var bytes: [UInt8] = []
            for _ in 0..<n {
                bytes.append(Bool.random(using: &rng) ? Fuzz.alphabet.randomElement(using: &rng)! : UInt8.random(in: 0...255, using: &rng))
            }
            exercise(bytes)
        }
    }

    @Test func randomTokenSoup() {
        var rng = SeededRandom(seed: 7)
        for _ in 0..<20_000 {
            let n = Int.random(in: 1..<25, using: &rng)
            let text = (0..<n).map { _ in Fuzz.tokens.randomElement(using: &rng)! }.joined(separator: Bool.random(using: &rng) ? " " : "")
            exercise(Array(text.utf8))
        }
    }

    @Test func pathologicalInputs() {
        let deep = String(repeating: "(", count: 100_000) + "1" + String(repeating: ")", count: 100_000)
        #expect(throws: ParseError.self) { _ = try Parser.parseExpression(deep) }
        let unary = String(repeating: "-", count: 100_000) + "1"
        #expect(throws: ParseError.self) { _ = try Parser.parseExpression(unary) }
        let records = String(repeating: "[a = ", count: 50_000) + "1" + String(repeating: "]", count: 50_000)
        #expect(throws: ParseError.self) { _ = try Parser.parseExpression(records) }
        // huge literals
        #expect(same(try? Parser.parseExpression(String(repeating: "9", count: 100_000)).evaluate(), .integer(0)))
        #expect((try? Parser.parseExpression("1" + String(repeating: "0", count: 400) + ".0").evaluate()).map { "\($0)" } == "real(\"INF\")")
        let longString = "\"" + String(repeating: "x", count: 1_000_000) + "\""
        #expect((try? Parser.parseExpression("size(" + longString + ")").evaluate()).map { "\($0)" } == "1000000")
        // exponential-looking evaluation stays bounded by the reference depth limit
        let wide = "[" + (0..<16).map { "a\($0) = a\($0 + 1) + a\($0 + 1)" }.joined(separator: "; ") + "; a16 = 1].a0"
        let start = Date()
        _ = try? Parser.parseExpression(wide).evaluate()
        #expect(Date().timeIntervalSince(start) < 120)
        // a self-referential list
        exercise(Array("[a = {a, a}; b = a[0][1][0]].b".utf8))
    }

    func same(_ a: Value?, _ b: Value) -> Bool {
        guard let a else { return false }
        return "\(a)" == "\(b)"
    }
}
