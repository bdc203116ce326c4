#!/usr/bin/env python3
"""The embedded VMM against QEMU -M microvm (KVM), side by side on the same tiny guest (vmm/tiny.S):

  1. process start to guest exit, median of --runs: ours, and QEMU with and without -mem-prealloc
     (ours always preallocates: space sharing); then both preallocating from a 2 MiB hugetlbfs pool
     (ours --hugepages, QEMU -mem-path on a hugetlbfs mount), as an HPC node set up for VMs would;
  2. memory beyond guest RAM with the guest idle (RSS, anonymous and file-backed), guest RAM prefaulted;
  3. prefault time per GiB: transparent huge pages vs 2 MiB hugetlbfs pages (a pool reserved for it).

Ratios are ours / QEMU's. Needs root (or /dev/kvm access) and qemu-system-x86_64.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def vmm_binary():
    for d in ("release", "debug"):
        p = os.path.join(REPO, ".build", d, "slurm-vm-vmm")
        if os.access(p, os.X_OK):
            return p
    raise SystemExit("vmm bench: build slurm-vm-vmm first (swift build -c release --product slurm-vm-vmm)")


def build_guests(work):
    out = {}
    for v in ("exit", "idle"):
        elf = os.path.join(work, f"tiny-{v}.elf")
        flags = ["-DEXIT"] if v == "exit" else []
        subprocess.run(["cc", *flags, "-nostdlib", "-static", "-no-pie", "-Wl,-T," + os.path.join(REPO, "Benchmarks", "vmm", "tiny.ld"),
                        "-Wl,--build-id=none", "-o", elf, os.path.join(REPO, "Benchmarks", "vmm", "tiny.S")], check=True)
        out[v] = elf
    return out


def qemu_cmd(kernel, mem, prealloc, mem_path=None):
    return ["qemu-system-x86_64", "-M", "microvm", "-accel", "kvm", "-cpu", "host,-arch-capabilities", "-m", str(mem),
            "-nodefaults", "-no-user-config", "-nographic", "-display", "none", "-kernel", kernel,
            "-device", "isa-debug-exit,iobase=0x501,iosize=4"] + (["-mem-prealloc"] if prealloc else []) \
        + (["-mem-path", mem_path] if mem_path else [])


def hugetlb_pool(pages, mount_dir):
    """Reserves `pages` 2 MiB pages more and mounts hugetlbfs at mount_dir; returns an undo function."""
    nr = "/proc/sys/vm/nr_hugepages"
    old = int(open(nr).read())
    open(nr, "w").write(str(old + pages))
    if int(open(nr).read()) < old + pages:
        open(nr, "w").write(str(old))
        raise OSError(f"the kernel reserved fewer than {pages} huge pages")
    os.makedirs(mount_dir, exist_ok=True)
    subprocess.run(["mount", "-t", "hugetlbfs", "none", mount_dir], check=True)

    def undo():
        subprocess.run(["umount", mount_dir])
        open(nr, "w").write(str(old))
    return undo


def timed(cmd):
    # A blocking wait: subprocess's wait(timeout=…) polls with growing sleeps (0.5 ms doubling to 50 ms),
    # which rounds a 45 ms run up to 63.5 ms. A timer kills a hung VMM instead.
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killer = threading.Timer(60, p.kill)
    killer.start()
    p.wait()
    killer.cancel()
    timed.reaped = time.clock_gettime(time.CLOCK_MONOTONIC)   # the VMM's report uses the same clock
    return time.perf_counter() - t


def report(path):
    r = {}
    for line in open(path):
        k, _, v = line.strip().partition("=")
        if v:
            r[k] = v
        elif ":" in k:
            a, _, b = k.partition(":")
            r[a] = int(b.rstrip("kB"))
    return r


def status_kb(pid):
    r = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            r[k] = int(v.split()[0])
    return r


def idle_memory(cmd, ready, mem):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.time() + 20
        while time.time() < end and not ready():
            time.sleep(0.02)
        time.sleep(1.0)
        s = status_kb(p.pid)
    finally:
        p.kill()
        p.wait()
    return {k: v / 1024 for k, v in s.items()}, (s["VmRSS"] - mem * 1024) / 1024


def main():
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--runs", type=int, default=10)
    a.add_argument("--mem", type=int, default=256, help="guest MiB")
    a.add_argument("--prefault-gib", type=int, default=1)
    args = a.parse_args()
    if not shutil.which("qemu-system-x86_64"):
        raise SystemExit("vmm bench: qemu-system-x86_64 is not installed (the baseline)")
    vmm = vmm_binary()
    work = tempfile.mkdtemp(prefix="slurm-vm-vmm-bench-")
    try:
        g = build_guests(work)
        rep = os.path.join(work, "report")
        ours, first, teardown, q_pre, q_plain = [], [], [], [], []
        for _ in range(args.runs):   # interleaved, so drift hits both alike
            ours.append(timed([vmm, "--kernel", g["exit"], "--mem", str(args.mem), "--report", rep]))
            r = report(rep)
            assert r.get("end") == "exited with status 0", r
            first.append(int(r["start_to_first_entry_us"]) / 1e6)
            teardown.append(timed.reaped - int(r["report_monotonic_us"]) / 1e6)
            q_pre.append(timed(qemu_cmd(g["exit"], args.mem, True)))
            q_plain.append(timed(qemu_cmd(g["exit"], args.mem, False)))
        m = statistics.median
        print(f"embedded VMM vs QEMU -M microvm (KVM), tiny guest, {args.mem} MiB, median of {args.runs}, {os.path.basename(os.path.dirname(vmm))} build")
        print(f"| measure | embedded | QEMU | ratio |")
        print(f"|---|---|---|---|")
        print(f"| process start to guest exit, memory preallocated | {m(ours)*1e3:.1f} ms | {m(q_pre)*1e3:.1f} ms (-mem-prealloc) | {m(ours)/m(q_pre):.2f}x |")
        print(f"| process start to guest exit, QEMU without prealloc | {m(ours)*1e3:.1f} ms | {m(q_plain)*1e3:.1f} ms | {m(ours)/m(q_plain):.2f}x |")
        print(f"| process start to first guest instruction | {m(first)*1e3:.1f} ms | — | — |")
        print(f"| guest exit reported to the VMM process reaped (VM teardown) | {m(teardown)*1e3:.1f} ms | — | — |")
        try:
            undo = hugetlb_pool(args.mem // 2 * 2 + 16, os.path.join(work, "hugetlbfs"))
            try:
                h_ours, h_q = [], []
                for _ in range(args.runs):
                    h_ours.append(timed([vmm, "--kernel", g["exit"], "--mem", str(args.mem), "--hugepages", "--report", rep]))
                    assert report(rep).get("end") == "exited with status 0"
                    h_q.append(timed(qemu_cmd(g["exit"], args.mem, True, os.path.join(work, "hugetlbfs"))))
                print(f"| process start to guest exit, both preallocating from hugetlbfs | {m(h_ours)*1e3:.1f} ms | {m(h_q)*1e3:.1f} ms "
                      f"(-mem-path, -mem-prealloc) | {m(h_ours)/m(h_q):.2f}x |")
            finally:
                undo()
        except (OSError, subprocess.CalledProcessError, AssertionError) as e:
            print(f"| process start to guest exit, hugetlbfs | not measured: {e} | — | — |")

        ready = os.path.join(work, "ready")
        ov, ob = idle_memory([vmm, "--kernel", g["idle"], "--mem", str(args.mem), "--ready", ready], lambda: os.path.exists(ready), args.mem)
        qv, qb = idle_memory(qemu_cmd(g["idle"], args.mem, True), lambda: True, args.mem)
        print(f"| RSS beyond guest RAM, idle guest | {ob:.1f} MiB (anon {ov['RssAnon'] - args.mem:.1f}, file {ov['RssFile']:.1f}) | "
              f"{qb:.1f} MiB (anon {qv['RssAnon'] - args.mem:.1f}, file {qv['RssFile']:.1f}) | {ob/qb:.2f}x |")

        gib = args.prefault_gib
        subprocess.run([vmm, "--kernel", g["exit"], "--mem", str(gib << 10), "--report", rep], check=True)
        thp = int(report(rep)["populate_us"]) / 1e6 / gib
        line = f"| prefault per GiB | THP {thp*1e3:.0f} ms | "
        nr = "/proc/sys/vm/nr_hugepages"
        old = int(open(nr).read())
        try:
            open(nr, "w").write(str(old + gib * 512 + 8))
            r = subprocess.run([vmm, "--kernel", g["exit"], "--mem", str(gib << 10), "--report", rep, "--hugepages"], capture_output=True, text=True)
            if r.returncode == 0:
                huge = int(report(rep)["populate_us"]) / 1e6 / gib
                line += f"hugetlbfs {huge*1e3:.0f} ms | {huge/thp:.2f}x (hugetlb / THP) |"
            else:
                line += f"hugetlbfs: {r.stderr.strip()} | — |"
        except OSError as e:
            line += f"hugetlbfs: cannot reserve a pool ({e}) | — |"
        finally:
            try:
                open(nr, "w").write(str(old))
            except OSError:
                pass
        print(line)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
