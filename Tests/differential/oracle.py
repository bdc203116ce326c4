"""HTCondor's own ClassAd library as the reference: evaluates the same JSON requests as
`slurm-vm classad eval --jsonl` and returns the same typed results."""
import datetime
import math
import os

os.environ.setdefault("CONDOR_CONFIG", "ONLY_ENV")
import htcondor2  # noqa: E402,F401  (importing it applies the daemons' defaults: old-ClassAd fallbacks)
import classad2  # noqa: E402

MAX_DEPTH = 6  # as TypedJSON.maxDepth


def _eval(text, my, target):
    return classad2.ExprTree(text).eval(my, target)


def typed(text, value, my, target, depth=0):
    """Typed form of `value`, the result of evaluating `text`; list elements and record attributes are
    evaluated as `(text)[i]` and `(text)["name"]` would be, which is what slurm-vm does too."""
    V = classad2.Value
    if isinstance(value, V):
        return {"type": "undefined"} if value == V.Undefined else {"type": "error"}
    if isinstance(value, bool):
        return {"type": "boolean", "value": value}
    if isinstance(value, int):
        return {"type": "integer", "value": value}
    if isinstance(value, float) and safe_eval(f"isReltime({text})", my, target) is True:
        # The bindings give a relative time as a float of seconds; the ClassAd type is kept.
        if math.isnan(value) or math.isinf(value):
            return {"type": "reltime", "value": "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"}
        return {"type": "reltime", "value": value}
    if isinstance(value, float):
        if math.isnan(value):
            return {"type": "real", "value": "nan"}
        if math.isinf(value):
            return {"type": "real", "value": "inf" if value > 0 else "-inf"}
        return {"type": "real", "value": value}
    if isinstance(value, str):
        return {"type": "string", "value": value}
    if isinstance(value, AbsTime):
        return {"type": "abstime", "value": value.secs, "offset": value.offset}
    if isinstance(value, datetime.datetime):
        # The bindings round the offset to minutes; splitTime() gives it exactly.
        offset = safe_eval(f"splitTime({text}).Offset", my, target)
        return {"type": "abstime", "value": math.floor(value.timestamp()), "offset": offset if isinstance(offset, int) else None}
    if isinstance(value, datetime.timedelta):
        return {"type": "reltime", "value": value.total_seconds()}
    if isinstance(value, list):
        if depth >= MAX_DEPTH:
            return {"type": "list", "value": "…"}
        out = []
        for i in range(len(value)):
            sub = f"({text})[{i}]"
            out.append(typed(sub, safe_eval(sub, my, target), my, target, depth + 1))
        return {"type": "list", "value": out}
    if isinstance(value, classad2.ClassAd):
        if depth >= MAX_DEPTH:
            return {"type": "classad", "value": "…"}
        out = {}
        for k in value.keys():
            sub = f"({text})[{classad2.quote(k)}]"
            out[k] = typed(sub, safe_eval(sub, my, target), my, target, depth + 1)
        return {"type": "classad", "value": out}
    return {"type": "unsupported", "value": repr(value)}


class AbsTime:
    def __init__(self, secs, offset):
        self.secs, self.offset = secs, offset


def safe_eval(text, my, target):
    try:
        return _eval(text, my, target)
    except UnicodeDecodeError as e:
        # A string that is not UTF-8 (a byte-wise substr, say): the bindings cannot return it, but the
        # exception holds its bytes. Compared as slurm-vm shows them, each bad byte as U+FFFD.
        return e.object.decode("utf-8", "replace")
    except ValueError:
        # An absolute time Python's datetime cannot hold (the year 0, say): read its parts instead.
        if _eval(f"isAbstime({text})", my, target) is True:
            return AbsTime(_eval(f"int({text})", my, target), _eval(f"splitTime({text}).Offset", my, target))
        return classad2.Value.Error
    except Exception:
        # HTCondor's Evaluate() returned false (e.g. an absolute reference with no root): slurm-vm reports ERROR.
        return classad2.Value.Error


def parse_ad(text):
    return classad2.ClassAd(text)


def answer(req):
    rid = req["id"]
    if req["kind"] == "expr":
        try:
            classad2.ExprTree(req["expr"])
            my = parse_ad(req["my"]) if "my" in req else None
            target = parse_ad(req["target"]) if "target" in req else None
        except Exception:
            return {"id": rid, "result": {"type": "parse_error"}}
        if target is not None and my is None:
            target = None
        v = safe_eval(req["expr"], my, target)
        return {"id": rid, "result": typed(req["expr"], v, my, target)}
    try:
        left, right = parse_ad(req["left"]), parse_ad(req["right"])
    except Exception:
        return {"id": rid, "error": "parse_error"}

    def rank(ad, other):
        if "Rank" not in ad:
            return {"type": "undefined"}
        return typed("Rank", safe_eval("Rank", ad, other), ad, other)

    lmr, rml = left.matches(right), right.matches(left)
    # ClassAd.matches() evaluates the *argument's* Requirements: left.matches(right) is right's Requirements.
    return {"id": rid, "left_matches_right": lmr, "right_matches_left": rml, "symmetric_match": lmr and rml,
            "left_rank": rank(left, right), "right_rank": rank(right, left)}
