import Testing
@testable import ClassAd

private func eval(_ s: String) throws -> Value { try Parser.parseExpression(s).evaluate() }

private func same(_ a: Value, _ b: Value) -> Bool {
    switch (a, b) {
    case (.undefined, .undefined), (.error, .error): return true
    case (.boolean(let x), .boolean(let y)): return x == y
    case (.integer(let x), .integer(let y)): return x == y
    case (.real(let x), .real(let y)): return x == y || (x.isNaN && y.isNaN)
    case (.string(let x), .string(let y)): return x == y
    default: return false
    }
}

@Suite struct Operators {
    @Test(arguments: [
        ("1 + 2 * 3", Value.integer(7)), ("10 / 3", .integer(3)), ("-7 / 2", .integer(-3)), ("-7 % 3", .integer(-1)),
        ("1.0 / 0", .error), ("-1.0 / 0", .real(-.infinity)), ("7.0 % 2", .error), ("\"a\" == \"A\"", .boolean(true)),
        ("\"a\" =?= \"A\"", .boolean(false)), ("1 =?= 1.0", .boolean(false)), ("true == 1", .boolean(true)),
        ("undefined || true", .boolean(true)), ("undefined && false", .boolean(false)), ("undefined || false", .undefined),
        ("error || true", .error), ("true || error", .boolean(true)), ("\"a\" || true", .error),
        ("undefined == undefined", .undefined), ("undefined =?= undefined", .boolean(true)), ("-true", .error),
        ("9223372036854775807 + 1", .integer(.min)), ("-9223372036854775808 / -1", .integer(.max)),
        ("1 << 64", .integer(1)), ("-8 >> 100", .integer(-1)), ("-8 >>> 1", .integer(9223372036854775804)),
        ("x ?: 5", .integer(5)), ("10 ?: 2 + 3", .integer(13)), ("10 ? : 2 + 3", .integer(13)),
        ("1 ? 2 : 3 ? 4 : 5", .integer(2)), ("1 - 2 - 3", .integer(-4)), ("1 < 2 == true", .boolean(true)),
    ])
    func evaluates(_ text: String, _ expected: Value) throws {
        let v = try eval(text)
        #expect(same(v, expected), "\(text) gave \(v), expected \(expected)")
    }
}

@Suite struct Scoping {
    @Test func recordsAndParents() throws {
        #expect(same(try eval("[a = 1; b = a + 1; c = [d = b]].c.d"), .integer(2)))
        #expect(same(try eval("[x = 1; r = [x = 2; y = parent.x]].r.y"), .integer(1)))
        #expect(same(try eval("[a = b; b = a].a"), .undefined))  // a cycle is UNDEFINED
        #expect(same(try eval("[r = [x = 5; l = {x}]; x = 1; v = r.l[0]].v"), .integer(5)))  // subscript: lexical
        #expect(same(try eval("[r = [x = 5; l = {x}]; x = 1; v = member(5, r.l)].v"), .boolean(false)))  // member: caller's scope
    }

    @Test func matchContext() throws {
        let job = try Parser.parseClassAd("[Owner = \"alice\"; VCPUs = 4; Requirements = TARGET.MaxVCPUs >= MY.VCPUs && other.OS == \"debian\"]")
        let image = try Parser.parseClassAd("[OS = \"debian\"; MaxVCPUs = 8; Requirements = Owner == \"alice\"]")
        let ctx = MatchContext(left: job, right: image)
        defer { ctx.release() }
        #expect(ctx.requirementsHold(of: job))
        #expect(ctx.requirementsHold(of: image))  // unscoped Owner falls back to the other ad
    }

    @Test func attributeDepthLimit() throws {
        let ok = "[" + (0..<399).map { "a\($0) = a\($0 + 1)" }.joined(separator: ";") + "; a399 = 7].a0"
        let bad = "[" + (0..<400).map { "a\($0) = a\($0 + 1)" }.joined(separator: ";") + "; a400 = 7].a0"
        #expect(same(try eval(ok), .integer(7)))
        #expect(same(try eval(bad), .error))  // HTCondor fails the 401st nested reference
    }
}

