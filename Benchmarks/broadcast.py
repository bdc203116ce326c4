#!/usr/bin/env python3
"""Image distribution to N nodes, side by side in one run on a namespace testbed (scripts/netns_testbed.py):
the benchmark's own pipelined chain (the baseline), and slurm-vm's schedules -- a central server, a
store-and-forward binomial tree, the binomial pipeline, the two trees, the relay, and auto (the default:
the relay or the two trees, as the ranks choose from the image; its cells say which) -- all schedules of
the same engine (`slurm-vm broadcast --schedule`), so only the schedule differs. Each time is the moment the last node holds a verified copy, as a multiple
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
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from netns_testbed import QUEUES, Testbed  # noqa: E402

CHAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chain_relay.py")
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

    def finish(self):
        self.stop.set()
        self.thread.join()

    def busy(self, t0, t1):
        """Fraction of all CPUs busy between t0 and t1."""
        self.finish()
        a = min(self.samples, key=lambda s: abs(s[0] - t0))
        b = min(self.samples, key=lambda s: abs(s[0] - t1))
        return (b[1] - a[1]) / max(1, b[2] - a[2])


def command(kind, rank, tb, src, dst, chunk, port, t0):
    """The argv of one rank: slurm-vm's engine for its schedules, the benchmark's own relay for the chain."""
    nodes = ",".join(tb.addr(i) for i in range(tb.n))
    if kind == "chain":
        argv = [sys.executable, CHAIN, "--rank", str(rank), "--nodes", nodes, "--port", str(port), "--json", "--start-at", f"{t0:.3f}"]
        return argv + (["--src", src] if rank == 0 else ["--dst", dst])
    argv = [BIN, "broadcast", "--rank", str(rank), "--nodes", nodes, "--port", str(port), "--schedule", kind,
            "--chunk-size", chunk, "--json", "--timeout", "120", "--start-at", f"{t0:.3f}"]
    return argv + (["--src", src, "--manifest", src + ".manifest"] if rank == 0 else ["--dst", dst])


def transfer(tb, kind, src, workdir, chunk, env=None):
    """One broadcast on the testbed; returns (seconds until the last verified copy, per-rank reports,
    the start instant, the CPU sampler)."""
    procs = []
    cpu = CPUSampler()
    # Every rank begins at the same instant (a parallel launcher's start), not as spawned one by one.
    t0 = time.time() + 0.3 + 0.06 * tb.n
    errs = []
    for i in range(tb.n):
        argv = command(kind, i, tb, src, os.path.join(workdir, f"copy{i}"), chunk, 17500, t0)
        # stderr to a file, not a pipe: the ranks are read one after another, and a traced rank writing
        # more than a pipe holds would block, mid-transfer, until the harness reached it.
        errs.append(tempfile.TemporaryFile(mode="w+", dir=workdir))
        procs.append(tb.popen(i, argv, stdout=subprocess.PIPE, stderr=errs[-1], text=True,
                              env=dict(os.environ, **(env or {}))))
    reports = []
    for i, p in enumerate(procs):
        out, _ = p.communicate(timeout=900)
        errs[i].seek(0)
        err = errs[i].read()
        errs[i].close()
        if p.returncode != 0:
            reports.append({"rank": i, "error": (err.strip() or out.strip())[-400:], "code": p.returncode})
        else:
            rep = json.loads(out.strip().splitlines()[-1])
            if "done_unix" in rep:   # the chain's copy is complete and synced; the harness verifies it afterwards
                rep["verified_unix"] = rep["done_unix"]
            if err.strip():
                rep["trace"] = err
            reports.append(rep)
    ends = [r["verified_unix"] for r in reports[1:] if "verified_unix" in r]
    return (max(ends) - t0 if ends else float("nan")), reports, t0, cpu


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", default="2,4,8,16")
    ap.add_argument("--sizes", default="64,256", help="MiB")
    ap.add_argument("--mbit", type=int, default=200)
    ap.add_argument("--chunk", default="auto", help="slurm-vm's --chunk-size (default auto: 1M, smaller for images under 256 MiB)")
    ap.add_argument("--kinds", default="chain,central,binomial,pipeline",
                    help="chain (the benchmark's own relay, the baseline), and slurm-vm's schedules central, binomial, pipeline, twotree, relay, auto")
    ap.add_argument("--slow", action="store_true", help="also: one node at a quarter of the rate (slurm-vm's pulling schedules)")
    ap.add_argument("--slow-node", type=int, metavar="R",
                    help="with --slow, which node is slow (default N/2, a leaf of both trees; 2 forwards in one)")
    ap.add_argument("--slow-chain", action="store_true",
                    help="with --slow, the chain too (everyone behind the slow node gets its rate: about 4.2x, 45 s per run at 256 MiB)")
    ap.add_argument("--queues", default="prio", help=f"port queues to run, of {','.join(QUEUES)} (scripts/netns_testbed.py)")
    ap.add_argument("--congestion", default="cubic",
                    help="the nodes' TCP congestion controls, comma-separated: cubic (Debian's default), bbr; 'host' keeps the host's")
    ap.add_argument("--dir", default="/var/tmp/slurm-vm-bench",
                    help="where the image and the copies go, comma-separated for several: a disk filesystem, as a node's cache would be; /dev/shm for tmpfs")
    ap.add_argument("--runs", type=int, default=1, help="runs of each cell; the table shows the median, the JSON every run")
    ap.add_argument("--baselines-in-first-variant-only", action="store_true",
                    help="run central and binomial only in the first variant (they take minutes and do not depend on the queue)")
    ap.add_argument("--json-out", metavar="FILE", help="also write every run's row to FILE (what `slurm-vm bench broadcast-sim --calibrate` reads)")
    ap.add_argument("--trace", metavar="DIR", help="keep SLURM_VM_BROADCAST_TRACE logs of every rank of slurm-vm's schedules in DIR")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("SKIPPED: the broadcast benchmark needs root (network namespaces and tc)")
    kinds = a.kinds.split(",")
    variants = [(q, c, d) for d in a.dir.split(",") for q in a.queues.split(",") for c in a.congestion.split(",")]
    rows = []
    print(f"broadcast benchmark: {a.mbit} Mbit/s per node port and direction, chunks {a.chunk}, {a.runs} run(s) per cell (median shown); "
          f"time until the last node holds a verified copy, as a multiple of size/rate", flush=True)
    print("| queue | TCP | copies on | nodes | size | " + " | ".join(kinds) + " |")
    print("|---|---|---|---|---|" + "---|" * len(kinds))
    bad = 0
    notes = []
    for vi, (queue, cc, base) in enumerate(variants):
        shutil.rmtree(base, ignore_errors=True)
        os.makedirs(base)
        fs = subprocess.run(["stat", "-f", "-c", "%T", base], stdout=subprocess.PIPE, text=True).stdout.strip().replace("ext2/ext3", "ext4")
        label = f"| {queue} | {cc} | {fs} |"
        these = [k for k in kinds if vi == 0 or not a.baselines_in_first_variant_only or k not in ("central", "binomial")]
        for size in [int(s) for s in a.sizes.split(",")]:
            src = os.path.join(base, f"image-{size}")
            with open(src, "wb") as f:
                for _ in range(size):
                    f.write(os.urandom(1 << 20))
            digest = file_digest(src)
            # The root's manifest (chunk hashes), computed once per image as the catalog does and reused by
            # every run; what computing it costs is printed, since a first broadcast of an image pays it.
            began = time.time()
            subprocess.run([BIN, "broadcast", "--rank", "0", "--nodes", "127.0.0.1", "--port", "17599", "--src", src,
                            "--chunk-size", a.chunk, "--manifest", src + ".manifest"], check=True, stdout=subprocess.DEVNULL)
            if vi == 0:
                notes.append(f"{size} MiB: the root's manifest was computed once, in {time.time() - began:.2f} s with the process start, and reused")
            limit = size * (1 << 20) * 8 / (a.mbit * 1e6)
            for n in [int(x) for x in a.nodes.split(",")]:
                cells = []
                with Testbed(n, mbit=a.mbit, congestion=None if cc == "host" else cc, queue=queue) as tb:
                    for kind in kinds:
                        if kind not in these:
                            cells.append("—")
                            continue
                        ratios, ran = [], set()
                        for run in range(a.runs):
                            secs, reports, _, busy, problem = one_run(a, tb, kind, src, base, digest, f"{kind}-{queue}-{cc}-{fs}-{n}-{size}-{run}")
                            if problem:
                                bad += 1
                                print(f"  {kind} N={n}: {problem}", file=sys.stderr)
                            ratios.append(float("nan") if problem else secs / limit)
                            chosen = schedule_of(kind, reports)
                            ran.add(chosen)
                            rows.append({"queue": queue, "congestion": cc, "fs": fs, "kind": kind, "schedule": chosen, "nodes": n, "mib": size, "chunk": chunk_of(reports, a.chunk),
                                         "run": run, "seconds": secs, "ratio": secs / limit, "cpu_busy": busy,
                                         "sent": sum(r.get("sent", 0) for r in reports),
                                         "repairs": sum(r.get("repairs", 0) for r in reports),
                                         "duplicates": sum(r.get("duplicates", 0) for r in reports)})
                        cells.append(cell(ratios, limit) + (f" {'/'.join(sorted(ran))}" if kind == "auto" else ""))
                print(f"{label} {n} | {size} MiB | " + " | ".join(cells) + " |", flush=True)
            if a.slow:
                bad += slow_row(a, queue, cc, label=label, kinds=kinds, base=base, src=src, digest=digest, limit=limit,
                                size=size, rows=rows, fs=fs)
            os.unlink(src)
            os.unlink(src + ".manifest")
        shutil.rmtree(base, ignore_errors=True)
    for n in notes:
        print(n)
    print(json.dumps(rows))
    if a.json_out:
        with open(a.json_out + ".tmp", "w") as f:
            json.dump(rows, f)
        os.replace(a.json_out + ".tmp", a.json_out)
    sys.exit(1 if bad else 0)


def slow_row(a, queue, cc, label, kinds, base, src, digest, limit, size, rows, fs):
    """The largest N with node N/2 at a quarter of the rate: how long the others take (from the common
    start), for the pulling schedules (and the chain with --slow-chain)."""
    n = max(int(x) for x in a.nodes.split(","))
    slow = n // 2 if a.slow_node is None else a.slow_node
    if not 0 < slow < n:
        sys.exit(f"--slow-node {slow}: give a receiving node, 1 to {n - 1}")
    cells, bad = [], 0
    with Testbed(n, mbit=a.mbit, slow={slow: a.mbit // 4}, congestion=None if cc == "host" else cc, queue=queue) as tb:
        for kind in kinds:
            if kind not in ("pipeline", "twotree", "relay", "auto") and not (kind == "chain" and a.slow_chain):
                cells.append("—")
                continue
            others, slows, ran = [], [], set()
            for run in range(a.runs):
                _, reports, t0, _, problem = one_run(a, tb, kind, src, base, digest, f"slow-{kind}-{queue}-{cc}-{fs}-{n}-{size}-{run}")
                if problem:
                    bad += 1
                    print(f"  slow {kind}: {problem}", file=sys.stderr)
                rest = max(r.get("verified_unix", float("nan")) for r in reports[1:] if r["rank"] != slow) - t0
                slow_end = reports[slow].get("verified_unix", float("nan")) - t0
                others.append(float("nan") if problem else rest / limit)
                slows.append(slow_end / limit)
                ran.add(schedule_of(kind, reports))
                rows.append({"queue": queue, "congestion": cc, "fs": fs, "kind": kind, "schedule": schedule_of(kind, reports), "nodes": n, "mib": size, "chunk": chunk_of(reports, a.chunk), "slow_node": slow,
                             "run": run, "others_ratio": rest / limit, "slow_ratio": slow_end / limit})
            c = cell(others, limit)
            chose = f" {'/'.join(sorted(ran))}" if kind == "auto" else ""
            cells.append(c if c == "FAILED" else f"the others {c}, the slow node {median(slows):.2f}×{chose}")
    print(f"{label} {n}, node {slow} at {a.mbit // 4} Mbit/s | {size} MiB | " + " | ".join(cells) + " |", flush=True)
    return bad


def one_run(a, tb, kind, src, base, digest, name):
    """One broadcast into a fresh directory, every copy hashed; returns (seconds until the last verified
    copy, per-rank reports, the start instant, CPU busy meanwhile, what went wrong or None)."""
    work = os.path.join(base, f"{kind}-{tb.n}")
    os.makedirs(work)
    env = {"SLURM_VM_BROADCAST_TRACE": "1"} if a.trace and kind != "chain" else None
    secs, reports, t0, cpu = transfer(tb, kind, src, work, a.chunk, env)
    busy = cpu.busy(t0, t0 + secs)
    errors = [r for r in reports if "error" in r]
    copies = [os.path.join(work, f"copy{i}") for i in range(1, tb.n)]
    wrong = [c for c in copies if not os.path.exists(c) or file_digest(c) != digest]
    if a.trace and kind != "chain":
        keep_traces(a.trace, name, reports, t0)
    shutil.rmtree(work)
    return secs, reports, t0, busy, (f"errors {errors} wrong copies {wrong}" if errors or wrong else None)


def chunk_of(reports, asked):
    """The chunk size a run of slurm-vm used (what auto chose), as "256K"; what was asked otherwise."""
    size = next((r["chunk_size"] for r in reports if "chunk_size" in r), None)
    return f"{size >> 10}K" if size else asked


def schedule_of(kind, reports):
    """The schedule a run of slurm-vm ran (what auto chose, as every rank reports it), or the kind."""
    return next((r["schedule"] for r in reports if "schedule" in r), kind)


def cell(ratios, limit):
    """The median of the runs' ratios with its time, and their range when there are several."""
    m = median(ratios)
    spread = f", {min(ratios):.2f}–{max(ratios):.2f}" if len(ratios) > 1 else ""
    return f"{m:.2f}× ({m * limit:.1f} s{spread})" if m == m else "FAILED"


def keep_traces(where, name, reports, t0):
    """Each rank's trace (its actions with their instants) as <where>/<name>/rank-R.log, the start first."""
    d = os.path.join(where, name)
    os.makedirs(d, exist_ok=True)
    for r in reports:
        with open(os.path.join(d, f"rank-{r['rank']}.log"), "w") as f:
            f.write(f"start {t0:.4f}\n" + r.get("trace", r.get("error", "")))


if __name__ == "__main__":
    main()
