"""Random ClassAd expressions and ad pairs for differential testing against HTCondor's library.

Deterministic for a seed. Avoids only what cannot be compared meaningfully: time functions and random(),
and bytes that are not printable ASCII (the oracle's Python strings are Unicode).
"""
import random

NAMES = ["a", "b", "c", "x", "y", "Cpus", "Memory", "OS", "Owner", "Libs", "Version", "KernelVersion", "Name"]
STRINGS = ["", "a", "A", "abc", "ABC", "debian", "Debian", "6.1.0", "6.10", "6.9.2", "x86_64", "mpich",
           "libfftw3", "alice", "bob", "a,b,c", "a, b ,,c", "1,2,3", "1.5,2", "u@d", "slot1@host", "3", "-2",
           "2.5", "1e3", "12abc", "  7", "true", "FALSE", "a.c", "(a)(b)", "\\\\d+", "[0-9]+", "^a", "b$", "x|y",
           "a\tb\tc", "\t", "i"]
FUNCS = {
    # name: (min args, max args, argument kinds)
    "member": (2, 2), "identicalMember": (2, 2), "size": (1, 1), "strcat": (0, 4), "join": (1, 4),
    "split": (1, 2), "splitUserName": (1, 1), "splitSlotName": (1, 1), "substr": (2, 3), "toUpper": (1, 1),
    "toLower": (1, 1), "strcmp": (2, 2), "stricmp": (2, 2), "regexp": (2, 3), "regexps": (3, 4),
    "regexpMember": (2, 3), "replace": (3, 4), "replaceAll": (3, 4), "stringListMember": (2, 3),
    "stringListIMember": (2, 3), "stringListSize": (1, 2), "stringListSum": (1, 2), "stringListAvg": (1, 2),
    "stringListMin": (1, 2), "stringListMax": (1, 2), "stringListsIntersect": (2, 3),
    "stringListSubsetMatch": (2, 3), "ifThenElse": (3, 3), "isUndefined": (1, 1), "isError": (1, 1),
    "isString": (1, 1), "isInteger": (1, 1), "isReal": (1, 1), "isBoolean": (1, 1), "isList": (1, 1),
    "isClassAd": (1, 1), "int": (1, 1), "real": (1, 1), "string": (1, 1), "bool": (1, 1), "floor": (1, 1),
    "ceiling": (1, 1), "round": (1, 1), "pow": (2, 2), "quantize": (2, 2), "sum": (1, 1), "avg": (1, 1),
    "min": (1, 1), "max": (1, 1), "anyCompare": (3, 3), "allCompare": (3, 3), "versioncmp": (2, 2),
    "versionLT": (2, 2), "versionLE": (2, 2), "versionGT": (2, 2), "versionGE": (2, 2), "versionEQ": (2, 2),
    "version_in_range": (3, 3), "unparse": (1, 1), "eval": (1, 1), "interval": (1, 1),
    # Other capitalisations, and the string-list functions the first list lacked.
    "VERSIONGT": (2, 2), "versionLe": (2, 2), "Version_In_Range": (3, 3), "stringList_regexpMember": (2, 4),
    "stringListISubsetMatch": (2, 3),
}
BINOPS = ["||", "&&", "|", "^", "&", "==", "!=", "=?=", "=!=", "is", "isnt", "<", "<=", ">", ">=",
          "<<", ">>", ">>>", "+", "-", "*", "/", "%"]
UNOPS = ["-", "+", "!", "~"]
CMP_OPS = ["<", "<=", "==", "!=", ">", ">=", "is", "isnt"]


