"""VM jobs on a local cluster whose nodes have network stacks of their own (`scripts/cluster up
--netns`): each slurmd, its slurm-vmd and so its guests live in a network namespace with its own
address, so a job's network between nodes really crosses the kernel's VXLAN, and MPI runs over it.

Needs root and the built binaries (SLURM_VM_BIN_DIR, default .build/release), like test_slurm.py.
"""
import os
import re
import shutil
import socket
import threading

import pytest

from test_slurm import REPO, VM, finalize_hung, new_cluster, run, state, submit, wait_step, wait_until

NODES = ["node1", "node2"]


def ns(node):
    return f"slurmvm-{node}"


def devices(node):
    """The job devices (svm{b,x,t,g,u}…) in a node's namespace."""
    out = run(["ip", "-n", ns(node), "-o", "link", "show"]).stdout
    return [l.split(": ")[1].split("@")[0] for l in out.splitlines() if re.match(r"\d+: svm[bxtgu]", l)]


def routers():
    """The job routers' namespaces (outbound = nat) on this host."""
    return [l.split()[0] for l in run(["ip", "netns", "list"]).stdout.splitlines() if l.startswith("svmr")]


@pytest.fixture(scope="module")
def nscluster():
    if not shutil.which("mpicc"):
        pytest.skip("SKIPPED: mpicc is missing (scripts/deps.sh installs mpich and libmpich-dev)")
    c = new_cluster("slurm-vm-netns-")
    r = run([VM, "image", "build", os.path.join(REPO, "Images", "mpich.toml")], env=c.env, timeout=1800)
    assert r.returncode == 0, r.stderr
    run(["mpicc", "-O2", "-o", os.path.join(c.work, "mpi_check"), os.path.join(REPO, "Benchmarks", "mpi", "mpi_check.c")], check=True)
    c.cluster("up", "--nodes", "2", "--catalog", c.catalog, "--dir", c.dir, "--netns")
    yield c
    c.cluster("down", "--dir", c.dir)
    wait_until("the node namespaces to go", lambda: not any(ns(n) in run(["ip", "netns", "list"]).stdout for n in NODES), timeout=30)
    shutil.rmtree(c.root, ignore_errors=True)


JOB = """#SBATCH -o netns.out
srun -n4 sh -c 'for h in $(echo $SLURM_VM_HOSTS | tr , " "); do ping -c1 -W5 $h >/dev/null && r="$r $h"; done; echo "reach $(hostname):$r"'
timeout 60 srun --mpi=pmi2 -n4 ./mpi_check
echo "mpi-rc=$?"
# While the guests still run, the test looks at each node's tunnel, then lets the job end.
touch tunnels-wanted; while [ ! -e tunnels-seen ]; do sleep 0.2; done
echo done
"""


def test_a_job_network_crosses_vxlan_between_nodes_and_mpi_runs_over_it(nscluster):
    c = nscluster
    open(os.path.join(c.work, "netns.sh"), "w").write("#!/bin/sh\n#SBATCH -N2 --ntasks-per-node=2 --vm-count=4 --vm-vcpus=1 --vm-libs=mpich\n" + JOB)
    job = c.sh("sbatch --parsable netns.sh", check=True).stdout.strip()
    wanted = os.path.join(c.work, "tunnels-wanted")
    wait_until("the job's steps", lambda: os.path.exists(wanted), timeout=300, step=0.5)
    # Each node's namespace holds the job's bridge, its two taps and a VXLAN tunnel to the other node.
    addr = {"node1": "10.77.0.1", "node2": "10.77.0.2"}
    for n, other in (("node1", "node2"), ("node2", "node1")):
        devs = devices(n)
        assert len([d for d in devs if d.startswith("svmt")]) == 2 and any(d.startswith("svmb") for d in devs), devs
        vx = [d for d in devs if d.startswith("svmx")]
        assert len(vx) == 1, devs
        info = run(["ip", "-n", ns(n), "-d", "-s", "link", "show", vx[0]]).stdout
        assert f"local {addr[n]}" in info, info
        fdb = run(["bridge", "-n", ns(n), "fdb", "show", "dev", vx[0]]).stdout
        assert f"dst {addr[other]}" in fdb, fdb
        # Guests' frames did cross it: TX packets on the tunnel device.
        tx = re.search(r"TX:.*\n\s+(\d+)\s+(\d+)", info)
        assert tx and int(tx.group(2)) > 0, info
    open(os.path.join(c.work, "tunnels-seen"), "w").close()
    wait_until(f"job {job} to end", lambda: c.sh(f"squeue -h -j {job}").stdout.strip() == "", timeout=180, step=1)
    out = open(os.path.join(c.work, "netns.out")).read()
    assert out.rstrip().endswith("done"), out
    reach = sorted(l for l in out.splitlines() if l.startswith("reach "))
    names = [f"vm{k}-job{job}" for k in range(4)]
    assert reach == sorted(f"reach {h}: {' '.join(names)}" for h in names), out
    ranks = sorted(l for l in out.splitlines() if l.startswith("rank "))
    assert len(ranks) == 4 and all(l.endswith(": alltoall ok, allreduce 6 (correct)") for l in ranks), out
    assert {re.search(r"on (\S+):", l).group(1) for l in ranks} == set(names), out
    finalize_hung(out)
    # Everything of the job is gone from both namespaces; the wall there holds no job's rule.
    no_job_left(c)


