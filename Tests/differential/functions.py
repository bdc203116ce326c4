"""Every function of HTCondor's ClassAd language, with the reference's section for each, and random calls
to it: arguments of the kinds the function takes, and of every other kind (undefined, error, lists,
nested ads, empty and huge strings, times), at its arities and one beyond. The names are those HTCondor
25 registers (REGISTERED: its libclassad and, for the string lists, users, environments and contexts,
its condor_utils); the sections follow the reference manual's "ClassAd Syntax: Predefined Functions".
(The manual also lists sprintf, which HTCondor 25.14's library does not register: an unknown function,
ERROR, there as here.)

    python3 functions.py [--count 2000] [--only NAME,...] [--show 5]   # per-function agreement table
"""
import random
import re

from gen import quote

# What a called function's attribute references can see: MY's attributes.
MY_AD = ('[x = 1; y = 2.5; s = "abc"; t = "a, b ,c"; l = {1, "a", 2.5}; n = {}; ad = [a = 1; b = "x"]; '
         'u = undefined; e = error; r = x + 1; env = "A=1 B=\'x y\'"; nested = [p = [q = {1, [z = 3]}]]; '
         'q = zz * 2 + TARGET.a + other.b + ad.zz + {zz, Y}[0] + r + [w = k].w; k = a.b.c + parent.y + MY.q + size(g)]')

HUGE = "x" * 5000

# Values of every kind, written as ClassAd literals (or expressions that yield them).
ANY = {
    "int": ["0", "1", "-1", "2", "7", "42", "1024", "2147483648", "9223372036854775807", "-9223372036854775807 - 1",
            "-3"],
    "real": ["0.0", "-0.0", "1.5", "-2.5", "0.1", "1e300", "-1e300", "1e-300", "2.5e10", "3.0", 'real("INF")',
             'real("-INF")', 'real("NaN")'],
    "str": ['""', '"a"', '"A"', '"abc"', '"ABC"', '" a b "', '"a,b,c"', '"a, b ,,c"', '"1,2,3"', '"1.5, 2"',
            '"6.10"', '"6.9.2"', '"10"', '"-7"', '"2.5"', '"1e3"', '"0x10"', '"  7"', '"12abc"', '"true"', '"FALSE"',
            '"undefined"', '"u@d.org"', '"slot1@host"', '"slot1_2@host"', '"a\\tb"', '"\\t"', '"é"', '"日本"',
            '"%d"', '"%s"', '"a.b"', '"\\\\d+"', '"[0-9]+"', '"(a)(b)"', '"^a"', '"b$"', '"x|y"', f'"{HUGE}"'],
    "bool": ["true", "false"],
    "undef": ["undefined"],
    "error": ["error"],
    "list": ["{}", "{1, 2, 3}", '{"a", "b"}', '{"A", "b", "c"}', "{1, {2, 3}}", "{undefined, 1}", "{error}",
             "{1.5, 2}", "{true, false}", '{"a", 1}', "{[a = 1], [a = 2]}", "{x, s}"],
    "ad": ["[]", '[a = 1; b = "x"]', "[a = [b = 1]]", "[x = 5; r = x + 1]", "[a = undefined]"],
    "ref": ["x", "y", "s", "t", "l", "n", "ad", "u", "e", "r", "missing", "MY.x", "ad.a", "nested.p.q", "TARGET.x"],
    "time": ["absTime(0)", 'absTime("2024-02-29T12:00:00Z")', "relTime(100)", "relTime(-1.5)", "absTime(1700000000)"],
}
KINDS = list(ANY)

