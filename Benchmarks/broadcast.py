#!/usr/bin/env python3
"""Image distribution to N nodes, side by side in one run on a namespace testbed (scripts/netns_testbed.py):
a central server (every node receives from one), a store-and-forward binomial tree, and slurm-vm's
binomial pipeline -- all three are schedules of the same engine (`slurm-vm broadcast --schedule`), so
only the schedule differs. Each time is the moment the last node holds a verified copy, as a multiple
of the physical limit size/rate; every copy's SHA-256 is checked independently afterwards.

    sudo python3 Benchmarks/broadcast.py [--nodes 2,4,8,16] [--sizes 64,256] [--mbit 200] [--slow]
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from netns_testbed import Testbed  # noqa: E402

BIN = os.environ.get("SLURM_VM_BIN") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".build", "release", "slurm-vm")


def file_digest(path):
    out = subprocess.run(["sha256sum", path], check=True, stdout=subprocess.PIPE, text=True).stdout
    return "sha256:" + out.split()[0]


class CPUSampler:
    """The machine's CPU use, sampled from /proc/stat every 50 ms, so a run can say how busy the CPUs were
    between two instants (softirq, the shapers and the kernel's copies included: all nodes share them)."""

    def __init__(self):
        self.samples = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            idle = v[3] + v[4]
            self.samples.append((time.time(), sum(v) - idle, sum(v)))
            self.stop.wait(0.05)

    def busy(self, t0, t1):
        """Fraction of all CPUs busy between t0 and t1."""
        self.stop.set()
        self.thread.join()
        a = min(self.samples, key=lambda s: abs(s[0] - t0))
        b = min(self.samples, key=lambda s: abs(s[0] - t1))
        return (b[1] - a[1]) / max(1, b[2] - a[2])


def transfer(tb, kind, src, workdir, chunk, extra=None):
    """One broadcast on the testbed; returns (seconds until the last verified copy, per-rank reports,
    the start instant, the CPU sampler)."""
    nodes = ",".join(tb.addr(i) for i in range(tb.n))
    procs = []
    cpu = CPUSampler()
    # Every rank begins at the same instant (a parallel launcher's start), not as spawned one by one.
    t0 = time.time() + 0.3 + 0.06 * tb.n
    for i in range(tb.n):
        argv = [BIN, "broadcast", "--rank", str(i), "--nodes", nodes, "--port", "17500", "--schedule", kind,
                "--chunk-size", chunk, "--json", "--timeout", "120", "--start-at", f"{t0:.3f}"]
        argv += ["--src", src, "--manifest", src + ".manifest"] if i == 0 else ["--dst", os.path.join(workdir, f"copy{i}")]
        argv += (extra or {}).get(i, [])
        procs.append(tb.popen(i, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    reports = []
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=900)
        if p.returncode != 0:
            reports.append({"rank": i, "error": (err.strip() or out.strip())[-400:], "code": p.returncode})
        else:
            reports.append(json.loads(out.strip().splitlines()[-1]))
    ends = [r["verified_unix"] for r in reports[1:] if "verified_unix" in r]
    return (max(ends) - t0 if ends else float("nan")), reports, t0, cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", default="2,4,8,16")
    ap.add_argument("--sizes", default="64,256", help="MiB")
    ap.add_argument("--mbit", type=int, default=200)
    ap.add_argument("--chunk", default="1M")
    ap.add_argument("--kinds", default="central,binomial,pipeline")
    ap.add_argument("--slow", action="store_true", help="also: one node at a quarter of the rate (pipeline)")
    ap.add_argument("--dir", default="/var/tmp/slurm-vm-bench",
                    help="where the image and the copies go: a disk filesystem, as a node's cache would be")
    ap.add_argument("--congestion", default="cubic",
                    help="the nodes' TCP congestion control: Debian's default, cubic, unless given ('host': the host's own)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("SKIPPED: the broadcast benchmark needs root (network namespaces and tc)")
    shutil.rmtree(a.dir, ignore_errors=True)
    os.makedirs(a.dir)
    kinds = a.kinds.split(",")
    cc = None if a.congestion == "host" else a.congestion
    rows = []
    print(f"broadcast benchmark: {a.mbit} Mbit/s per node port and direction, chunks {a.chunk}, TCP {a.congestion}; "
          f"time until the last node holds a verified copy, as a multiple of size/rate", flush=True)
    print(f"| nodes | size | " + " | ".join(kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    bad = 0
    notes = []
    for size in [int(s) for s in a.sizes.split(",")]:
        src = os.path.join(a.dir, f"image-{size}")
        with open(src, "wb") as f:
            for _ in range(size):
                f.write(os.urandom(1 << 20))
        digest = file_digest(src)
        # The root's manifest (chunk hashes), computed once per image as the catalog does and reused by
        # every run; what computing it costs is printed, since a first broadcast of an image pays it.
        began = time.time()
        subprocess.run([BIN, "broadcast", "--rank", "0", "--nodes", "127.0.0.1", "--port", "17599", "--src", src,
                        "--manifest", src + ".manifest"], check=True, stdout=subprocess.DEVNULL)
        notes.append(f"{size} MiB: the root's manifest was computed once, in {time.time() - began:.2f} s with the process start, and reused")
        limit = size * (1 << 20) * 8 / (a.mbit * 1e6)
        for n in [int(x) for x in a.nodes.split(",")]:
            cells = []
            with Testbed(n, mbit=a.mbit, congestion=cc) as tb:
                for kind in kinds:
                    work = os.path.join(a.dir, f"{kind}-{n}")
                    os.makedirs(work)
                    secs, reports, t0, cpu = transfer(tb, kind, src, work, a.chunk)
                    busy = cpu.busy(t0, t0 + secs)
                    errors = [r for r in reports if "error" in r]
                    copies = [os.path.join(work, f"copy{i}") for i in range(1, n)]
                    wrong = [c for c in copies if not os.path.exists(c) or file_digest(c) != digest]
                    if errors or wrong:
                        bad += 1
                        cells.append("FAILED")
                        print(f"  {kind} N={n}: errors {errors} wrong copies {wrong}", file=sys.stderr)
                    else:
                        cells.append(f"{secs / limit:.2f}× ({secs:.1f} s, CPU {busy:.0%})")
                    rows.append({"kind": kind, "nodes": n, "mib": size, "seconds": secs, "ratio": secs / limit, "cpu_busy": busy,
                                 "sent": sum(r.get("sent", 0) for r in reports),
                                 "sent_from_memory": sum(r.get("sent_from_memory", 0) for r in reports),
                                 "repairs": sum(r.get("repairs", 0) for r in reports),
                                 "duplicates": sum(r.get("duplicates", 0) for r in reports)})
                    shutil.rmtree(work)
            print(f"| {n} | {size} MiB | " + " | ".join(cells) + " |", flush=True)
        if a.slow:
            n = max(int(x) for x in a.nodes.split(","))
            with Testbed(n, mbit=a.mbit, slow={n // 2: a.mbit // 4}, congestion=cc) as tb:
                work = os.path.join(a.dir, f"slow-{n}")
                os.makedirs(work)
                secs, reports, _, cpu = transfer(tb, "pipeline", src, work, a.chunk)
                others = [r["verified_unix"] for r in reports[1:] if "verified_unix" in r and r["rank"] != n // 2]
                slow = [r for r in reports if r["rank"] == n // 2][0]
                t0 = min(others) - min(r["seconds"] for r in reports[1:] if "seconds" in r and r["rank"] != n // 2)
                rest = max(others) - t0
                busy = cpu.busy(t0, max(others))   # while the others receive
                ok = all(os.path.exists(os.path.join(work, f"copy{i}")) and file_digest(os.path.join(work, f"copy{i}")) == digest for i in range(1, n))
                gaps = " | ".join("—" for k in kinds if k != "pipeline")
                print(f"| {n}, node {n // 2} at {a.mbit // 4} Mbit/s | {size} MiB | {gaps} | the others {rest / limit:.2f}× ({rest:.1f} s, "
                      f"CPU {busy:.0%}), the slow node {slow.get('seconds', float('nan')) / limit:.2f}×{'' if ok else ' FAILED'} |", flush=True)
                if not ok:
                    bad += 1
                shutil.rmtree(work)
        os.unlink(src)
        os.unlink(src + ".manifest")
    shutil.rmtree(a.dir, ignore_errors=True)
    for n in notes:
        print(n)
    print(json.dumps(rows))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
