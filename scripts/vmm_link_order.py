#!/usr/bin/env python3
"""Regenerates Sources/slurm-vm-vmm/link-order.txt: the symbols slurm-vm-vmm touches from start to a
running guest and on to its exit, in first-touch order, for lld's --symbol-ordering-file.

Why: the VMM is a static executable whose text (Swift runtime, stdlib, glibc, ours) is 6 MiB, of which a
VM touches a few hundred functions spread over all of it. The kernel maps file pages 64 KiB at a time
around each fault (fault-around), so every scattered function costs 16 pages of RSS in every VMM on the
node. Placed together, the touched code and data fill a few dense windows instead.

How: link with the current order, run the benchmark's tiny guests (Benchmarks/vmm/tiny.S: one that idles,
one that exits) under `perf record -e page-faults -d`, add the symbol behind every fault in the binary's
image that is not yet listed, and repeat. A fault only shows the first function touched in a 64 KiB
window, so each round uncovers functions the previous layout hid. It keeps the order whose runs
faulted in the fewest 64 KiB windows, and stops when --patience rounds in a row did not beat it (the runtime's
scans of its conformance and type tables keep yielding "new" data symbols that no order can save) or
after --rounds. The order is a layout hint only: a function missing from it (new code) is still
linked, just placed among the cold ones.

Needs root (perf, /dev/kvm), perf and a release build (swift build -c release --product slurm-vm-vmm),
whose link command it reuses from .build/release.yaml. Check the result with Benchmarks/vmm.py.
"""
import argparse
import bisect
import json
import os
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORDER = os.path.join(REPO, "Sources", "slurm-vm-vmm", "link-order.txt")
PRODUCT = os.path.join(REPO, ".build", "x86_64-unknown-linux-gnu", "release", "slurm-vm-vmm")


def link_command():
    """The argument list SwiftPM links slurm-vm-vmm with (its llbuild manifest is YAML whose args are JSON)."""
    text = open(os.path.join(REPO, ".build", "release.yaml")).read()
    key = '"C.slurm-vm-vmm-x86_64-unknown-linux-gnu-release.exe":'
    if key not in text:
        raise SystemExit("vmm_link_order: no release link step for slurm-vm-vmm; run swift build -c release --product slurm-vm-vmm")
    rest = text[text.index(key):]
    args = rest[rest.index("args: [") + 6:]
    return json.loads(args[:args.index("]\n") + 1])


def link(base, order, out):
    args = [out if a == PRODUCT else a for a in base]
    # the manifest already carries the order flags once Package.swift has them; point them at the candidate
    for i in reversed(range(len(args) - 1)):
        if args[i] == "-Xlinker" and args[i + 1].startswith("--symbol-ordering-file="):
            del args[i:i + 2]
    args += ["-use-ld=lld", "-Xlinker", "--symbol-ordering-file=" + order, "-Xlinker", "--no-warn-symbol-ordering"]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit("vmm_link_order: link failed:\n" + r.stderr[-3000:])


def guests(work):
    out = {}
    for v in ("idle", "exit"):
        elf = os.path.join(work, f"tiny-{v}.elf")
        subprocess.run(["cc", *(["-DEXIT"] if v == "exit" else []), "-nostdlib", "-static", "-no-pie",
                        "-Wl,-T," + os.path.join(REPO, "Benchmarks", "vmm", "tiny.ld"), "-Wl,--build-id=none", "-o", elf,
                        os.path.join(REPO, "Benchmarks", "vmm", "tiny.S")], check=True)
        out[v] = elf
    return out


def fault_addresses(binary, g, work):
    """Data addresses of every page fault in a run of each guest (the idle one stopped once running)."""
    addrs = []
    data = os.path.join(work, "pf.data")
    for v in ("idle", "exit"):
        ready = os.path.join(work, "ready")
        if os.path.exists(ready):
            os.unlink(ready)
        cmd = [binary, "--kernel", g[v], "--mem", "256"] + (["--ready", ready] if v == "idle" else ["--report", os.path.join(work, "report")])
        p = subprocess.Popen(["perf", "record", "-q", "-e", "page-faults", "-c", "1", "-d", "-o", data, "--"] + cmd,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if v == "idle":
            end = time.time() + 20
            while not os.path.exists(ready) and time.time() < end:
                time.sleep(0.02)
            time.sleep(0.5)
            subprocess.run(["pkill", "-f", "--", f"--kernel {g[v]}"])
        p.wait(timeout=60)
        out = subprocess.run(["perf", "script", "-i", data, "-F", "addr"], capture_output=True, text=True, check=True).stdout
        addrs += [int(x, 16) for x in out.split()]
    return addrs


def image_range(binary):
    lo, hi = None, 0
    for line in subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True, check=True).stdout.splitlines():
        f = line.split()
        if f and f[0] == "LOAD":
            va, memsz = int(f[2], 16), int(f[5], 16)
            lo = va if lo is None else min(lo, va)
            hi = max(hi, va + memsz)
    return lo, hi


def symbols(binary):
    s = []
    for line in subprocess.run(["nm", "-n", "--defined-only", binary], capture_output=True, text=True, check=True).stdout.splitlines():
        f = line.split(None, 2)
        if len(f) == 3:
            s.append((int(f[0], 16), f[2]))
    return s


def main():
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--rounds", type=int, default=40)
    a.add_argument("--patience", type=int, default=10, help="rounds without fewer windows before it stops")
    a.add_argument("--fresh", action="store_true", help="start from an empty order instead of the current file")
    args = a.parse_args()
    base = link_command()
    work = tempfile.mkdtemp(prefix="vmm-link-order-")
    g = guests(work)
    order = [] if args.fresh or not os.path.exists(ORDER) else [l.strip() for l in open(ORDER) if l.strip()]
    listed = set(order)
    cand, binary = os.path.join(work, "order.txt"), os.path.join(work, "slurm-vm-vmm")
    best, best_windows, stale = list(order), None, 0
    for r in range(args.rounds):
        open(cand, "w").write("".join(s + "\n" for s in order))
        link(base, cand, binary)
        lo, hi = image_range(binary)
        syms = symbols(binary)
        starts = [s[0] for s in syms]
        tried, new, windows = list(order), 0, set()
        for addr in fault_addresses(binary, g, work):
            i = bisect.bisect_right(starts, addr) - 1
            if not lo <= addr < hi:
                continue
            windows.add(addr >> 16)
            if i >= 0 and syms[i][1] not in listed:
                listed.add(syms[i][1])
                order.append(syms[i][1])
                new += 1
        print(f"round {r}: {len(tried)} listed, faults in {len(windows)} windows of 64 KiB; {new} new", flush=True)
        if best_windows is None or len(windows) < best_windows:
            best, best_windows, stale = tried, len(windows), 0
        else:
            stale += 1
        if new == 0 or stale == args.patience:
            break
    tmp = ORDER + ".tmp"
    open(tmp, "w").write("".join(s + "\n" for s in best))
    os.rename(tmp, ORDER)
    # SwiftPM does not track the order file: remove the product so the next build links it again.
    if os.path.exists(PRODUCT):
        os.unlink(PRODUCT)
    print(f"wrote {ORDER} ({len(best)} symbols, {best_windows} windows); rebuild (swift build -c release "
          f"--product slurm-vm-vmm) and check with Benchmarks/vmm.py")


if __name__ == "__main__":
    main()
