// The functions HTCondor adds to the ClassAd language outside its libclassad (its "compat" layer):
// job arguments and environments in HTCondor's V1/V2 syntaxes, evaluation in each of a list of
// records, users' home directories and user maps. Each behaves as HTCondor 25.14's library does, as
// the function fuzzer measures it (Tests/differential/functions.py).

import Foundation

extension Builtins {
    static func registerCompat(_ t: inout [String: Builtin]) {
        t["argstolist"] = { _, a, st throws in try argsToList(a, &st) }
        t["listtoargs"] = { _, a, st throws in try listToArgs(a, &st) }
        t["envv1tov2"] = { _, a, st throws in try envV1ToV2(a, &st) }
        t["mergeenvironment"] = { _, a, st throws in try mergeEnvironment(a, &st) }
        t["evalineachcontext"] = { _, a, st throws in try inEachContext(a, &st, count: false) }
        t["countmatches"] = { _, a, st throws in try inEachContext(a, &st, count: true) }
        t["userhome"] = { _, a, st throws in try userHome(a, &st) }
        t["usermap"] = { _, a, st throws in try userMap(a, &st) }
        t["unresolved"] = { _, a, st throws in try unresolved(a, &st) }
    }

    // MARK: users

    /// userHome(user [, default]): the user's home directory from the password database; the default
    /// (a non-empty string) when the user is unknown, empty or not a string, else UNDEFINED (ERROR for
    /// a user that is neither a string nor UNDEFINED, without a default).
    static func userHome(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count == 1 || a.count == 2 else { return .error }
        let user = try ev(a[0], &st)
        var fallback: Value = .undefined
        if a.count == 2, case .string(let d) = try ev(a[1], &st), !d.isEmpty { fallback = .string(d) }  // "" is no default
        switch user {
        case .string(let s) where !s.isEmpty:
            guard let pw = getpwnam(String(decoding: s.cString, as: UTF8.self)), let dir = pw.pointee.pw_dir else { return fallback }
            return .string(Bytes(String(cString: dir)))
        case .string, .undefined: return fallback
        default: return a.count == 2 && !fallback.isUndefined ? fallback : .error
        }
    }

    /// userMap(map, input [, preferred [, default]]): HTCondor's user maps (CLASSAD_USER_MAP_*).
    /// slurm-vm configures none, so the answer is what HTCondor gives without maps: the default when
    /// one is given, else UNDEFINED.
    static func userMap(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard (2...4).contains(a.count) else { return .error }
        var values: [Value] = []
        for e in a { values.append(try ev(e, &st)) }
        if values[0].isError || values[1].isError { return .error }  // an ERROR preferred name is ignored
        return a.count == 4 ? values[3] : .undefined
    }

    // MARK: arguments and environments

    static let quote = UInt8(ascii: "'")
    /// White space as the V2 syntax knows it (not \v or \f).
    static func isArgSpace(_ c: UInt8) -> Bool { c == 32 || c == 9 || c == 10 || c == 13 }

    /// One argument in the V2 syntax: each run of white space and single quotes goes inside single
    /// quotes, a quote doubled; an empty argument is ''.
    static func v2Quoted(_ s: [UInt8]) -> [UInt8] {
        if s.isEmpty { return [quote, quote] }
        var out: [UInt8] = []
        var i = 0
        while i < s.count {
            guard isArgSpace(s[i]) || s[i] == quote else { out.append(s[i]); i += 1; continue }
            out.append(quote)
            while i < s.count && (isArgSpace(s[i]) || s[i] == quote) {
                if s[i] == quote { out += [quote, quote] } else { out.append(s[i]) }
                i += 1
            }
            out.append(quote)
        }
        return out
    }

    /// The V2 syntax read back: white space separates, single quotes group ('' inside them is a
    /// quote); nil when a quote is left open.
    static func v2Split(_ s: [UInt8]) -> [[UInt8]]? {
        var args: [[UInt8]] = []
        var cur: [UInt8] = []
        var started = false
        var i = 0
        while i < s.count {
            let c = s[i]
            if isArgSpace(c) {
                if started { args.append(cur); cur = []; started = false }
                i += 1
            } else if c == quote {
                started = true
                i += 1
                while true {
                    guard i < s.count else { return nil }
                    if s[i] == quote {
                        if i + 1 < s.count && s[i + 1] == quote { cur.append(quote); i += 2; continue }
                        i += 1
                        break
                    }
                    cur.append(s[i])
                    i += 1
                }
            } else {
                cur.append(c)
                started = true
                i += 1
            }
        }
        if started { args.append(cur) }
        return args
    }

    /// The syntax version of a second argument: 1 (V1: split on white space, nothing quoted) or 2.
    static func syntaxVersion(_ a: [Expr], _ st: inout EvalState) throws -> Int? {
        guard a.count == 2 else { return 2 }
        guard case .integer(let v) = try ev(a[1], &st), v == 1 || v == 2 else { return nil }
        return Int(v)
    }

    /// argsToList(args [, version]): a command line's arguments as a list of strings.
    static func argsToList(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count == 1 || a.count == 2, case .string(let s) = try ev(a[0], &st), let version = try syntaxVersion(a, &st) else {
            return .error
        }
        let args: [[UInt8]]
        if version == 1 {
            args = s.cString.split(omittingEmptySubsequences: true, whereSeparator: isArgSpace).map(Array.init)
        } else {
            guard let v2 = v2Split(s.cString) else { return .error }
            args = v2
        }
        return .list(ListValue(values: args.map { .string(Bytes($0)) }))
    }