@Suite struct Builtins {
    @Test(arguments: [
        ("member(\"mpich\", {\"MPICH\", 1})", Value.boolean(true)), ("identicalMember(\"A\", {\"a\"})", .boolean(false)),
        ("size(\"abc\")", .integer(3)), ("strcat(\"a\", 1, true)", .string("a1true")), ("join(\",\", {1, undefined, 2})", .string("1,2")),
        ("substr(\"hello\", -3, 2)", .string("ll")), ("toUpper(\"abc\")", .string("ABC")), ("strcmp(\"a\", \"B\")", .integer(1)),
        ("stricmp(\"a\", \"B\")", .integer(-1)), ("regexp(\"A.C\", \"abc\", \"i\")", .boolean(true)), ("regexp(\"(\", \"x\")", .error),
        ("replaceAll(\"b\", \"abcb\", \"X\")", .string("aXcX")), ("regexps(\"(a)(b)\", \"xaby\", \"\\\\2\\\\1\")", .string("ba")),
        ("versioncmp(\"1.10\", \"1.9\")", .integer(1)), ("versionGT(\"6.1.0\", \"6.1\")", .boolean(true)),
        ("version_in_range(\"1.5\", \"1.0\", \"2.0\")", .boolean(true)), ("stringListMember(\"a\", \"b, a ,c\")", .boolean(true)),
        ("stringListSize(\"a,,b\")", .integer(2)), ("stringListSum(\"1,2.5\")", .real(3.5)), ("stringListMax(\"-3,-5\")", .integer(0)),
        ("int(\"0x10\")", .integer(16)), ("int(-3.9)", .integer(-3)), ("real(\"INF\")", .real(.infinity)),
        ("string(1.5)", .string("1.500000000000000E+00")),
        ("round(2.5)", .integer(2)), ("pow(2, 10)", .integer(1024)), ("pow(-2, 3)", .integer(-7)), ("quantize(5, {2, 4, 8})", .integer(8)),
        ("quantize(9, {2, 4, 8})", .integer(16)), ("sum({1, true, undefined})", .integer(2)), ("avg({})", .integer(0)),
        ("min({3, 1, 2.0})", .real(1)), ("anyCompare(\"<\", {1, 2, 3}, 2)", .boolean(true)),
        ("allCompare(\"<\", {1, undefined}, 4)", .boolean(false)),
        ("ifThenElse(undefined, 1, 2)", .undefined), ("eval(\"1 + 2\")", .integer(3)), ("interval(3725)", .string("1:02:05")),
        ("bool(\"TRUE\")", .boolean(true)), ("splitSlotName(\"s\")[1]", .string("s")), ("split(\"a, b,,c\")[2]", .string("")),
        ("unknownFunction(1)", .error), ("isUndefined(x)", .boolean(true)),
    ])
    func evaluates(_ text: String, _ expected: Value) throws {
        let v = try eval(text)
        #expect(same(v, expected), "\(text) gave \(v), expected \(expected)")
    }
}

@Suite struct Parsing {
    @Test func errorsNameLineAndColumn() {
        do {
            _ = try Parser.parseClassAd("[\n  a = 1;\n  b = 2 +;\n]")
            Issue.record("should not parse")
        } catch {
            #expect(error.line == 3)
            #expect(error.column == 10)
            #expect(error.excerpt.contains("b = 2 +;"))
        }
    }

    @Test(arguments: ["010", "0x10", "1e", "5.", "10M", "{1,}", "[;]", "f(,)", "\"a\\0b\"", "1 +", "a b", "x ?: -y", "IS"])
    func rejectsWhatHTCondorRejects(_ text: String) {
        #expect(throws: ParseError.self) { _ = try Parser.parseExpression(text) }
    }

    @Test func oldSyntaxAds() throws {
        let ad = try Parser.parseAd("# a comment\nOwner = \"alice\"\nCpus = 4\n\nRequirements = Cpus > 2 && Owner == \"alice\"\n")
        #expect(same(ad.evaluate("Requirements"), .boolean(true)))
    }

    @Test func canonicalUnparseReadsBack() throws {
        let texts = [
            "a + b * c", "(a + b) * c", "x ?: y ?: z", "a ? b : c ? d : e", "-1 - - 1", "[a = 1; b = {1, 2.5, \"x\\ty\"}]",
            "TARGET.x[1].y", ".abs", "'odd name' + 'true'", "f(1, g(2))", "1.0e-300 + 0.1 + 123456789.123", "-9223372036854775807 - 1",
        ]
        for t in texts {
            let e = try Parser.parseExpression(t)
            let printed = Unparser.unparse(e)
            let again = try Parser.parseExpression(printed)
            #expect(Unparser.unparse(again) == printed, "\(t) → \(printed) → \(Unparser.unparse(again))")
            #expect(same(e.evaluate(), again.evaluate()) || e.evaluate().typeName == again.evaluate().typeName)
        }
    }

    /// Time strings are read as HTCondor reads them when it parses absTime("…") and relTime("…"); the
    /// values were taken from HTCondor 25.14's library (classad2).
    @Test(arguments: [
        ("string(absTime(\"2024-02-29T12:00:00Z\"))", "2024-02-29T12:00:00-00:00"),
        ("string(absTime(\"20240229T120000Z\"))", "2024-02-29T12:00:00-00:00"),
        ("string(absTime(\"2024-02-29T12:00:00 +01:00\"))", "2024-02-29T12:00:00+01:00"),
        ("string(absTime(\"2024-02-29T12:00:00-0530\"))", "2024-02-29T12:00:00-05:30"),
        ("string(absTime(\"2024-02-30\"))", "2024-03-01T00:00:00-00:00"),
        ("string(absTime(\"1970\"))", "1969-12-31T00:00:00-00:00"),
        ("string(absTime(\"24-02-29\"))", "24-02-29T00:00:00-00:00"),
        ("string(absTime(\"2024-ab-29\"))", "2026-04-30T00:00:00-00:00"),
        ("string(absTime(0, 3600))", "1970-01-01T01:00:00+01:00"),
        ("string(relTime(-1.5))", "-01"), ("string(relTime(100))", "01:40"), ("string(relTime(86400*3+3661))", "3+01:01:01"),
        ("string(relTime(-100000))", "-1+03:46:40"), ("string(relTime(1e300))", "--24855+-3:-14:-8"),
        ("string(relTime(3e9))", "--24855+-3:-14:-8"), ("string(splitTime(relTime(3e9)).Days)", "-24855"),
        ("string(relTime(\"1d 2h\"))", "9.360000000000000E+04"), ("string(absTime(\"2024-02-29\", 60))", "2024-02-29"),
    ])
    func timeStrings(_ text: String, _ expected: String) throws {
        #expect(same(try eval(text), .string(Bytes(expected))), "\(text)")
    }