def no_job_left(c):
    """Neither node's namespace holds a job device or a job's rule, and no guest runs."""
    for n in NODES:
        wait_until(f"{n}'s job devices to go", lambda: not devices(n), timeout=30)
        rules = run(["ip", "netns", "exec", ns(n), "nft", "list", "ruleset"]).stdout
        assert not re.search(r"svm[bxtgu][0-9a-f]", rules), rules
    # The router's namespace goes last in the teardown (after the job's devices): wait for it, as for
    # them; one that stays is a leak and fails here after 30 s.
    wait_until(f"the job routers to go (left: {routers()})", lambda: not routers(), timeout=30)
    wait_until("the guests to be gone", lambda: not c.vmms(), timeout=30)


def tunnels_up():
    return all(any(d.startswith("svmx") for d in devices(n)) for n in NODES)


def test_scancel_and_a_killed_slurm_vmd_leave_no_tunnel(nscluster):
    """A job cancelled mid-step, and a job whose node1 slurm-vmd is killed with SIGKILL mid-job and
    restarted: afterwards no bridge, tap or VXLAN device of either job is left in any node."""
    c = nscluster
    job = submit(c, "-N2 --ntasks-per-node=1 --vm-count=2 --vm-vcpus=1", "srun sleep 300")
    wait_step(c, job, timeout=180)
    wait_until("the job's tunnels", lambda: tunnels_up(), timeout=60)
    c.sh(f"scancel {job}", check=True)
    no_job_left(c)

    job = submit(c, "-N2 --ntasks-per-node=1 --vm-count=2 --vm-vcpus=1 -o killed.out", "srun hostname; sleep 12; srun hostname; echo done")
    wait_until("the first step", lambda: os.path.exists(os.path.join(c.work, "killed.out"))
               and "vm0-job" in open(os.path.join(c.work, "killed.out")).read(), timeout=180)
    assert tunnels_up()
    pid = int(open(os.path.join(c.dir, "run", "slurm-vmd-node1.pid")).read())
    os.kill(pid, 9)
    c.cluster("start-vmd", "--node", "node1", "--dir", c.dir)
    wait_until(f"job {job} to end", lambda: state(c, job) == "", timeout=180, step=1)
    out = open(os.path.join(c.work, "killed.out")).read()
    assert out.rstrip().endswith("done") and len(re.findall(r"vm\d-job\d+", out)) == 4, out
    no_job_left(c)


class Listener:
    """A TCP listener on one of the host's addresses that notes every peer's address."""

    def __init__(self, addr, port):
        self.peers = []
        self.sock = socket.create_server((addr, port))
        self.sock.settimeout(0.5)
        self.open = True
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while self.open:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                continue
            self.peers.append(peer[0])
            conn.close()

    def close(self):
        self.open = False
        self.thread.join()
        self.sock.close()


NAT_JOB = """#SBATCH -o nat.out
srun -n2 sh -c 'for t in 203.0.113.1:5999 10.77.0.254:5998 10.77.0.254:16817 10.77.0.1:17002 10.77.0.2:17003 10.77.0.254:17420; do
  if nc -w 3 ${t%:*} ${t#*:} </dev/null >/dev/null 2>&1; then echo "$(hostname) open $t"; else echo "$(hostname) closed $t"; fi
done'
touch routers-wanted; while [ ! -e routers-seen ]; do sleep 0.2; done
"""


def test_nat_takes_guests_out_through_their_node_and_nowhere_else(nscluster):
    """outbound = nat (the namespace cluster's nodes have it): a guest on each node reaches a server
    beyond the nodes' gateway (203.0.113.1 on the host), which sees each node's own address; the
    nodes' network stays out of reach (the host there, slurmctld's and slurmd's ports, the blob
    service); each node has the job's router while it runs, and nothing of it is left after."""
    c = nscluster
    outside, management = Listener("203.0.113.1", 5999), Listener("10.77.0.254", 5998)
    try:
        open(os.path.join(c.work, "nat.sh"), "w").write("#!/bin/sh\n#SBATCH -N2 --ntasks-per-node=1 --vm-count=2 --vm-vcpus=1\n" + NAT_JOB)
        job = c.sh("sbatch --parsable nat.sh", check=True).stdout.strip()
        wait_until("the job's probes", lambda: os.path.exists(os.path.join(c.work, "routers-wanted")), timeout=300, step=0.5)
        assert len(routers()) == 2, routers()
        for n in NODES:
            assert any(d.startswith("svmu") for d in devices(n)) and any(d.startswith("svmg") for d in devices(n)), devices(n)
        open(os.path.join(c.work, "routers-seen"), "w").close()
        wait_until(f"job {job} to end", lambda: c.sh(f"squeue -h -j {job}").stdout.strip() == "", timeout=180, step=1)
    finally:
        outside.close()
        management.close()
    out = open(os.path.join(c.work, "nat.out")).read()
    for k in range(2):
        g = f"vm{k}-job{job}"
        assert f"{g} open 203.0.113.1:5999" in out, out
        for t in ("10.77.0.254:5998", "10.77.0.254:16817", "10.77.0.1:17002", "10.77.0.2:17003", "10.77.0.254:17420"):
            assert f"{g} closed {t}" in out, out
    assert sorted(outside.peers) == ["10.77.0.1", "10.77.0.2"], outside.peers
    assert management.peers == [], management.peers
    no_job_left(c)
