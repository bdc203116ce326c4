"""Runs generated requests through slurm-vm and through HTCondor's library and lists disagreements.

    python3 compare.py --count 2000 --seed 1 [--binary PATH] [--show 20]
"""
import argparse
import json
import math
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
import gen  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def default_binary():
    if os.environ.get("SLURM_VM_BIN"):
        return os.environ["SLURM_VM_BIN"]
    for cfg in ("release", "debug"):
        p = os.path.join(ROOT, ".build", cfg, "slurm-vm")
        if os.path.exists(p):
            return p
    raise SystemExit("build slurm-vm first (swift build)")


def same(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return a == b and type(a) is type(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


class Oracle:
    """HTCondor's library in a worker process, restarted if it crashes."""

    def __init__(self):
        self.proc = None
        self.crashed = []

    def start(self):
        here = os.path.dirname(os.path.abspath(__file__))
        self.proc = subprocess.Popen([sys.executable, os.path.join(here, "oracle_worker.py")], cwd=here,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def answer(self, req):
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            self.crashed.append(req)
            self.proc = None
            return None
        return json.loads(line)

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()


def answers(requests, binary, crashed=None):
    """(request, HTCondor's answer or None where its library crashed, slurm-vm's answer or None) for each."""
    data = "".join(json.dumps(r) + "\n" for r in requests)
    p = subprocess.run([binary, "classad", "eval", "--jsonl"], input=data.encode(), capture_output=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"slurm-vm failed ({p.returncode}): {p.stderr.decode()[-2000:]}")
    ours = {}
    for line in p.stdout.decode().splitlines():
        o = json.loads(line)
        ours[o["id"]] = o
    out = []
    orc = Oracle()
    for r in requests:
        out.append((r, orc.answer(r), ours.get(r["id"])))
    orc.close()
    if crashed is not None:
        crashed.extend(orc.crashed)
    return out


def run(requests, binary, crashed=None):
    """The requests on which slurm-vm and HTCondor's library disagree, as (request, theirs, ours)."""
    return [(r, theirs, mine) for r, theirs, mine in answers(requests, binary, crashed)
            if theirs is not None and (mine is None or not same(mine, theirs))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--binary", default=None)
    ap.add_argument("--show", type=int, default=15)
    a = ap.parse_args()
    g = gen.Gen(a.seed)
    reqs = [g.request(i) for i in range(a.count)]
    crashed = []
    mm = run(reqs, a.binary or default_binary(), crashed)
    for r in crashed:
        print("HTCondor's library crashed on:", json.dumps(r))
    for r, theirs, mine in mm[: a.show]:
        print("REQ   ", json.dumps(r))
        print("HTC   ", json.dumps(theirs))
        print("OURS  ", json.dumps(mine))
        print()
    print(f"{len(reqs) - len(mm)} agreed, {len(mm)} disagreed")
    sys.exit(1 if mm else 0)


if __name__ == "__main__":
    main()