# Arguments of the kinds functions expect.
TYPED = {
    "str": ANY["str"],
    "num": ANY["int"] + ANY["real"] + ['"3"', '"2.5"'],
    "int": ANY["int"],
    "list": ANY["list"],
    "strlist": ['""', '"a"', '"a,b,c"', '"a, b ,,c"', '"A,b"', '"1,2,3"', '"1.5, 2, -3"', '"a b c"', '"a;b"',
                '"x,y"', '"1,,2"', '"  "', '"3"', '"a\\tb"', '"b, a"'],
    "delims": ['","', '" "', '", "', '";"', '""', '"\\t"', '",;"', "undefined"],
    "regex": ['"a"', '"^a"', '"b$"', '"a|b"', '"(a)(b)?"', '"[0-9]+"', '"\\\\d+"', '"."', '""', '"A"', '"(?i)a"',
              '"a{2,}"', '"(["', '"x*"', '"\\\\w+@(\\\\w+)"', '"é"'],
    "opts": ['""', '"i"', '"I"', '"m"', '"s"', '"x"', '"f"', '"g"', '"ig"', '"is"', '"mf"', '"q"', '"iq"'],
    "subst": ['"x"', '"\\\\1"', '"[\\\\0]"', '"\\\\2-\\\\1"', '""', '"\\\\9"'],
    "version": ['"1"', '"1.2"', '"1.10"', '"1.9"', '"6.1.0"', '"6.1.0-rc1"', '"6.01"', '"a"', '"1a"', '"1.a"',
                '""', '"10"', '"v2"', '"1.2.3.4"'],
    "cmpop": ['"<"', '"<="', '"=="', '"!="', '">"', '">="', '"is"', '"isnt"', '"=?="', '"=!="', '"foo"'],
    "fmt": ['"%Y-%m-%d"', '"%H:%M:%S"', '"%c"', '"%s"', '"%a %b %d"', '"%j %U %w"', '"%%"', '""', '"%Z %z"',
            '"plain"', '"%e %p %y"'],
    "sprintf": ['"%d"', '"%5.2f"', '"%s"', '"%x %o"', '"%-4d|"', '"%c"', '"%%"', '"%e"', '"%g"', '"%s %s"', '"%i"',
                '"%u"', '"%05d"', '"%+d"', '"plain"', '"%q"', '"%"', '"%*d"', '"%.3s"', '"%X"', '"%ld"'],
    "expr": ["x", "x + 1", "s", "l", "ad", "u", "e", "missing", "ad.a", "1 + 2", '"a"', "q", "k", "MY.q", "nested"],
    "exprstr": ['"x + 1"', '"1 +"', '"[a = 1].a"', '"s"', '"l[1]"', '"missing"', '""', '"x =?= 1"'],
    "time": ANY["time"] + ["0", "1700000000", "-1", "86399", "1.5", "2147483648"],
    "env": ['"A=1"', '"A=1;B=2"', '"A=1 B=2"', "\"A='x y'\"", '"A=1|B=2"', '""', '"A"', '"=1"', '"A=1 B=\'it\'\'s\'"',
            '"A=\\"1\\""', "env"],
    "args": ['"a b"', "\"a 'b c'\"", '"a\\"b"', '""', '"\'\'"', "\"'a''b'\"", '"a  b "', '"\'unterminated"'],
    "user": ['"alice@example.org"', '"alice"', '"@host"', '"a@b@c"', '""', '"slot1@node"', '"slot1_2@node"', '"node"',
             '"slot1_@"'],
    "ads": ["{[x = 1], [x = 2], [x = 1]}", "{}", "{[y = 1]}", "{1, [x = 1]}", "{[x = undefined]}"],
    "quantum": ["1", "2", "0", "-2", "2.5", "0.0", "{2, 4, 8}", "{}", "{1.5, 3}", '{"a"}', "{-4, -1}"],
}


