"""A VM job through real Slurm whose guests boot on the embedded VMM: slurm-vmd's node role picks it
as `vm run --backend auto` does (the host has vmx/svm), the job's working directory is shared over
the VMM's virtio-fs, its network is the VMM's virtio-net, and its srun steps run in the guests.

The embedded VMM boots Linux only where KVM has vmx/svm. These CI hosts' KVM is PVM, so
scripts/test.sh runs this file inside the SVM sandbox (scripts/sandbox.py: an L1 with emulated AMD
SVM), against a catalog built on the host (SLURM_VM_TEST_CATALOG). Needs root, like test_slurm.py.
"""
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from test_slurm import REPO, VM, Cluster, assert_jailed, run, wait_until

HW = any(w in ("vmx", "svm") for l in open("/proc/cpuinfo") if l.startswith("flags") for w in l.split())
if not HW:
    pytest.skip("SKIPPED here: no vmx/svm on this host; scripts/test.sh runs this file in the SVM sandbox", allow_module_level=True)

JOB = """#!/bin/sh
#SBATCH -N1 --ntasks=2 --vm-count=2 --vm-vcpus=1 -o job.out
srun -l sh -c 'echo "guest=$(hostname) pwd=$(pwd) cpus=$(nproc)"; echo "from $(hostname)" > from-$SLURM_PROCID.txt'
srun -n1 sh -c 'exit 3'; echo "rc=$?"
srun -n2 sh -c 'grep -o "slurmvm.exitport=[^ ]*" /proc/cmdline' > platform.txt
# As the job's owner, who may not ping (busybox's ping needs a raw socket): a TCP connection to a closed
# port is refused only by a guest that the packets reach.
srun -n2 sh -c 'for h in $(grep -v localhost /etc/hosts | cut -d" " -f2); do nc -w 5 $h 9 </dev/null 2>&1 | grep -q refused && echo "net $(hostname) -> $h"; done' > net.txt
for p in $(pgrep -x slurm-vm-vmm); do echo "vmm $(grep -E '^(Uid|CapEff|NoNewPrivs|Seccomp):' /proc/$p/status | tr -s '\t\n' '  ') $(grep -E ':(memory|cpuset):' /proc/$p/cgroup | tr '\n' ' ')"; done > vmms.txt
for p in $(pgrep -x virtiofsd); do echo "fs $(grep -E '^(Uid|CapEff|NoNewPrivs|Seccomp):' /proc/$p/status | tr -s '\t\n' '  ') $(grep -E ':(memory|cpuset):' /proc/$p/cgroup | tr '\n' ' ') map $(cat /proc/$p/uid_map | tr -s ' ' ' ')"; done > servers.txt
# The guests stay up until the test (root, outside the job) has looked at their VMMs' jails.
for i in $(seq 300); do [ -e inspected ] && break; sleep 1; done
echo done
"""


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(tempfile.mkdtemp(prefix="slurm-vm-embedded-"))
    shared = os.environ.get("SLURM_VM_TEST_CATALOG")
    if shared:
        c.catalog = shared
        c.env["SLURM_VM_CATALOG"] = shared
    else:
        r = run([VM, "image", "build", os.path.join(REPO, "Images", "minimal.toml")], env=c.env, timeout=1800)
        assert r.returncode == 0, r.stderr
    c.cluster("up", "--nodes", "1", "--catalog", c.catalog, "--dir", c.dir)
    yield c
    c.cluster("down", "--dir", c.dir)
    shutil.rmtree(c.root, ignore_errors=True)


def test_a_job_on_the_embedded_vmm_runs_its_steps_in_guests_sharing_the_working_directory(cluster):
    w = cluster.work
    open(os.path.join(w, "job.sh"), "w").write(JOB)
    # As an ordinary user: the file servers act as the job's owner.
    cmd = f"runuser -u nobody -- env SLURM_CONF={cluster.env['SLURM_CONF']} sbatch -W job.sh"
    job = subprocess.Popen(cmd, shell=True, cwd=w, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until("the job's steps to end", lambda: os.path.exists(os.path.join(w, "servers.txt")) or job.poll() is not None, timeout=900)
        # Each VMM in a file system of its own: its run directory, /dev/null, its own /proc (it is
        # statically linked and handed every other file open).
        vmms = cluster.vmms()
        assert len(vmms) == 2, (vmms, job.poll())
        for pid in vmms:
            assert_jailed(pid, dynamic=False)
    finally:
        open(os.path.join(w, "inspected"), "w").close()
    stdout, stderr = job.communicate(timeout=300)
    r = subprocess.CompletedProcess(cmd, job.returncode, stdout, stderr)
    out = open(os.path.join(w, "job.out")).read() if os.path.exists(os.path.join(w, "job.out")) else ""
    assert r.returncode == 0, f"{r.stderr}\n{out}"
    log = open(os.path.join(cluster.dir, "log", "slurm-vmd-node1.log")).read()
    assert "backend embedded" in log, log[-3000:]
    lines = [l for l in out.splitlines() if "guest=" in l]
    assert len(lines) == 2, out
    guests = sorted(re.search(r"guest=(\S+)", l).group(1) for l in lines)
    assert len(set(guests)) == 2 and all(re.fullmatch(r"vm\d-job\d+", g) for g in guests), guests
    for l in lines:
        assert f"pwd={w}" in l and "cpus=1" in l, l
    # Each guest wrote into the shared working directory (virtio-fs through the VMM's vhost-user front end).
    wrote = sorted(open(os.path.join(w, f"from-{i}.txt")).read().strip() for i in range(2))
    assert wrote == sorted(f"from {g}" for g in guests), wrote
    assert "rc=3" in out, out
    # The guests' kernels were started by the embedded VMM (its paravirtual exit port on their command line).
    assert open(os.path.join(w, "platform.txt")).read().split() == ["slurmvm.exitport=0x501"] * 2
    # The job's private network (the VMM's virtio-net on the node's taps): each guest reaches both.
    net = sorted(open(os.path.join(w, "net.txt")).read().splitlines())
    assert net == sorted(f"net {a} -> {b}" for a in guests for b in guests), net
    # The batch script runs on the node: each guest's VMM ran as a uid of its own (not root, not the
    # other guest's), each file server as the job's owner (nobody), all without capabilities, with
    # no_new_privs and a seccomp filter, in the job's cgroup.
    job = re.search(r"job(\d+)", guests[0]).group(1)
    vmms = open(os.path.join(w, "vmms.txt")).read().splitlines()
    servers = open(os.path.join(w, "servers.txt")).read().splitlines()
    assert len(vmms) == 2 and len(servers) == 2, (vmms, servers)
    uids = []
    for v in vmms + servers:
        f = v.split()
        uid = f[f.index("Uid:") + 1]
        assert len(set(f[f.index("Uid:") + 1:f.index("Uid:") + 5])) == 1, v
        assert f[f.index("CapEff:") + 1] == "0000000000000000" and f[f.index("NoNewPrivs:") + 1] == "1", v
        assert f[f.index("Seccomp:") + 1] == "2", v
        assert f"memory:/slurm-vm_node1/job_{job}" in v and f"cpuset:/slurm-vm_node1/job_{job}" in v, v
        if v.startswith("vmm"):
            assert int(uid) >= 4_200_000_000, v
            uids.append(uid)
        else:
            assert uid == "65534" and v.split(" map ")[1].split() == ["0", "65534", "1"], v
    assert len(set(uids)) == 2, vmms
    assert out.rstrip().endswith("done")
    cluster.expect_clean()
