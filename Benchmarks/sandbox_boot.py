#!/usr/bin/env python3
"""Linux guests on the embedded VMM against QEMU with KVM, side by side on one machine with hardware
virtualization: boot to agent ready for 1 guest and for 4 guests at once, and the VMM's RSS beyond
guest RAM with a booted guest. Targets (issue 18): boot <= 0.5x QEMU's, <= 4 MiB beyond guest RAM.

    sudo python3 Benchmarks/sandbox_boot.py [--runs 3]

Where the host has no vmx/svm (these machines' KVM is PVM) it runs itself in the SVM sandbox
(scripts/sandbox.py: an L1 under QEMU TCG with emulated AMD SVM, 4 vCPUs), where both VMMs use L1's
/dev/kvm. Emulation distorts absolute times, so the ratios from one interleaved run are the result.
The image is `minimal`, built on the host into a scratch catalog first.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The exit status when the SVM sandbox's L1 itself was lost rather than the benchmark failing.
L1_LOST = 75
CLI = os.environ.get("SLURM_VM_BIN", os.path.join(REPO, ".build", "release", "slurm-vm"))


def has_hardware_virtualization():
    flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "").split()
    return "vmx" in flags or "svm" in flags


def vm(args, catalog, run_dir, check=True):
    env = dict(os.environ, SLURM_VM_CATALOG=catalog, SLURM_VM_RUNDIR=run_dir)
    r = subprocess.run([CLI] + args, env=env, capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        raise SystemExit(f"sandbox_boot: slurm-vm {' '.join(args)} failed:\n{r.stderr}")
    return r


# Attempts per boot. Guests booting at once in emulated SVM sometimes die or hang before their agent
# answers, on QEMU-KVM as on our VMM (the flake of docs/vmm.md); such an attempt is reported and run
# again. A regression fails every attempt, and so the run.
BOOT_ATTEMPTS = 3
# L1 sessions per benchmark. L1 itself is sometimes lost under the same load (hung or reset); every
# measurement is kept in a file on the host as it is made, so a fresh L1 goes on from there.
SESSIONS = 3


def boot(backend, count, catalog, run_dir, flaked):
    """Seconds from `vm run` to every agent ready (the CLI's own clock, --verbose)."""
    accel = ["--accel", "kvm"] if backend == "qemu" else []
    args = ["vm", "run", "--verbose", "--backend", backend] + accel + ["--image", "minimal", "--count", str(count),
            "--cpus", f"0-{count - 1}", "--boot-timeout", "60", "--", "true"]
    for attempt in range(1, BOOT_ATTEMPTS + 1):
        r = vm(args, catalog, run_dir, check=False)
        if r.returncode == 0:
            break
        print(f"*** sandbox_boot: {backend}, {count} guest(s): attempt {attempt} of {BOOT_ATTEMPTS} failed "
              f"(the emulated-SVM flake if a later attempt boots):\n{r.stderr}", file=sys.stderr, flush=True)
        if attempt == BOOT_ATTEMPTS:
            raise SystemExit(f"sandbox_boot: slurm-vm {' '.join(args)} failed {BOOT_ATTEMPTS} times in a row")
        flaked(f"{backend}, {count} guest(s)")
    m = re.search(r"\[\s*([0-9.]+) s\] every agent ready", r.stderr)
    if not m:
        raise SystemExit(f"sandbox_boot: no 'every agent ready' in:\n{r.stderr}")
    return float(m.group(1))


def rss_beyond_ram(backend, catalog, run_dir):
    """MiB of the VMM process's RSS beyond its guest's RAM, with a booted guest idling (kept)."""
    accel = ["--accel", "kvm"] if backend == "qemu" else []
    gid = vm(["vm", "run", "--backend", backend] + accel + ["--image", "minimal", "--cpus", "0", "--keep"], catalog, run_dir).stdout.strip()
    try:
        g = next(x for x in json.loads(vm(["vm", "ls", "--json"], catalog, run_dir).stdout) if x["id"] == gid)
        # Let the guest settle after boot.
        vm(["vm", "exec", gid, "--", "sleep", "2"], catalog, run_dir)
        kb = {}
        for line in open(f"/proc/{g['pid']}/status"):
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                kb[k] = int(v.split()[0])
        return (kb["VmRSS"] - g["memory_mb"] * 1024) / 1024, g["memory_mb"]
    finally:
        vm(["vm", "stop", gid], catalog, run_dir, check=False)


def inside(runs, catalog, results):
    """Makes the measurements `results` (a JSON-lines file kept on the host) lacks, appending each as it
    is made, then prints the table from all of them."""
    done = {}
    if os.path.exists(results):
        for line in open(results):
            if line.strip():
                e = json.loads(line)
                done.setdefault(e["key"], []).append(e["value"])

    def keep(key, value):
        with open(results, "a") as f:
            f.write(json.dumps({"key": key, "value": value}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        done.setdefault(key, []).append(value)

    run_dir = tempfile.mkdtemp(prefix="sandbox-boot-")
    cpus = os.cpu_count() or 1
    counts = [1, 4] if cpus >= 4 else [1]
    for i in range(runs):  # interleaved, so drift hits both alike
        for c in counts:
            for b in ("embedded", "qemu"):
                if f"boot/{i}/{c}/{b}" not in done:
                    keep(f"boot/{i}/{c}/{b}", boot(b, c, catalog, run_dir, lambda what: keep("flaked", what)))
    for b in ("embedded", "qemu"):
        if f"rss/{b}" not in done:
            keep(f"rss/{b}", rss_beyond_ram(b, catalog, run_dir))
    m = statistics.median
    print(f"Linux (minimal, Debian cloud kernel) boot to agent ready, median of {runs}, in one machine "
          f"with {'emulated ' if os.path.exists('/proc/sys/kernel/modprobe') and open('/proc/sys/kernel/modprobe').read().strip() == '/modprobe' else ''}"
          f"hardware virtualization, {cpus} CPUs")
    print("| measure | embedded | QEMU (KVM, microvm) | ratio | target |")
    print("|---|---|---|---|---|")
    for c in counts:
        e = m(done[f"boot/{i}/{c}/embedded"][0] for i in range(runs))
        q = m(done[f"boot/{i}/{c}/qemu"][0] for i in range(runs))
        print(f"| boot to agent ready, {c} guest{'s at once' if c > 1 else ''} | {e:.2f} s | {q:.2f} s | {e / q:.2f}x | <= 0.5x |")
    (e_rss, mem), (q_rss, _) = done["rss/embedded"][0], done["rss/qemu"][0]
    print(f"| RSS beyond guest RAM ({mem} MiB), booted guest | {e_rss:.1f} MiB | {q_rss:.1f} MiB | {e_rss / q_rss:.2f}x | <= 4 MiB |")
    if done.get("flaked"):
        print(f"boots that failed once and were run again (the emulated-SVM flake): {len(done['flaked'])}: {'; '.join(done['flaked'])}")
    shutil.rmtree(run_dir, ignore_errors=True)


def main():
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--runs", type=int, default=3)
    a.add_argument("--catalog", help="a catalog holding `minimal` (default: one built now)")
    a.add_argument("--results", help=argparse.SUPPRESS)  # the measurements so far (the host's, inside L1)
    args = a.parse_args()
    catalog = args.catalog
    scratch = None
    if not catalog:
        scratch = tempfile.mkdtemp(prefix="sandbox-boot-catalog-")
        catalog = os.path.join(scratch, "catalog")
        r = subprocess.run([CLI, "image", "build", os.path.join(REPO, "Images", "minimal.toml")],
                           env=dict(os.environ, SLURM_VM_CATALOG=catalog), capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"sandbox_boot: building minimal failed:\n{r.stderr}")
    try:
        if has_hardware_virtualization():
            results = args.results
            if not results:
                scratch = scratch or tempfile.mkdtemp(prefix="sandbox-boot-")
                results = os.path.join(scratch, "results.jsonl")
            inside(args.runs, catalog, results)
            return
        sys.path.insert(0, os.path.join(REPO, "scripts"))
        import sandbox
        why = sandbox.available()
        if why:
            raise SystemExit(f"sandbox_boot: no vmx/svm here and no SVM sandbox: {why}")
        os.chdir(REPO)
        out = tempfile.mkdtemp(prefix="sandbox-boot-out-")
        results = os.path.join(out, "results.jsonl")
        # A whole run takes 4-5 minutes here. An L1 that hangs (seen: an RCU stall on L1's CPU 0 while
        # QEMU-KVM booted 4 guests) is cut off after 6, and the next L1 goes on from what was measured.
        for session in range(1, SESSIONS + 1):
            rc, _ = sandbox.run(["python3", os.path.abspath(__file__), "--runs", str(args.runs), "--catalog", catalog,
                                 "--results", results], out=out, cpus=4, env_names=("SLURM_VM_BIN",), timeout=360)
            if rc == 0:
                break
            if rc != 125:
                raise SystemExit(f"sandbox_boot: the benchmark in the SVM sandbox failed ({rc})")
            # L1 itself was lost (hung and cut off, or reset): the emulated-SVM flake of docs/vmm.md,
            # told apart from a failure of the benchmark (scripts/test.sh treats them differently).
            kept = sum(1 for _ in open(results)) if os.path.exists(results) else 0
            print(f"*** sandbox_boot: L1 was lost (sandbox status {rc}) in session {session} of {SESSIONS}, "
                  f"with {kept} measurement(s) kept; see the console above ***", file=sys.stderr, flush=True)
        else:
            sys.exit(L1_LOST)
        shutil.rmtree(out, ignore_errors=True)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