# name, reference section, (fewest, most arguments), the kind of each argument (the last repeats).
# Functions whose result depends on the clock, chance or the host are compared by type only (TYPE_ONLY).
FUNCTIONS = [
    # Type predicates
    ("isUndefined", "types", 1, 1, ["any"]), ("isError", "types", 1, 1, ["any"]),
    ("isString", "types", 1, 1, ["any"]), ("isInteger", "types", 1, 1, ["any"]),
    ("isReal", "types", 1, 1, ["any"]), ("isBoolean", "types", 1, 1, ["any"]),
    ("isList", "types", 1, 1, ["any"]), ("isClassAd", "types", 1, 1, ["any"]),
    ("isAbstime", "types", 1, 1, ["time"]), ("isReltime", "types", 1, 1, ["time"]),
    # Conversions
    ("int", "conversions", 1, 1, ["num"]), ("real", "conversions", 1, 1, ["num"]),
    ("string", "conversions", 1, 1, ["any"]), ("bool", "conversions", 1, 1, ["str"]),
    ("absTime", "conversions", 0, 2, ["time", "int"]), ("relTime", "conversions", 0, 1, ["time"]),
    # Math
    ("floor", "math", 1, 1, ["num"]), ("ceiling", "math", 1, 1, ["num"]), ("ceil", "math", 1, 1, ["num"]),
    ("round", "math", 1, 1, ["num"]), ("pow", "math", 2, 2, ["num", "num"]),
    ("quantize", "math", 2, 2, ["num", "quantum"]), ("random", "math", 0, 1, ["num"]),
    # Lists
    ("size", "lists", 1, 1, ["list"]), ("sum", "lists", 1, 1, ["list"]), ("avg", "lists", 1, 1, ["list"]),
    ("min", "lists", 1, 1, ["list"]), ("max", "lists", 1, 1, ["list"]),
    ("member", "lists", 2, 2, ["any", "list"]), ("identicalMember", "lists", 2, 2, ["any", "list"]),
    ("anyCompare", "lists", 3, 3, ["cmpop", "list", "any"]), ("allCompare", "lists", 3, 3, ["cmpop", "list", "any"]),
    # Strings
    ("strcat", "strings", 0, 4, ["str"]), ("join", "strings", 0, 4, ["str", "list"]),
    ("substr", "strings", 2, 3, ["str", "int", "int"]), ("strcmp", "strings", 2, 2, ["str", "str"]),
    ("stricmp", "strings", 2, 2, ["str", "str"]), ("toUpper", "strings", 1, 1, ["str"]),
    ("toLower", "strings", 1, 1, ["str"]), ("split", "strings", 1, 2, ["strlist", "delims"]),
    # String lists
    ("stringListSize", "string lists", 1, 2, ["strlist", "delims"]),
    ("stringListSum", "string lists", 1, 2, ["strlist", "delims"]),
    ("stringListAvg", "string lists", 1, 2, ["strlist", "delims"]),
    ("stringListMin", "string lists", 1, 2, ["strlist", "delims"]),
    ("stringListMax", "string lists", 1, 2, ["strlist", "delims"]),
    ("stringListMember", "string lists", 2, 3, ["str", "strlist", "delims"]),
    ("stringListIMember", "string lists", 2, 3, ["str", "strlist", "delims"]),
    ("stringListSubsetMatch", "string lists", 2, 3, ["strlist", "strlist", "delims"]),
    ("stringListISubsetMatch", "string lists", 2, 3, ["strlist", "strlist", "delims"]),
    ("stringListsIntersect", "string lists", 2, 3, ["strlist", "strlist", "delims"]),
    ("stringList_regexpMember", "string lists", 2, 4, ["regex", "strlist", "delims", "opts"]),
    # Regular expressions
    ("regexp", "regular expressions", 2, 3, ["regex", "str", "opts"]),
    ("regexpMember", "regular expressions", 2, 3, ["regex", "list", "opts"]),
    ("regexps", "regular expressions", 3, 4, ["regex", "str", "subst", "opts"]),
    ("replace", "regular expressions", 3, 4, ["regex", "str", "subst", "opts"]),
    ("replaceAll", "regular expressions", 3, 4, ["regex", "str", "subst", "opts"]),
    # Versions
    ("versioncmp", "versions", 2, 2, ["version"]), ("versionLT", "versions", 2, 2, ["version"]),
    ("versionLE", "versions", 2, 2, ["version"]), ("versionGT", "versions", 2, 2, ["version"]),
    ("versionGE", "versions", 2, 2, ["version"]), ("versionEQ", "versions", 2, 2, ["version"]),
    ("version_in_range", "versions", 3, 3, ["version"]),
    # Time
    ("time", "time", 0, 0, []), ("currentTime", "time", 0, 0, []), ("dayTime", "time", 0, 0, []),
    ("timezoneOffset", "time", 0, 0, []), ("interval", "time", 1, 1, ["time"]),
    ("splitTime", "time", 0, 1, ["time"]), ("formatTime", "time", 0, 2, ["time", "fmt"]),
    ("getYear", "time", 1, 1, ["time"]), ("getMonth", "time", 1, 1, ["time"]),
    ("getDayOfYear", "time", 1, 1, ["time"]), ("getDayOfMonth", "time", 1, 1, ["time"]),
    ("getDayOfWeek", "time", 1, 1, ["time"]), ("getHours", "time", 1, 1, ["time"]),
    ("getMinutes", "time", 1, 1, ["time"]), ("getSeconds", "time", 1, 1, ["time"]),
    ("getDays", "time", 1, 1, ["time"]),
    # Expressions
    ("ifThenElse", "expressions", 3, 3, ["any"]), ("eval", "expressions", 1, 1, ["exprstr"]),
    ("unparse", "expressions", 1, 1, ["expr"]), ("unresolved", "expressions", 1, 2, ["expr", "str"]),
    ("debug", "expressions", 1, 1, ["expr"]),
    # Users and slots
    ("splitUserName", "users and slots", 1, 1, ["user"]), ("splitSlotName", "users and slots", 1, 1, ["user"]),
    ("userHome", "users and slots", 1, 2, ["user", "str"]), ("userMap", "users and slots", 2, 4, ["str"]),
    # Environment and arguments
    ("envV1ToV2", "environment and arguments", 1, 1, ["env"]),
    ("mergeEnvironment", "environment and arguments", 0, 3, ["env"]),
    ("listToArgs", "environment and arguments", 1, 1, ["list"]),
    ("argsToList", "environment and arguments", 1, 1, ["args"]),
    # Contexts
    ("evalInEachContext", "contexts", 2, 2, ["expr", "ads"]), ("countMatches", "contexts", 2, 2, ["expr", "ads"]),
]

