#!/usr/bin/env python3
"""Prolog latency of VM jobs: from the prolog's request to every guest's agent ready, image cached,
2 guests per node, through a real local Slurm cluster (scripts/cluster). Side by side on the same
machine, the baseline: `slurm-vm vm run --image minimal --count 2 --cpus 0,1 -- true` (boot the same
two guests by hand, run nothing, tear down). Prints the medians and their ratio.

usage: Benchmarks/prolog_latency.py [--runs N] [--nodes N]   (root; SLURM_VM_BIN_DIR, SLURM_VM_CATALOG)
"""
import argparse
import os
import re
import statistics
import tempfile
import time

from cluster_bench import BIN, CLUSTER, REPO, VM, sh as run_checked


def sh(cmd, env, check=True, **kw):
    return run_checked(cmd, env, check, who="prolog benchmark", **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=1)
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="slurm-vm-prolog-bench-")
    catalog = os.environ.get("SLURM_VM_CATALOG") or os.path.join(root, "catalog")
    cdir = os.path.join(root, "cluster")
    env = dict(os.environ, SLURM_VM_CATALOG=catalog, SLURM_VM_BIN_DIR=BIN, SLURM_CONF=os.path.join(cdir, "etc", "slurm.conf"),
               SLURM_VM_RUNDIR=os.path.join(root, "run"))
    if sh([VM, "image", "show", "minimal"], env, check=False).returncode != 0:
        sh([VM, "image", "build", os.path.join(REPO, "Images", "minimal.toml")], env)
    sh([CLUSTER, "up", "--nodes", str(a.nodes), "--catalog", catalog, "--dir", cdir], env)
    try:
        work = os.path.join(root, "work")
        os.makedirs(work)
        prolog, jobwall, baseline = [], [], []
        n = a.nodes
        for i in range(a.runs + 1):      # the first job fills the node caches: not counted
            t0 = time.time()
            sh(f"sbatch -W -N{n} --ntasks-per-node=2 --vm-count={2 * n} --vm-vcpus=1 -o /dev/null --wrap 'srun -n1 true'",
               env, cwd=work, timeout=600)
            wall = time.time() - t0
            log = open(os.path.join(cdir, "log", "slurm-vmd-node1.log")).read()
            ready = [float(x) for x in re.findall(r"ready in ([0-9.]+) s", log)]
            if i > 0:
                prolog.append(ready[-1])
                jobwall.append(wall)
            # The baseline right after, so both see the same machine state.
            t0 = time.time()
            sh([VM, "vm", "run", "--image", "minimal", "--count", "2", "--cpus", "0,1", "--", "true"], env, timeout=600)
            if i > 0:
                baseline.append(time.time() - t0)
    finally:
        sh([CLUSTER, "down", "--dir", cdir], env, check=False)
    med = statistics.median
    print(f"prolog: request to all agents ready, 2 guests per node, {n} node(s), image cached   "
          f"median {med(prolog):.2f} s  (min {min(prolog):.2f}, max {max(prolog):.2f}, {len(prolog)} jobs)")
    print(f"whole job (sbatch -W, srun -n1 true)                                    median {med(jobwall):.2f} s")
    print(f"baseline: vm run --image minimal --count 2 --cpus 0,1 -- true             median {med(baseline):.2f} s  "
          f"(min {min(baseline):.2f}, max {max(baseline):.2f})")
    print(f"ratio prolog / baseline                                                 {med(prolog) / med(baseline):.2f}x")


if __name__ == "__main__":
    main()