    @Test(arguments: [
        "absTime(\"2024-02-29T12:00:00.5Z\")", "absTime(\"2024-2-9\")", "absTime(\"1969-12-31T23:59:59Z\")",
        "absTime(\"2024-02-29T12:00:00+01:00 \")", "relTime(\"1:x\")", "absTime(\"\")",
    ])
    func timeStringsHTCondorCannotReadAreParseErrors(_ text: String) {
        #expect(throws: ParseError.self) { _ = try Parser.parseExpression(text) }
    }
    /// The compat layer's functions, with values taken from HTCondor 25.14's library (classad2).
    @Test(arguments: [
        ("listToArgs({\"a\", \"b c\", \"it's\", \"\"})", "a b' 'c it''''s ''"),
        ("listToArgs({\"a  b\"})", "a'  'b"),
        ("envV1ToV2(\"B=1;A=x y;;A=2\")", "A=2 B=1"),
        ("envV1ToV2(\"|A=1|B=x y\")", "A=1 B=x' 'y"),
        ("envV1ToV2(\" A=1\")", "A=1"),
        ("mergeEnvironment(\"A=1 B='x y'\", undefined, \"A=2\")", "A=2 B=x' 'y"),
        ("join(\",\", \"\", \"a\", \"\")", "a,"),
        ("formatTime([Year=2024; Month=13; Day=1])", "Wed ?  1 00:00:00 2024"),
        ("formatTime([Year=2024.5; Month=3.7; Day=1], \"%Y %m\")", "1900 01"),
        ("formatTime(absTime(\"2024-02-29T12:00:00Z\"), \"%Y-%m-%d %j %a\")", "2024-02-29 060 Thu"),
    ])
    func compatFunctions(_ text: String, _ expected: String) throws {
        #expect(same(try eval(text), .string(Bytes(expected))), "\(text)")
    }

    @Test func negativeLiteralsAndDoubleDotsAsHTCondorReadsThem() throws {
        #expect(same(try eval("-010"), .integer(-10)))
        #expect(same(try eval("-0x1f + 1"), .integer(1)))
        #expect(same(try eval("eval(string(relTime(-1.5)))"), .integer(-1)))
        #expect(same(try eval("[B = [y = 1]; a = B..y].a"), .integer(1)))
        for bad in ["-08", "01", "-0x", "x.  .y"] {
            #expect(throws: ParseError.self, "\(bad)") { _ = try Parser.parseExpression(bad) }
        }
        let ad = try Parser.parseClassAd("[x = 1; q = zz * 2 + TARGET.a + other.b + r; r = x + g; k = a.b.c + parent.y]")
        #expect(same(ad.evaluate(expr: try Parser.parseExpression("unresolved(q)")), .string(Bytes("g,other.b,a,zz"))))
        #expect(same(ad.evaluate(expr: try Parser.parseExpression("unresolved(k)")), .string(Bytes("'parent'.y,a.b.c"))))
        #expect(same(ad.evaluate(expr: try Parser.parseExpression("unresolved(q, \"^Z\")")), .boolean(true)))
    }

    @Test func argumentsAndContexts() throws {
        #expect(same(try eval("size(argsToList(\" 'a b' c''d '' \"))"), .integer(3)))
        #expect(same(try eval("argsToList(\"'open\")"), .error))
        let ad = try Parser.parseClassAd(
            "[x = 1; r = x + 1; a = evalInEachContext(r, {[x = 5]})[0]; b = evalInEachContext(x, {[x = 5]})[0]; c = countMatches(x + 0 == 5, {[x = 5], [x = 6], 7})]"
        )
        #expect(same(ad.evaluate("a"), .integer(6)))
        #expect(same(ad.evaluate("b"), .integer(1)))
        #expect(same(ad.evaluate("c"), .integer(1)))
        #expect(same(try eval("userMap(\"m\", \"alice\", \"p\", \"d\")"), .string(Bytes("d"))))
        #expect(same(try eval("userHome(\"no such user here\", \"/d\")"), .string(Bytes("/d"))))
    }
}