# Every function name HTCondor 25.14 registers, as registered (matched without regard to case).
REGISTERED = """isundefined iserror isstring isinteger isreal islist isclassad isboolean isabstime isreltime member
identicalmember size sum avg min max anycompare allcompare time currenttime timezoneoffset daytime getyear
getmonth getdayofyear getdayofmonth getdayofweek getdays gethours getminutes getseconds splittime formattime
strcat join toupper tolower substr strcmp stricmp versioncmp versionLE versionLT versionGE versionGT versionEQ
version_in_range regexp regexpmember regexps replace replaceall int real string bool absTime relTime unparse
unresolved floor ceil ceiling round pow quantize random ifThenElse interval eval stringListsIntersect debug
envV1ToV2 mergeEnvironment listToArgs argsToList stringListSize stringListSum stringListAvg stringListMin
stringListMax stringListMember stringListIMember stringListSubsetMatch stringListISubsetMatch
stringList_regexpMember userHome userMap splitusername splitslotname split evalInEachContext countMatches""".split()

# A time past the year 2^31 leaves glibc's gmtime part of its result unset, and HTCondor prints
# whatever its stack held there (two runs differ): such times (17 digits or more) are not drawn for these.
BEYOND_YEARS = {"splitTime", "formatTime"}

# The clock, chance and the host: compared by the result's type.
TYPE_ONLY = {"time", "currentTime", "dayTime", "random", "userHome"}


