// `slurm-vm classad …`: evaluate expressions and match ads from the command line.

import ArgumentParser
import ClassAd
import Foundation

struct ClassAdCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "classad",
        abstract: "Evaluate ClassAd expressions and match ads (HTCondor semantics).",
        subcommands: [Eval.self, Match.self])

    struct Eval: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Evaluate an expression, or a stream of JSON requests with --jsonl.",
            discussion: """
                --jsonl reads one JSON object per line on stdin and writes one result per line:
                  {"id":"x","kind":"expr","expr":"…","my":"[…]","target":"[…]"}   (my/target optional)
                  {"id":"m","kind":"match","left":"[…]","right":"[…]"}
                """)
        @Argument(help: "The expression.") var expression: String?
        @Option(help: "Evaluate as an attribute of this ad (a file, or the ad itself in [ ] syntax).") var my: String?
        @Option(help: "The match partner of --my.") var target: String?
        @Flag(help: "Read JSON requests from stdin (differential-testing mode).") var jsonl = false

        func run() throws {
            if jsonl { return JSONLines.run() }
            guard let expression else { throw ValidationError("give an expression to evaluate, or --jsonl") }
            let e = try parseText(expression, what: "expression") { try Parser.parseExpression($0) }
            let myAd = try my.map { try loadAd($0) }
            let targetAd = try target.map { try loadAd($0) }
            if targetAd != nil && myAd == nil { throw ValidationError("--target needs --my") }
            myAd?.adopt(e)
            let v: Value
            if let myAd, let targetAd {
                let m = MatchContext(left: myAd, right: targetAd)
                v = m.evaluate(e, in: myAd)
                m.release()
            } else if let myAd {
                v = myAd.evaluate(expr: e)
            } else {
                v = e.evaluate()
            }
            print(Unparser.unparse(v))
        }
    }

    struct Match: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Match a job ad against image ads: both Requirements must accept, Rank orders the matches.")
        @Argument(help: "The job ad (a file in new [ ] or old Name = value syntax).") var job: String
        @Argument(help: "Image ads: files, each with one ad, or with one new-syntax ad per line.") var images: [String]
        @Flag(help: "Explain why nothing matches (or why each image was ruled out).") var explain = false

        func run() throws {
            let jobAd = try loadAd(job)
            var imageAds: [ClassAd] = []
            for f in images { imageAds += try loadAds(f) }
            let mm = Matchmaker(images: imageAds)
            let result = mm.match(jobAd)
            if result.matches.isEmpty {
                print("no image matches this job")
            } else {
                for (i, m) in result.matches.enumerated() {
                    print("\(i + 1). \(mm.label(of: m.imageIndex))  (job rank \(fmt(m.jobRank)), image rank \(fmt(m.imageRank)))")
                }
            }
            if explain || result.matches.isEmpty {
                print("")
                print(Explainer(images: imageAds).explain(jobAd).text)
            }
            if result.matches.isEmpty { throw ExitCode(1) }
        }

        func fmt(_ d: Double) -> String { d == d.rounded() && abs(d) < 1e15 ? String(Int64(d)) : String(d) }
    }
}

/// Parses, or prints the parse error (with line, column and the offending text) and exits 2.
func parseText<T>(_ text: String, what: String, _ parse: (String) throws -> T) throws -> T {
    do { return try parse(text) } catch let err as ParseError {
        FileHandle.standardError.write(Data("slurm-vm: cannot parse the \(what): \(err.description)\n".utf8))
        throw ExitCode(2)
    }
}

/// An ad given on the command line: a file name, or the text of an ad.
func loadAd(_ arg: String) throws -> ClassAd {
    let text: String
    if FileManager.default.fileExists(atPath: arg) {
        guard let t = try? String(contentsOfFile: arg, encoding: .utf8) else {
            throw ValidationError("cannot read \(arg) as UTF-8 text")
        }
        text = t
    } else if arg.trimmingCharacters(in: .whitespaces).hasPrefix("[") {
        text = arg
    } else {
        throw ValidationError("no such file: \(arg) (give a file, or an ad in [ ] syntax)")
    }
    return try parseText(text, what: "ad in \(arg)") { try Parser.parseAd($0) }
}

