#!/usr/bin/env python3
"""MPI over the job network, through a real local Slurm cluster (scripts/cluster), side by side with
the same MPI program between the nodes' hosts on the same testbed:
  - ping-pong latency (8-byte messages, one way) and streaming bandwidth (1 MiB messages, 8 in flight)
    between two guests on different nodes (a job of 2 nodes x 1 guest), against 2 ranks on the hosts;
  - an 8-byte MPI_Allreduce over 4 guests (2 nodes x 2 guests), against 4 ranks on the hosts.
Both sides run `srun --mpi=pmi2` of Benchmarks/mpi/mpi_bench.c on the cluster whose nodes have
network namespaces of their own (`scripts/cluster up --netns`): the guests' traffic crosses VXLAN
between the nodes, the hosts' ranks talk over the nodes' veths and the host bridge. The host ranks
are held to TCP (UCX_TLS=tcp,self, MPIR_CVAR_NOLOCAL=1): both "nodes" are one machine, and shared
memory between them would not be a network path. Both "nodes" also count the same cores: for the
point-to-point runs a spacer job holds node2's first core, so the two ranks (or guests) sit on
different cores as on two real nodes; the 4-rank allreduce shares the machine's cores either way.
Each measure is printed before MPI_Finalize, and a step still running after 45 s is ended (UCX's finalize can spin for long on oversubscribed cores, hosts and guests alike).
Prints medians over --runs and guest/host ratios, with the guests' virtio-net setup.

usage: Benchmarks/mpi_network.py [--runs N]   (root; SLURM_VM_BIN_DIR, SLURM_VM_CATALOG optional)
"""
import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile

from cluster_bench import BIN, CLUSTER, REPO, VM, sh as run_checked


def sh(cmd, env, check=True, **kw):
    return run_checked(cmd, env, check, who="MPI benchmark", **kw)


def measures(text):
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+) ([0-9.]+) \S+$", text, re.M)}


def job(env, work, options, step, name):
    """One sbatch -W job whose script runs `step`; returns what the step printed."""
    out = os.path.join(work, name + ".out")
    script = os.path.join(work, name + ".sh")
    with open(script, "w") as f:
        f.write(f"#!/bin/sh\n{step}\nexit 0\n")
    sh(f"sbatch -W {options} -o {out} {script}", env, cwd=work, timeout=900)
    return open(out).read()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    if not shutil.which("mpicc"):
        sys.exit("MPI benchmark: mpicc is missing (scripts/deps.sh installs mpich and libmpich-dev)")
    root = tempfile.mkdtemp(prefix="slurm-vm-mpi-bench-")
    os.chmod(root, 0o755)
    catalog = os.environ.get("SLURM_VM_CATALOG") or os.path.join(root, "catalog")
    cdir = os.path.join(root, "cluster")
    env = dict(os.environ, SLURM_VM_CATALOG=catalog, SLURM_VM_BIN_DIR=BIN, SLURM_CONF=os.path.join(cdir, "etc", "slurm.conf"),
               SLURM_VM_RUNDIR=os.path.join(root, "run"))
    if sh([VM, "image", "show", "mpich"], env, check=False).returncode != 0:
        sh([VM, "image", "build", os.path.join(REPO, "Images", "mpich.toml")], env, timeout=1800)
    work = os.path.join(root, "work")
    os.makedirs(work)
    sh(["mpicc", "-O2", "-o", os.path.join(work, "mpi_bench"), os.path.join(REPO, "Benchmarks", "mpi", "mpi_bench.c")], env)
    sh([CLUSTER, "up", "--nodes", "2", "--netns", "--catalog", catalog, "--dir", cdir], env)
    tcp = "--export=ALL,UCX_TLS=tcp,self,MPIR_CVAR_NOLOCAL=1"
    bounded = "timeout -s KILL 45"
    rows = {k: ([], []) for k in ("latency_8B", "bandwidth_1MiB", "allreduce_8B_4ranks")}
    setup = ""
    try:
        for i in range(a.runs):
            spacer = sh("sbatch --parsable -w node2 -n1 -c1 -o /dev/null --wrap 'sleep 3600'", env, cwd=work).stdout.strip()
            try:
                g = measures(job(env, work, "-N2 --ntasks-per-node=1 -c1 --vm-count=2 --vm-vcpus=1 --vm-libs=mpich",
                                 f"{bounded} srun --mpi=pmi2 -n2 ./mpi_bench p2p", f"guest-p2p-{i}"))
                h = measures(job(env, work, "-N2 --ntasks-per-node=1 -c1", f"{bounded} srun --mpi=pmi2 -n2 {tcp} ./mpi_bench p2p",
                                 f"host-p2p-{i}"))
            finally:
                sh(f"scancel {spacer}", env, check=False)
            g.update(measures(job(env, work, "-N2 --ntasks-per-node=2 --vm-count=4 --vm-vcpus=1 --vm-libs=mpich",
                                  f"{bounded} srun --mpi=pmi2 -n4 ./mpi_bench allreduce", f"guest-allreduce-{i}")))
            h.update(measures(job(env, work, "-N2 --ntasks-per-node=2", f"{bounded} srun --mpi=pmi2 -n4 {tcp} ./mpi_bench allreduce",
                                  f"host-allreduce-{i}")))
            for k, (gs, hs) in rows.items():
                if k not in g or k not in h:
                    sys.exit(f"MPI benchmark: run {i} did not report {k}: guests {g}, hosts {h}")
                gs.append(g[k])
                hs.append(h[k])
        setup = job(env, work, "-N1 --vm-count=1 --vm-vcpus=1 --vm-libs=mpich",
                    "srun sh -c 'echo \"$(ls -d /sys/class/net/eth0/queues/rx-* | wc -l) queue pair(s), MTU $(cat /sys/class/net/eth0/mtu), "
                    "driver $(basename $(readlink /sys/class/net/eth0/device/driver))\"'", "setup").strip()
    finally:
        sh([CLUSTER, "down", "--dir", cdir], env, check=False)
    version = re.search(r"Version:\s*(\S+)", sh(["mpichversion"], env, check=False).stdout)
    print(f"MPI over the job network ({a.runs} runs, medians; MPICH {version.group(1) if version else '?'} with UCX over TCP,"
          " QEMU TCG guests of 1 vCPU):")
    print(f"  guest NIC: virtio-net over a tap with vnet headers (QEMU userspace backend, no vhost-net here): {setup}")
    for k, (gs, hs) in rows.items():
        gm, hm = statistics.median(gs), statistics.median(hs)
        unit = "MB/s" if k.startswith("bandwidth") else "us"
        # Ratios as "guests relative to hosts": for bandwidth guest/host (higher is better), for times host/guest.
        ratio = gm / hm if unit == "MB/s" else hm / gm
        print(f"  {k:22s} guests {gm:10.2f} {unit:5s} hosts {hm:10.2f} {unit:5s} guests reach {ratio:.2f}x of the host path")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