class Calls:
    """Random calls to one function: arguments of its kinds three times in four, of any kind otherwise."""

    def __init__(self, seed):
        self.r = random.Random(seed)

    def any(self):
        k = self.r.choice(KINDS)
        if k in ("int", "real", "str", "list") and self.r.random() < 0.5:
            return self.made(k)
        return self.r.choice(ANY[k])

    def word(self, alphabet="abcABC019 ,;.-_:\t@+xyzé", most=8):
        return "".join(self.r.choice(alphabet) for _ in range(self.r.randint(0, most)))

    def made(self, kind):
        """A value of the kind made up on the spot, so thousands of calls are all different."""
        r = self.r
        if kind in ("int", "time"):
            return str(r.choice([r.randint(-100, 100), r.randint(-2**31, 2**31), r.randint(0, 2**40), r.randint(-2**62, 2**62)]))
        if kind in ("real", "num"):
            return r.choice([f"{r.uniform(-1000, 1000):.3f}", f"{r.uniform(-1, 1):.6g}", f"{r.uniform(-1e12, 1e12):.6e}",
                             str(r.randint(-50, 50)), f'"{r.uniform(-100, 100):.2f}"'])
        if kind in ("str", "user", "args", "env"):
            return quote(self.word())
        if kind == "strlist":
            sep = r.choice([",", ", ", " ", ";", "\t", ",,"])
            return quote(sep.join(self.word("abcAB12.", 3) for _ in range(r.randint(0, 5))))
        if kind == "version":
            return quote(".".join(r.choice([str(r.randint(0, 20)), "0" + str(r.randint(0, 9)), self.word("ab-", 2)])
                                  for _ in range(r.randint(1, 4))))
        if kind == "regex":
            return quote("".join(r.choice(["a", "b", ".", "*", "+", "?", "|", "(a)", "[ab]", "^", "$", "\\\\d", "B", "(?:b)"])
                                 for _ in range(r.randint(1, 5))))
        if kind == "list":
            return "{" + ", ".join(self.any() for _ in range(r.randint(0, 4))) + "}"
        if kind == "exprstr":
            return quote(r.choice(["x", "y", "s", "1", "2.5", "l"]) + r.choice([" + ", " * ", " == ", " < ", " =?= "])
                         + r.choice(["x", "1", '\\"a\\"', "undefined", str(r.randint(0, 9))]))
        if kind == "expr":
            return r.choice(["x", "y", "s", "u", "r", "ad.a", str(r.randint(0, 99))]) + r.choice([" + 1", " * 2", "", " == x", " =?= undefined"])
        if kind == "ads":
            return "{" + ", ".join(f"[x = {self.any()}]" for _ in range(r.randint(0, 3))) + "}"
        if kind == "quantum":
            return r.choice([str(r.randint(-5, 10)), f"{r.uniform(0, 5):.2f}", "{" + ", ".join(str(r.randint(1, 9)) for _ in range(3)) + "}"])
        return r.choice(TYPED[kind])

    def arg(self, kind):
        if kind == "any" or self.r.random() < 0.25:
            return self.any()
        if self.r.random() < 0.5:
            return self.made(kind)
        return self.r.choice(TYPED[kind])

    def call(self, name, lo, hi, kinds):
        r = self.r
        p = r.random()
        n = r.randint(lo, hi) if p < 0.9 else r.choice([max(0, lo - 1), hi + 1])
        args = [self.arg(kinds[min(i, len(kinds) - 1)] if kinds else "any") for i in range(n)]
        return f"{name}({', '.join(args)})"

    def requests(self, name, count, prefix=""):
        lo, hi, kinds = next((f[2], f[3], f[4]) for f in FUNCTIONS if f[0] == name)
        out, seen = [], set()
        tries = 0
        while len(out) < count and tries < count * 20:
            tries += 1
            e = self.call(name, lo, hi, kinds)
            if e in seen or (name in BEYOND_YEARS and re.search(r"\d{17}", e)):
                continue
            seen.add(e)
            out.append({"id": f"{prefix}{len(out)}", "kind": "expr", "expr": e, "my": MY_AD})
        return out


# Calls that read the clock: compared by type.
CLOCK_CALLS = {"absTime()", "splitTime()", "formatTime()"}


def agree(name, theirs, mine, expr=""):
    """Whether two answers agree: exactly, or by type for the clock's, chance's and the host's functions."""
    import compare
    if name in TYPE_ONLY or expr in CLOCK_CALLS:
        return theirs.get("result", {}).get("type") == (mine or {}).get("result", {}).get("type")
    return mine is not None and compare.same(mine, theirs)


def main():
    import argparse
    import json
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import compare
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only")
    ap.add_argument("--show", type=int, default=3)
    ap.add_argument("--binary")
    a = ap.parse_args()
    names = a.only.split(",") if a.only else [f[0] for f in FUNCTIONS]
    g = Calls(a.seed)
    reqs, owner = [], {}
    for name in names:
        for q in g.requests(name, a.count, prefix=name + "-"):
            reqs.append(q)
            owner[q["id"]] = name
    answers = compare.answers(reqs, a.binary or compare.default_binary())
    bad = {}
    for r, theirs, mine in answers:
        name = owner[r["id"]]
        if theirs is not None and not agree(name, theirs, mine, r["expr"]):
            bad.setdefault(name, []).append((r, theirs, mine))
    total = {n: sum(1 for q in reqs if owner[q["id"]] == n) for n in names}
    for name in names:
        misses = bad.get(name, [])
        print(f"{name:26} {total[name] - len(misses):5}/{total[name]}")
        for r, theirs, mine in misses[: a.show]:
            print("   ", r["expr"][:160])
            print("      HTCondor:", json.dumps(theirs.get("result"))[:200])
            print("      slurm-vm:", json.dumps((mine or {}).get("result"))[:200])
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