/// Several ads in one file: one new-syntax ad per line, or a single ad in either syntax.
func loadAds(_ path: String) throws -> [ClassAd] {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
        throw ValidationError("cannot read \(path)")
    }
    let lines = text.split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
    if lines.count > 1
        && lines.allSatisfy({ $0.trimmingCharacters(in: .whitespaces).hasPrefix("[") || $0.trimmingCharacters(in: .whitespaces).isEmpty })
    {
        var ads: [ClassAd] = []
        for (i, l) in lines.enumerated() {
            ads.append(try parseText(l, what: "ad on line \(i + 1) of \(path)") { try Parser.parseClassAd($0) })
        }
        return ads
    }
    return [try loadAd(path)]
}

/// The --jsonl batch mode used by the differential tests.
enum JSONLines {
    static func run() {
        var out = ""
        while let line = readLine(strippingNewline: true) {
            if line.isEmpty { continue }
            out += handle(line)
            out += "\n"
            if out.utf8.count > 1 << 16 {
                FileHandle.standardOutput.write(Data(out.utf8))
                out = ""
            }
        }
        FileHandle.standardOutput.write(Data(out.utf8))
    }

    static func typed(_ v: Value, _ st: EvalState) -> Any { TypedJSON.encode(v, state: st) }

    static func handle(_ line: String) -> String {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            return JSONWriter.encode(["id": NSNull(), "error": "input line is not a JSON object"])
        }
        let id = obj["id"] as? String ?? ""
        let kind = obj["kind"] as? String ?? "expr"
        let parseError: [String: Any] = ["type": "parse_error"]
        switch kind {
        case "expr":
            guard let text = obj["expr"] as? String else { return JSONWriter.encode(["id": id, "error": "missing expr"]) }
            guard let e = try? Parser.parseExpression(text) else { return JSONWriter.encode(["id": id, "result": parseError]) }
            var my: ClassAd? = nil, target: ClassAd? = nil
            if let m = obj["my"] as? String {
                guard let ad = try? Parser.parseClassAd(m) else { return JSONWriter.encode(["id": id, "result": parseError]) }
                my = ad
            }
            if let t = obj["target"] as? String {
                guard let ad = try? Parser.parseClassAd(t) else { return JSONWriter.encode(["id": id, "result": parseError]) }
                target = ad
            }
            var st = EvalState(scope: nil)
            var ctx: MatchContext? = nil
            my?.adopt(e)
            if let my, let target {
                ctx = MatchContext(left: my, right: target)
                st = EvalState(scope: my)
            } else if let my {
                st = EvalState(scope: my)
            }
            let v: Value
            do { v = try Evaluator.eval(e, &st) } catch { v = .error }
            let result = typed(v, st)
            ctx?.release()
            return JSONWriter.encode(["id": id, "result": result])
        case "match":
            guard let ls = obj["left"] as? String, let rs = obj["right"] as? String,
                let left = try? Parser.parseClassAd(ls), let right = try? Parser.parseClassAd(rs)
            else {
                return JSONWriter.encode(["id": id, "error": "parse_error"])
            }
            let ctx = MatchContext(left: left, right: right)
            defer { ctx.release() }
            let lmr = ctx.requirementsHold(of: right)
            let rml = ctx.requirementsHold(of: left)
            func rank(_ ad: ClassAd) -> Any {
                guard ad.lookup("Rank") != nil else { return ["type": "undefined"] }
                let st = EvalState(scope: ad)
                return typed(ctx.evaluate(attribute: "Rank", of: ad), st)
            }
            return JSONWriter.encode([
                "id": id, "left_matches_right": lmr, "right_matches_left": rml,
                "symmetric_match": lmr && rml, "left_rank": rank(left), "right_rank": rank(right),
            ])
        default:
            return JSONWriter.encode(["id": id, "error": "unknown kind \(kind)"])
        }
    }
}