    /// listToArgs(list [, version]): a list of strings as one command line; in V1 an argument with
    /// white space cannot be written (ERROR).
    static func listToArgs(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count == 1 || a.count == 2, case .list(let l) = try ev(a[0], &st), let version = try syntaxVersion(a, &st) else {
            return .error
        }
        var parts: [[UInt8]] = []
        for e in l.items {
            guard case .string(let s) = try ev(e, &st) else { return .error }
            if version == 1 {
                if s.cString.contains(where: isArgSpace) { return .error }
                parts.append(s.cString)
            } else {
                parts.append(v2Quoted(s.cString))
            }
        }
        return .string(Bytes(Array(parts.joined(separator: [32]))))
    }

    /// NAME=VALUE entries into a map (the last of a name wins); nil when one has no '=' or no name.
    static func addEnvironment(_ entries: [[UInt8]], to env: inout [[UInt8]: [UInt8]]) -> Bool {
        for entry in entries {
            guard let eq = entry.firstIndex(of: UInt8(ascii: "=")), eq > 0 else { return false }
            env[Array(entry[..<eq])] = Array(entry[(eq + 1)...])
        }
        return true
    }

    /// An environment in the V2 syntax, names in byte order, each NAME=VALUE quoted as one argument.
    static func v2Environment(_ env: [[UInt8]: [UInt8]]) -> Value {
        let entries = env.keys.sorted { Bytes.compare($0, $1) < 0 }.map { v2Quoted($0 + [UInt8(ascii: "=")] + env[$0]!) }
        return .string(Bytes(Array(entries.joined(separator: [32]))))
    }

    /// The characters a V1 environment may start with to name its own delimiter ("|A=1|B=2").
    static let v1Delimiters = Set("!#$%&*+,-/:;<>?@^`|~".utf8)

    /// envV1ToV2(env): a V1 environment in the V2 syntax. Entries are separated by ';', or by the
    /// string's first character when that is one of `v1Delimiters`; white space before an entry is
    /// skipped, and an entry of white space only is no entry.
    static func envV1ToV2(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        guard a.count == 1 else { return .error }
        switch try ev(a[0], &st) {
        case .undefined: return .undefined
        case .string(let s):
            var text = s.cString
            var delimiter = UInt8(ascii: ";")
            if let first = text.first, v1Delimiters.contains(first) { delimiter = first; text.removeFirst() }
            var env: [[UInt8]: [UInt8]] = [:]
            let entries = text.split(separator: delimiter, omittingEmptySubsequences: true)
                .map { Array($0.drop(while: isArgSpace)) }.filter { !$0.isEmpty }
            return addEnvironment(entries, to: &env) ? v2Environment(env) : .error
        default: return .error
        }
    }

    /// mergeEnvironment(env, …): V2 environments merged left to right (a later name wins); UNDEFINED
    /// arguments are skipped.
    static func mergeEnvironment(_ a: [Expr], _ st: inout EvalState) throws -> Value {
        var env: [[UInt8]: [UInt8]] = [:]
        for e in a {
            switch try ev(e, &st) {
            case .undefined: continue
            case .string(let s):
                guard let entries = v2Split(s.cString), addEnvironment(entries, to: &env) else { return .error }
            default: return .error
            }
        }
        return v2Environment(env)
    }

    // MARK: contexts

    /// evalInEachContext(expr, list) and countMatches(expr, list): expr evaluated with each record of
    /// the list as the current scope (its own parent scope behind it). A bare attribute reference is
    /// first looked up where the call is and its expression evaluated instead, as HTCondor does:
    /// with MY = [x = 1; r = x + 1], evalInEachContext(r, {[x = 5]}) is {6} but evalInEachContext(x,
    /// {[x = 5]}) is {1}. evalInEachContext gives each result (ERROR for an element that is not a record);
    /// countMatches counts the records where it is true or a non-zero number.
    static func inEachContext(_ a: [Expr], _ st: inout EvalState, count: Bool) throws -> Value {
        guard a.count == 2 else { return .error }
        let listV = try ev(a[1], &st)
        if listV.isUndefined { return count ? .integer(0) : .undefined }
        guard case .list(let l) = listV else { return .error }
        var expr = a[0]
        var name: AttrName? = nil
        if case .attr(let n, false) = a[0] { name = n }
        if case .select(.attr(let base, false), let n) = a[0], base.key == "my" { name = n }
        if let name, let scope = st.curAd {
            var look = EvalState(scope: scope, within: st)
            if case .found(let e, _, _) = Evaluator.lookupInScope(scope, name, &look) { expr = e }
        }
        var results: [Value] = []
        var matches: Int64 = 0
        for item in l.items {
            let v = try ev(item, &st)
            guard case .classad(let ad) = v else {
                if !count { results.append(v.isUndefined ? .undefined : .error) }
                continue
            }
            var inner = EvalState(scope: ad, within: st)
            let r = try Evaluator.eval(expr, &inner)
            if count {
                switch r {
                case .boolean(true): matches += 1
                case .integer(let i) where i != 0: matches += 1
                case .real(let x) where x != 0: matches += 1
                default: break
                }
            } else if case .relTime(let t) = r {
                results.append(.real(Double(Convert.truncate(t))))  // a relative time comes back as whole seconds, a real
            } else {
                results.append(r)
            }
        }
        return count ? .integer(matches) : .list(ListValue(values: results))
    }
}