def quote(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Gen:
    def __init__(self, seed):
        self.r = random.Random(seed)

    def literal(self):
        r = self.r
        k = r.randrange(10)
        if k == 0:
            return str(r.choice([0, 1, 2, 3, -1, 7, 10, 100, 1024, 2**31, 2**62, -2**63 + 1]))
        if k == 1:
            return r.choice(["0.0", "1.5", "-2.25", "1e3", "3.0", "0.1", "1e-5", "2.5e10", ".5", "-0.0"])
        if k in (2, 3):
            return quote(r.choice(STRINGS))
        if k == 4:
            return r.choice(["true", "false", "TRUE", "False"])
        if k == 5:
            return r.choice(["undefined", "error", "UNDEFINED"])
        if k == 6:
            return r.choice(['real("INF")', 'real("-INF")', 'real("NaN")'])
        return str(r.randrange(-5, 20))

    def ref(self):
        r = self.r
        n = r.choice(NAMES)
        k = r.randrange(8)
        if k == 0:
            return "MY." + n
        if k == 1:
            return "TARGET." + n
        if k == 2:
            return r.choice(["other." + n, "self." + n, "parent." + n, "my", "target", "." + n])
        return n

    def expr(self, depth=0):
        r = self.r
        if depth > 4 or r.random() < 0.25:
            return self.literal() if r.random() < 0.6 else self.ref()
        k = r.randrange(16)
        if k < 5:
            return f"{self.expr(depth + 1)} {r.choice(BINOPS)} {self.expr(depth + 1)}"
        if k == 5:
            return f"{r.choice(UNOPS)}{self.expr(depth + 1)}"
        if k == 6:
            return f"({self.expr(depth + 1)})"
        if k == 7:
            return f"{self.expr(depth + 1)} ? {self.expr(depth + 1)} : {self.expr(depth + 1)}"
        if k == 8:
            return f"{self.expr(depth + 1)} ?: {self.expr(depth + 1)}"
        if k == 9:
            return "{" + ", ".join(self.expr(depth + 2) for _ in range(r.randrange(4))) + "}"
        if k == 10:
            return f"{self.expr(depth + 1)}[{self.expr(depth + 2)}]"
        if k == 11:
            return self.record(depth + 1) + r.choice(["", ".a", ".x", '["b"]'])
        return self.call(depth + 1)

    def call(self, depth):
        r = self.r
        name = r.choice(list(FUNCS))
        lo, hi = FUNCS[name]
        n = r.randint(lo, hi) if r.random() < 0.92 else r.randint(0, hi + 1)
        args = []
        for i in range(n):
            p = r.random()
            if name in ("anyCompare", "allCompare") and i == 0 and p < 0.8:
                args.append(quote(r.choice(CMP_OPS)))
            elif name in ("member", "identicalMember", "sum", "avg", "min", "max", "regexpMember", "anyCompare",
                          "allCompare", "quantize", "join") and p < 0.5:
                args.append("{" + ", ".join(self.expr(depth + 2) for _ in range(r.randrange(4))) + "}")
            elif name == "eval" and p < 0.7:
                args.append(quote(self.expr(depth + 3).replace("\\", "")))
            elif name == "unparse" and p < 0.8:
                args.append(self.ref())
            elif p < 0.45:
                args.append(quote(r.choice(STRINGS)))
            else:
                args.append(self.expr(depth + 1))
        return f"{name}({', '.join(args)})"

    def record(self, depth=0, names=None):
        r = self.r
        names = names or NAMES
        attrs = []
        for n in r.sample(names, r.randrange(0, 5)):
            attrs.append(f"{n} = {self.expr(depth + 1)}")
        return "[" + "; ".join(attrs) + "]"

    def ad(self, requirements=True):
        """A job- or image-like ad: mostly plain values, some expressions."""
        r = self.r
        attrs = {}
        for n in r.sample(NAMES, r.randrange(3, 9)):
            attrs[n] = self.literal() if r.random() < 0.6 else self.expr(2)
        if requirements and r.random() < 0.95:
            attrs["Requirements"] = self.expr(1)
        if r.random() < 0.6:
            attrs["Rank"] = self.expr(2)
        return "[" + "; ".join(f"{k} = {v}" for k, v in attrs.items()) + "]"

    def request(self, i):
        r = self.r
        p = r.random()
        if p < 0.55:
            return {"id": str(i), "kind": "expr", "expr": self.expr()}
        if p < 0.7:
            return {"id": str(i), "kind": "expr", "expr": self.expr(), "my": self.ad()}
        if p < 0.85:
            return {"id": str(i), "kind": "expr", "expr": self.expr(), "my": self.ad(), "target": self.ad()}
        return {"id": str(i), "kind": "match", "left": self.ad(), "right": self.ad()}
