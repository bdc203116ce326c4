"""VM jobs through a real local Slurm cluster (scripts/cluster): the plugin's options, refused
submissions, jobs whose steps run in guests, cancellation and time limits, jobs without --vm-*,
space sharing between jobs, and a slurm-vmd killed mid-job.

Needs root (slurmd, slurm-vmd) and the built binaries (SLURM_VM_BIN_DIR, default .build/release).
"""
import fcntl
import glob
import hashlib
import json
import os
import re
import select
import shutil
import struct
import subprocess
import tempfile
import termios
import time
import warnings

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("SLURM_VM_BIN_DIR") or os.path.join(REPO, ".build", "release")
VM = os.path.join(BIN, "slurm-vm")

if os.geteuid() != 0:
    pytest.skip("SKIPPED: the Slurm tests need root (slurmd and slurm-vmd run as root)", allow_module_level=True)
if not shutil.which("slurmctld"):
    pytest.skip("SKIPPED: Slurm is not installed (scripts/deps.sh installs it)", allow_module_level=True)


def run(cmd, check=False, timeout=600, **kw):
    r = subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def wait_until(what, pred, timeout=60, step=0.25):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Cluster:
    def __init__(self, root):
        self.root = root
        self.dir = os.path.join(root, "cluster")
        self.catalog = os.path.join(root, "catalog")
        self.work = os.path.join(root, "work")
        os.makedirs(self.work)
        os.chmod(root, 0o755)
        os.chmod(self.work, 0o777)
        self.env = dict(os.environ, SLURM_CONF=os.path.join(self.dir, "etc", "slurm.conf"),
                        SLURM_VM_CATALOG=self.catalog, SLURM_VM_BIN_DIR=BIN, SLURM_VM_CLUSTER_DIR=self.dir)

    def sh(self, cmd, user=None, check=False, timeout=600):
        if user:
            cmd = f"runuser -u {user} -- env SLURM_CONF={self.env['SLURM_CONF']} sh -c {json.dumps(cmd)}"
        return run(cmd, check=check, timeout=timeout, env=self.env, cwd=self.work)

    def cluster(self, *args):
        return run([os.path.join(REPO, "scripts", "cluster"), *args], env=self.env, check=True, timeout=300)

    def queue(self):
        return self.sh("squeue -h -o '%i %T'").stdout.split("\n")[:-1]

    def vmms(self):
        """VMM processes (QEMU, slurm-vm-vmm) started by this cluster's node daemons: each runs in its
        guest's run directory (and names its files relative to it)."""
        r = run(["pgrep", "-x", "qemu-system-x86|slurm-vm-vmm"])
        found = []
        for p in r.stdout.split():
            try:
                if os.readlink(f"/proc/{p}/cwd").startswith(f"{self.dir}/vmd/"):
                    found.append(int(p))
            except OSError:
                pass  # gone meanwhile
        return found

    def guests(self, node):
        r = run([VM, "vm", "ls", "--json"], env=dict(self.env, SLURM_VM_RUNDIR=f"{self.dir}/vmd/{node}/run"))
        return json.loads(r.stdout or "[]")

    def nodes(self):
        d = os.path.join(self.dir, "vmd")
        return sorted(n for n in os.listdir(d) if n.startswith("node") and os.path.isdir(os.path.join(d, n)))

    def file_servers(self):
        """virtiofsd processes serving this cluster's directories."""
        r = run(["pgrep", "-f", f"virtiofsd .*source={self.root}/"])
        return [int(p) for p in r.stdout.split()]

    def expect_clean(self, timeout=30):
        wait_until("the guests to be gone", lambda: not self.vmms(), timeout=timeout)
        wait_until("the file servers to be gone", lambda: not self.file_servers(), timeout=timeout)
        for n in self.nodes():
            # The VMM dies first; its run directory goes a moment later, when the epilog's teardown ends.
            wait_until(f"{n} to list no guests", lambda: self.guests(n) == [], timeout=timeout)
            state = os.path.join(self.dir, "vmd", n, "state", "jobs")
            wait_until(f"{n}'s job state to be removed", lambda: not os.listdir(state), timeout=timeout)
        states = self.sh("sinfo -h -N -o '%N %t'").stdout
        assert "drain" not in states and "down" not in states, states
        # No job's network is left: bridge, tunnel or tap (svm{b,x,t}<job id in hex>).
        wait_until("the jobs' networks to be removed", lambda: not job_devices(), timeout=timeout)
        # Nor any job's cgroup (JobCgroup: slurm-vm_<node>/job_<id> in each controller).
        wait_until("the jobs' cgroups to be removed", lambda: not job_cgroups(), timeout=timeout)
        # Nor any firewall rule naming a job: the wall is one table matching job devices by pattern.
        rules = run(["nft", "list", "ruleset"]).stdout
        assert not re.search(r"svm[bxt][0-9a-f]", rules), rules


def jailed_view(pid):
    """What a jailed VMM sees of the node (Jail in Runner/Host/Processes.swift), read as root from
    outside: whether its mount and network namespaces are its own, its mount points, and whether a
    file of the node it was not given is visible."""
    own = lambda ns: os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
    mounts = {}
    for line in open(f"/proc/{pid}/mountinfo"):
        f = line.split()
        mounts[f[4]] = set(f[5].split(","))
    root = f"/proc/{pid}/root"
    return {"own_mnt": own("mnt"), "own_net": own("net"), "mounts": mounts,
            "sees_node_files": any(os.path.exists(root + p) for p in ("/etc/passwd", "/home", "/var", "/root"))}


def assert_jailed(pid, dynamic, devices=()):
    """A VMM (or its console sink) sees only its run directory (its working directory, writable,
    noexec), /dev/null, its own /proc and `devices`; a dynamically linked one also /usr and the
    loader's cache, read-only. Its root is a read-only tmpfs."""
    v = jailed_view(pid)
    what = f"process {pid} ({open(f'/proc/{pid}/comm').read().strip()}): {v}"
    assert v["own_mnt"] and v["own_net"], what
    assert not v["sees_node_files"], what
    mounts = dict(v["mounts"])
    assert "ro" in mounts.pop("/"), what
    want = {"/dev/null", "/proc"} | set(devices) | ({"/usr", "/etc/ld.so.cache"} if dynamic else set())
    cwd = os.readlink(f"/proc/{pid}/cwd")
    if cwd != "/":
        want.add(cwd)
        assert {"rw", "noexec", "nosuid", "nodev"} <= mounts[cwd], what
    assert set(mounts) == want, what
    for p in ("/usr", "/etc/ld.so.cache"):
        assert p not in mounts or "ro" in mounts[p], what


def job_cgroups():
    """Job cgroups slurm-vmd made on this host."""
    return [d for d in glob.glob("/sys/fs/cgroup/*/slurm-vm_*/job_*") if os.path.isdir(d)]


def job_devices():
    """Network devices of Slurm jobs' networks on this host (ids below 2^26; `vm run --network` uses higher)."""
    out = run(["ip", "-o", "link", "show"]).stdout
    names = [l.split(": ")[1].split("@")[0] for l in out.splitlines() if ": " in l]
    return [n for n in names if re.fullmatch(r"svm[bxt][0-9a-f]{1,7}(\.[0-9a-f]+)?", n) and int(n[4:].split(".")[0], 16) < 1 << 26]


def new_cluster(prefix):
    """A scratch directory with a catalog holding the minimal image; the cluster itself not yet up."""
    c = Cluster(tempfile.mkdtemp(prefix=prefix))
    r = run([VM, "image", "build", os.path.join(REPO, "Images", "minimal.toml")], env=c.env, timeout=1800)
    assert r.returncode == 0, r.stderr
    return c


@pytest.fixture(scope="module")
def cluster():
    c = new_cluster("slurm-vm-slurmtests-")
    # An image only root may use, to check that image Requirements see the submitting user.
    rec = json.loads(run([VM, "image", "show", "minimal", "--json"], env=c.env, check=True).stdout)
    blob = {a["role"]: os.path.join(c.catalog, "blobs", "sha256", a["digest"][7:]) for a in rec["artefacts"]}
    run([VM, "image", "add", "rootonly:1", "--kernel", blob["kernel"], "--initrd", blob["initrd"], "--cmdline", rec["cmdline"],
         "--attr", 'OS="debian"', "--attr", "MaxVCPUs=64", "--attr", "MinMemoryMB=128"], env=c.env, check=True)
    run([VM, "image", "set", "rootonly:1", 'Requirements=TARGET.Owner == "root"'], env=c.env, check=True)
    # An image whose guests hold one vCPU: vCPUs derived from the job's cores must respect it at sbatch.
    run([VM, "image", "add", "tiny1:1", "--kernel", blob["kernel"], "--initrd", blob["initrd"], "--cmdline", rec["cmdline"],
         "--attr", 'OS="debian"', "--attr", "MaxVCPUs=1", "--attr", "MinMemoryMB=128"], env=c.env, check=True)
    c.cluster("up", "--nodes", "2", "--catalog", c.catalog, "--dir", c.dir)
    yield c
    c.cluster("down", "--dir", c.dir)
    shutil.rmtree(c.root, ignore_errors=True)


def vm_options(text):
    """The --vm-* option names a --help text lists, in order."""
    return [m.group(1) for m in re.finditer(r"^\s*(--vm-[a-z]+)", text, re.M)]


@pytest.mark.parametrize("tool", ["sbatch", "srun", "salloc"])
def test_help_lists_every_option(cluster, tool):
    # The one list is VMRequest.options; `slurm-vm match --help` shows it (a Swift test checks that, and
    # that the plugin's C table is the same list).
    ours = vm_options(run([VM, "match", "--help"], check=True).stdout)
    assert len(ours) == 9, ours
    out = cluster.sh(f"{tool} --help").stdout
    assert vm_options(out) == ours, f"{tool} --help lists {vm_options(out)}, slurm-vm match {ours}"


BAD = [
    ("--vm-count=abc", "'abc' is not a whole number", None),
    ("--vm-count=0", "out of range", None),
    ("--vm-count=999999", "out of range", None),
    ("--vm-vcpus=x2", "not a whole number", None),
    ("--vm-vcpus=64", "more than the largest node has", None),
    ("--vm-mem=lots", "--vm-mem", None),
    ("--vm-image=nosuch", "no image 'nosuch' in the catalog", None),
    ("--vm-requirements='TARGET.Arch =='", "not a valid ClassAd expression", None),
    ("--vm-requirements='TARGET.MaxVCPUs > 100000'", "no guest image matches", None),
    ("--vm-image=rootonly", "no guest image matches", "nobody"),
    ("--vm-image='minimal;rm -rf /'", "--vm-image", None),
    ("--vm-libs='mpich$(id)'", "--vm-libs", None),
    ("--vm-image=../../etc/passwd", "--vm-image", None),
    ("--vm-os='debian:12 && true'", "--vm-os", None),
    ("--vm-libs=,,,", "has an empty item", None),
    ("--vm-count=1 -N2", "fewer than the job's 2 nodes", None),
]


@pytest.mark.parametrize("option,message,user", BAD)
def test_bad_submissions_are_refused_and_nothing_is_queued(cluster, option, message, user):
    r = cluster.sh(f"sbatch {option} --wrap true", user=user)
    assert r.returncode != 0, f"sbatch {option} was accepted: {r.stdout}"
    assert message in r.stderr, f"sbatch {option}: {r.stderr}"
    assert cluster.queue() == []


def test_an_image_too_small_for_the_jobs_cores_is_refused_at_sbatch(cluster):
    # No --vm-vcpus: one guest gets the job's 2 cores on the node, which tiny1 (MaxVCPUs = 1) cannot hold.
    r = cluster.sh("sbatch -N1 --ntasks-per-node=2 --vm-image=tiny1 --wrap 'srun nproc'")
    assert r.returncode != 0, f"accepted: {r.stdout}"
    assert "no guest image matches" in r.stderr and "MaxVCPUs" in r.stderr, r.stderr
    assert cluster.queue() == []
    # Two guests on the same allocation: one core each, and it runs.
    r = cluster.sh("sbatch -W -N1 --ntasks-per-node=2 --vm-count=2 --vm-image=tiny1 -o tiny.out --wrap 'srun nproc'", timeout=300)
    assert r.returncode == 0, r.stderr
    out = open(os.path.join(cluster.work, "tiny.out")).read()
    assert out.split() == ["1", "1"], out
    cluster.expect_clean()


# Requests whose answers `slurm-vm match` (the dry run) and sbatch must agree on: vm options, job options.
AGREE = [
    ("--vm-image=tiny1", "-N1 --ntasks-per-node=2"),
    ("--vm-image=tiny1 --vm-count=2", "-N1 --ntasks-per-node=2"),
    ("--vm-vcpus=64", ""),
    ("--vm-image=nosuch", ""),
    ("--vm-count=3", "-N1"),
    ("--vm-count=1", "-N2"),
    ("--vm-libs=,,,", ""),
    ("--vm-requirements='TARGET.MaxVCPUs > 100000'", ""),
    ("--vm-os='debian>=12' --vm-mem=256M", "-n2"),
    ("--vm-image=rootonly", "--exclusive"),
    ("--vm-image=minimal", "-N2 --ntasks-per-node=2 -c1"),
]


def test_match_and_sbatch_agree(cluster):
    answers = []
    for vm, job in AGREE:
        m = cluster.sh(f"{VM} match {vm} -- {job}")
        s = cluster.sh(f"sbatch --hold {job} {vm} --wrap true")
        if s.returncode == 0:
            cluster.sh(f"scancel {s.stdout.split()[-1]}", check=True)
        answers.append((vm, job, m.returncode == 0, s.returncode == 0))
        assert (m.returncode == 0) == (s.returncode == 0), f"{vm} -- {job}: match said {m.stdout}{m.stderr}, sbatch said {s.stdout}{s.stderr}"
        if m.returncode != 0:
            first = re.sub(r"^(slurm-vm: )?(error: )?", "", (m.stdout.strip() or m.stderr.strip()).split("\n")[0])
            assert first and first in s.stderr, f"{vm} -- {job}: match said '{first}', sbatch said {s.stderr}"
    # The table exercises both answers.
    assert {a[2] for a in answers} == {True, False}, answers


def test_the_restricted_image_is_fine_for_root(cluster):
    r = cluster.sh("sbatch --vm-image=rootonly --hold --wrap true")
    assert r.returncode == 0, r.stderr
    job = r.stdout.split()[-1]
    cluster.sh(f"scancel {job}", check=True)


def test_a_job_without_vm_options_runs_as_without_the_plugin(cluster):
    r = cluster.sh("sbatch -W -N1 -o plain.out --wrap 'srun hostname; srun sh -c \"exit 3\"; echo rc=$?'", timeout=120)
    assert r.returncode == 0, r.stderr
    out = open(os.path.join(cluster.work, "plain.out")).read()
    host = os.uname().nodename.split(".")[0]
    assert out.splitlines()[0] == host and "rc=3" in out, out
    assert not cluster.vmms()


JOB = """#!/bin/sh
#SBATCH -N2 --ntasks-per-node=2 --vm-count=4 --vm-vcpus=1 -o job.out
srun -l sh -c 'echo "guest=$(hostname) kernel=$(uname -r) cpus=$(nproc) procid=$SLURM_PROCID localid=$SLURM_LOCALID nodeid=$SLURM_NODEID pwd=$(pwd)"'
srun -n4 hostname > hosts.txt
srun false; echo "false-rc=$?"
srun -n1 sh -c 'head -c 10000000 /dev/urandom > data.bin; cat data.bin' > stream.bin
srun -n1 sh -c 'echo input was $(cat)' < job.sh > stdin.txt
srun -n4 sh -c 'for h in $(grep -v localhost /etc/hosts | cut -d" " -f2); do ping -c1 -W5 $h >/dev/null && echo "net $(hostname) -> $h"; done' > net.txt
srun -n1 sh -c 'echo "hosts=$SLURM_VM_HOSTS"; echo "hostfile=$(tr "\\n" , < /etc/slurm-vm/hostfile)"' > hostlist.txt
echo done
"""


def test_a_vm_job_runs_every_step_in_its_guests(cluster):
    open(os.path.join(cluster.work, "job.sh"), "w").write(JOB)
    r = cluster.sh("sbatch -W job.sh", timeout=300)
    assert r.returncode == 0, r.stderr
    w = cluster.work
    out = open(os.path.join(w, "job.out")).read()
    lines = [l for l in out.splitlines() if "guest=" in l]
    assert len(lines) == 4, out
    for l in lines:
        assert re.search(r"guest=vm\d-job\d+ ", l) and "cpus=1" in l and f"pwd={w}" in l, l
    procids = sorted(int(re.search(r"procid=(\d+)", l).group(1)) for l in lines)
    assert procids == [0, 1, 2, 3]
    hosts = open(os.path.join(w, "hosts.txt")).read().split()
    assert len(hosts) == 4 and len(set(hosts)) == 4, f"srun -n4 did not give 4 distinct guests: {hosts}"
    assert "false-rc=1" in out, out
    # 10 MB from a guest arrives intact, and the guest's file landed in the shared working directory.
    data = open(os.path.join(w, "data.bin"), "rb").read()
    stream = open(os.path.join(w, "stream.bin"), "rb").read()
    assert len(data) == 10_000_000 and hashlib.sha256(stream).digest() == hashlib.sha256(data).digest()
    assert "input was #!/bin/sh" in open(os.path.join(w, "stdin.txt")).read()
    # The job's private network: each of its 4 guests, on both nodes, reaches all 4 by name.
    net = sorted(open(os.path.join(w, "net.txt")).read().splitlines())
    names = sorted(set(hosts))
    assert net == sorted(f"net {a} -> {b}" for a in names for b in names), net
    # The job's guest list, in the environment and as a hostfile, in job-wide order.
    job = re.search(r"job(\d+)", names[0]).group(1)
    listed = ",".join(f"vm{k}-job{job}" for k in range(4))
    assert open(os.path.join(w, "hostlist.txt")).read().split() == [f"hosts={listed}", f"hostfile={listed},"]
    assert out.rstrip().endswith("done")
    cluster.expect_clean()


def test_a_user_job_runs_as_the_user(cluster):
    r = cluster.sh("sbatch -W -N1 --vm-count=1 -o user.out --wrap 'srun id -u; srun touch mine'", user="nobody", timeout=300)
    assert r.returncode == 0, r.stderr
    assert open(os.path.join(cluster.work, "user.out")).read().split()[0] == "65534"
    assert os.stat(os.path.join(cluster.work, "mine")).st_uid == 65534
    cluster.expect_clean()


def submit(cluster, args, script, user=None):
    """Submits `script` as a batch script file (no shell quoting between the test and the job), as
    `user` (default root)."""
    fd, path = tempfile.mkstemp(prefix="job-", suffix=".sh", dir=cluster.work)
    with os.fdopen(fd, "w") as f:
        f.write("#!/bin/sh\n" + script + "\n")
    os.chmod(path, 0o755)
    r = cluster.sh(f"sbatch --parsable {args} {path}", user=user)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def wait_step(cluster, job, timeout=120):
    """Until the job's first srun step (JOB.0) runs: its prolog is done and its guests are ready."""
    wait_until(f"step {job}.0", lambda: f"{job}.0" in cluster.sh(f"squeue -h -s -j {job} -o %i").stdout.split(), timeout=timeout)


def state(cluster, job):
    return cluster.sh(f"squeue -h -j {job} -o %T").stdout.strip()


def test_scancel_during_a_step_leaves_nothing(cluster):
    job = submit(cluster, "-N2 --ntasks-per-node=1 --vm-count=2", "srun sleep 300")
    wait_step(cluster, job)
    wait_until("the guests", lambda: len(cluster.vmms()) == 2, timeout=60)
    cluster.sh(f"scancel {job}", check=True)
    cluster.expect_clean(timeout=30)


def test_the_time_limit_ends_the_guests(cluster):
    job = submit(cluster, "-N1 --vm-count=1 --time=1", "srun sleep 600")
    wait_until("the job to run", lambda: state(cluster, job) == "RUNNING", timeout=120)
    wait_until("the time limit", lambda: state(cluster, job) == "", timeout=240, step=1)
    cluster.expect_clean(timeout=30)
    r = cluster.sh(f"sacct -n -j {job} -o State 2>/dev/null || true")
    assert "TIMEOUT" in r.stdout or r.stdout.strip() == "" or "CANCELLED" in r.stdout


def test_two_jobs_on_one_node_get_disjoint_cores_and_a_third_waits(cluster):
    a = submit(cluster, "-N1 -w node1 -n1 --vm-count=1 --vm-vcpus=1", "srun sleep 300")
    b = submit(cluster, "-N1 -w node1 -n1 --vm-count=1 --vm-vcpus=1", "srun sleep 300")
    wait_until("two guests on node1", lambda: len(cluster.guests("node1")) == 2, timeout=120)
    c = submit(cluster, "-N1 -w node1 -n1 --vm-count=1 --vm-vcpus=1", "srun sleep 300")
    time.sleep(4)
    assert state(cluster, c) == "PENDING", "a job that does not fit must wait, not oversubscribe"
    cpus = [set(g["cpus"]) for g in cluster.guests("node1")]
    assert len(cpus) == 2 and cpus[0].isdisjoint(cpus[1]), cpus
    cluster.sh(f"scancel {a} {b} {c}", check=True)
    cluster.expect_clean(timeout=30)


def test_slurm_vmd_killed_mid_job_adopts_the_guests_and_leaks_nothing(cluster):
    # Killed between two steps: after the restart the guests are adopted and the next step runs in them.
    job = submit(cluster, "-N1 -w node1 -n1 --vm-count=1 -o adopt.out", "srun hostname; sleep 12; srun sh -c 'echo after=$(hostname)'")
    wait_until("the first step's output", lambda: os.path.exists(os.path.join(cluster.work, "adopt.out"))
               and "vm0-job" in open(os.path.join(cluster.work, "adopt.out")).read(), timeout=120)
    pid = int(open(os.path.join(cluster.dir, "run", "slurm-vmd-node1.pid")).read())
    os.kill(pid, 9)
    before = cluster.vmms()
    assert len(before) == 1, "the guest outlives its daemon"
    cluster.cluster("start-vmd", "--node", "node1", "--dir", cluster.dir)
    wait_until("the job to end", lambda: state(cluster, job) == "", timeout=120, step=1)
    out = open(os.path.join(cluster.work, "adopt.out")).read()
    assert re.search(r"after=vm0-job\d+", out), f"the step after the restart did not run in the adopted guest:\n{out}"
    cluster.expect_clean(timeout=30)


def test_slurm_vmd_killed_during_a_step_fails_the_step_cleanly(cluster):
    job = submit(cluster, "-N1 -w node1 -n1 --vm-count=1 -o killed.out", "srun sleep 30; echo step-rc=$?")
    wait_step(cluster, job)
    time.sleep(3)
    os.kill(int(open(os.path.join(cluster.dir, "run", "slurm-vmd-node1.pid")).read()), 9)
    time.sleep(1)
    cluster.cluster("start-vmd", "--node", "node1", "--dir", cluster.dir)
    wait_until("the job to end", lambda: state(cluster, job) == "", timeout=120, step=1)
    out = open(os.path.join(cluster.work, "killed.out")).read()
    assert "slurm-vmd went away while the task ran" in out and "step-rc=1" in out, out
    cluster.expect_clean(timeout=30)


def test_signals_reach_the_command_in_the_guest(cluster):
    script = "srun sh -c 'trap \"echo got-TERM > term.txt; exit 0\" TERM; sleep 100 & wait'"
    job = submit(cluster, "-N1 -n1 --vm-count=1", script)
    wait_step(cluster, job)
    time.sleep(3)
    cluster.sh(f"scancel --signal=TERM {job}", check=True)
    wait_until("the command's trap", lambda: os.path.exists(os.path.join(cluster.work, "term.txt")), timeout=30)
    assert open(os.path.join(cluster.work, "term.txt")).read().strip() == "got-TERM"
    cluster.sh(f"scancel {job}")
    cluster.expect_clean(timeout=30)


def test_environment_fallbacks_are_options_too(cluster):
    r = cluster.sh("SLURM_VM_COUNT=abc sbatch --wrap true")
    assert r.returncode != 0 and "--vm-count: 'abc' is not a whole number" in r.stderr, r.stderr
    assert cluster.queue() == []


def test_only_root_prepares_guests_and_users_stay_in_their_own_jobs(cluster):
    sock = f"{cluster.dir}/vmd/node1.sock"
    req = json.dumps({"op": "teardown", "job": 1})
    probe = f"python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(\"{sock}\"); s.sendall(sys.argv[1].encode()+b\"\\n\"); print(s.makefile().readline())' '{req}'"
    r = cluster.sh(probe, user="nobody")
    assert "only root or SlurmUser" in r.stdout, r.stdout + r.stderr
    job = submit(cluster, "-N1 -w node1 -n1 --vm-count=1", "srun sleep 60")
    wait_step(cluster, job)
    r = cluster.sh(f"SLURM_VM_TASK_ARGV0=id SLURM_VM_NODE_SOCKET={sock} SLURM_JOB_ID={job} {VM}", user="nobody")
    assert r.returncode == 1 and f"job {job} belongs to uid 0, not to uid 65534" in r.stderr, r.stderr
    cluster.sh(f"scancel {job}")
    cluster.expect_clean(timeout=30)


def test_make_install_writes_the_plugstack_line(cluster):
    d = tempfile.mkdtemp()
    run(["make", "-s", "-C", os.path.join(REPO, "Plugin"), "install", f"DESTDIR={d}", "PLUGSTACK_ARGS=submit_socket=/run/x.sock"], check=True)
    conf = open(os.path.join(d, "etc/slurm/plugstack.conf.d/slurm-vm.conf")).read()
    assert conf.startswith("required /") and conf.strip().endswith("slurm-vm.so submit_socket=/run/x.sock"), conf
    sym = run(["nm", "-D", "--defined-only", os.path.join(REPO, "Plugin", "slurm-vm.so")], check=True).stdout
    exported = sorted(l.split()[-1] for l in sym.splitlines())
    assert all(e.startswith(("slurm_spank_", "plugin_", "spank_plugin_")) for e in exported), exported
    shutil.rmtree(d)


def test_a_job_whose_guests_cannot_be_prepared_fails_its_tasks_not_the_node(cluster):
    # One core allocated, two vCPUs asked for: the prolog succeeds, the tasks say what to ask for.
    job = submit(cluster, "-N1 -w node2 -n1 --vm-vcpus=2 -o nofit.out", "srun hostname; echo srun-rc=$?")
    wait_until("the job to end", lambda: state(cluster, job) == "", timeout=120, step=1)
    out = open(os.path.join(cluster.work, "nofit.out")).read()
    assert "could not be prepared" in out and "ask Slurm for more cores" in out and "srun-rc=1" in out, out
    cluster.expect_clean(timeout=30)



def restart_vmds(cluster, extra):
    """Restarts every node's slurm-vmd with `extra` appended to its configuration ("" restores it)."""
    for n in cluster.nodes():
        conf = os.path.join(cluster.dir, "etc", f"slurm-vmd-{n}.toml")
        base = open(conf).read().split("\n# test:\n")[0]
        with open(conf, "w") as f:
            f.write(base + ("\n# test:\n" + extra if extra else ""))
        pid = int(open(os.path.join(cluster.dir, "run", f"slurm-vmd-{n}.pid")).read())
        os.kill(pid, 15)
        wait_until(f"{n}'s slurm-vmd to stop", lambda: not os.path.exists(f"/proc/{pid}"), timeout=30)
        cluster.cluster("start-vmd", "--node", n, "--dir", cluster.dir)
        wait_until(f"{n}'s slurm-vmd", lambda: os.path.exists(f"{cluster.dir}/vmd/{n}.sock"), timeout=30)
    time.sleep(1)


def test_an_exhausted_address_pool_fails_the_tasks_with_what_to_do(cluster):
    """A pool of 2 addresses and a job of 3 guests: the prolog succeeds, the tasks fail saying which
    setting to change, the nodes stay up and nothing is left behind."""
    restart_vmds(cluster, '[network]\npool = "10.254.0.0/30"\n')
    try:
        job = submit(cluster, "-N2 -n3 --vm-count=3 --vm-vcpus=1 -o pool.out", "srun -n3 hostname; echo srun-rc=$?")
        wait_until("the job to end", lambda: state(cluster, job) == "", timeout=120, step=1)
        out = open(os.path.join(cluster.work, "pool.out")).read()
        assert "could not be prepared" in out and "set network.pool in slurm-vmd.toml" in out and "srun-rc=1" in out, out
        cluster.expect_clean(timeout=30)
    finally:
        restart_vmds(cluster, "")


MPI_JOB = """#SBATCH -o mpi.out
# Bounded: MPICH 4.0.2's UCX layer can hang in MPI_Finalize after the ranks are done (docs/network.md).
timeout 60 srun --mpi=pmi2 -n4 ./mpi_check > ranks.txt
echo "mpi-rc=$?"
# A program that never speaks PMI, under --mpi=pmi2: its channel ends with the task, as on the host.
srun --mpi=pmi2 -n4 hostname > plain.txt
echo done
"""


def finalize_hung(out):
    """The MPI step's exit: 0, or 124 when MPI_Finalize hung after every rank had printed its correct
    result (MPICH 4.0.2's UCX layer, an upstream issue seen on the hosts' own ranks too: docs/network.md),
    which is said loudly rather than failed."""
    rc = re.search(r"mpi-rc=(\d+)", out)
    assert rc and rc.group(1) in ("0", "124"), out
    if rc.group(1) == "124":
        print("\n*** NOTE: MPI_Finalize hung after the ranks were done (MPICH 4.0.2 + UCX, docs/network.md); the step was ended after 60 s ***")
        warnings.warn("MPI_Finalize hung after the ranks were done (MPICH 4.0.2 + UCX upstream issue)")


def test_mpi_ranks_in_guests_wire_up_through_srun_pmi2(cluster):
    """srun --mpi=pmi2 -n4 across 2 nodes x 2 guests: the ranks reach slurmstepd's PMI server through
    the agent's relay, exchange addresses and connect over the job network; MPI_Allreduce is right."""
    if not shutil.which("mpicc"):
        pytest.skip("SKIPPED: mpicc is missing (scripts/deps.sh installs mpich and libmpich-dev)")
    r = run([VM, "image", "build", os.path.join(REPO, "Images", "mpich.toml")], env=cluster.env, timeout=1800)
    assert r.returncode == 0, r.stderr
    run(["mpicc", "-O2", "-o", os.path.join(cluster.work, "mpi_check"), os.path.join(REPO, "Benchmarks", "mpi", "mpi_check.c")], check=True)
    job = submit(cluster, "-N2 --ntasks-per-node=2 --vm-count=4 --vm-vcpus=1 --vm-libs=mpich", MPI_JOB)
    wait_until(f"MPI job {job} to end", lambda: state(cluster, job) == "", timeout=300, step=1)
    out = open(os.path.join(cluster.work, "mpi.out")).read()
    assert out.rstrip().endswith("done"), out
    ranks = open(os.path.join(cluster.work, "ranks.txt")).read().splitlines()
    assert len(ranks) == 4, out + "\n".join(ranks)
    seen = {}
    for l in ranks:
        m = re.fullmatch(r"rank (\d) of 4 on (vm\d-job\d+): alltoall ok, allreduce 6 \(correct\)", l)
        assert m, l
        seen[int(m.group(1))] = m.group(2)
    assert sorted(seen) == [0, 1, 2, 3] and len(set(seen.values())) == 4, seen
    assert sorted(open(os.path.join(cluster.work, "plain.txt")).read().split()) == sorted(seen.values())
    finalize_hung(out)
    cluster.expect_clean()


def test_pmix_is_refused_with_what_to_use_instead():
    """Slurm's PMIx server is a socket on the host a guest cannot open: the task wrapper refuses a
    PMIx task before anything starts (on this host srun itself refuses first: no PMIx library)."""
    env = dict(os.environ, SLURM_VM_TASK_ARGV0="true", SLURM_VM_NODE_SOCKET="/nonexistent.sock", SLURM_JOB_ID="7",
               SLURM_MPI_TYPE="pmix_v4", PMIX_NAMESPACE="slurm.pmix.7.0")
    r = run([VM], env=env)
    assert r.returncode == 1
    assert "srun --mpi=pmix_v4 cannot reach into slurm-vm guests" in r.stderr and "--mpi=pmi2" in r.stderr, r.stderr


def host_targets():
    """Every TCP service of this host (all its nodes), on each of its global IPv4 addresses."""
    addrs = re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", run(["ip", "-4", "-o", "addr", "show", "scope", "global"]).stdout)
    addrs = [a for a in addrs if not a.startswith("10.254.")]
    ports = set()
    for line in run(["ss", "-Hltn"]).stdout.splitlines():
        local = line.split()[3]
        host, port = local.rsplit(":", 1)
        if host in ("0.0.0.0", "*", "[::]") or host in addrs:
            ports.add(int(port))
    return [f"{a}:{p}" for a in addrs for p in sorted(ports)]


PROBE = r"""
# As a hostile guest would: a default route out of the job network, then every target at once.
ip route add default dev eth0 2>/dev/null
(while true; do nc -l -p 5000 </dev/null >/dev/null 2>&1; done) &
listener=$!
sleep 1
for t in self:5000 $TARGETS; do
  ( a=${t%:*}; p=${t#*:}; [ "$a" = self ] && a=$(hostname)
    if nc -w 3 "$a" "$p" </dev/null >/dev/null 2>&1; then echo "open $t"; else echo "closed $t"; fi ) &
  probes="$probes $!"
done
wait $probes
kill $listener
"""


def wall_drops():
    """Packets from job networks the host's input chain has dropped so far (JobFirewall's counter)."""
    chain = run(["nft", "list", "chain", "inet", "slurm_vm", "input"]).stdout
    m = re.search(r"counter packets (\d+) bytes \d+ drop", chain)
    return int(m.group(1)) if m else 0


def test_guests_reach_only_their_own_job(cluster):
    """The isolation table, probed from inside a guest with a default route of its own: every TCP
    service of the host, on each of its addresses, and the guests of another job running at the
    same time on the same nodes (same guest numbers, same addresses) - all refused; the guest's own
    listener answers, so the probe itself works."""
    targets = host_targets()
    assert targets, "this host lists no global IPv4 address or no TCP listener to probe"
    # Job B: vm0 on node1 and vm1 on node2 (10.254.0.1 and .2), both listening on 7777 until cancelled.
    other = submit(cluster, "-N2 --ntasks-per-node=1 -c1 --vm-count=2 --vm-vcpus=1", "srun -n2 sh -c 'while true; do nc -l -p 7777 </dev/null; done'")
    wait_step(cluster, other, timeout=180)
    time.sleep(3)
    try:
        b = ["10.254.0.1:7777", "10.254.0.2:7777"]
        probe = PROBE.replace("$TARGETS", " ".join(targets + b))
        with open(os.path.join(cluster.work, "probe.sh"), "w") as f:
            f.write(probe)
        before = wall_drops()
        # Job A: one guest on node1, beside job B's vm0 with the same number and address.
        r = cluster.sh("sbatch -W -w node1 -N1 -n1 -c1 --vm-count=1 --vm-vcpus=1 -o iso.out --wrap 'srun -n1 sh probe.sh; "
                       "srun -n1 sh -c \"ping -c1 -W3 10.254.0.2 >/dev/null && echo ping-open || echo ping-closed\"'", timeout=300)
        assert r.returncode == 0, r.stderr
        out = open(os.path.join(cluster.work, "iso.out")).read()
        results = dict(reversed(l.split(" ", 1)) for l in out.splitlines() if l.startswith(("open ", "closed ")))
        assert results.get("self:5000") == "open", f"the probe does not work: {out}"
        for t in targets + b:
            assert results.get(t) == "closed", f"{t} is reachable from a guest:\n{out}"
        assert "ping-closed" in out, out
        # The host answered the guest's ARP (Linux does, for all its addresses on every interface) and
        # its connection attempts reached the host: the wall is what dropped them, not chance.
        assert wall_drops() - before >= len(targets), (before, wall_drops())
    finally:
        cluster.sh(f"scancel {other}")
    cluster.expect_clean()
    # The wall is one table for every job: it stays, and holds no per-job rule.
    table = run(["nft", "list", "table", "inet", "slurm_vm"]).stdout
    assert "guests never reach the host" in table and not re.search(r"svm[bxt][0-9a-f]", table), table


class Terminal:
    """A real pseudo-terminal for a command, as a user's terminal emulator gives one: the test types
    into it and reads what the command shows."""

    def __init__(self, cmd, env, cwd, rows=33, cols=97):
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

        def controlling():
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(cmd, shell=True, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
                                     start_new_session=True, preexec_fn=controlling)
        os.close(slave)
        self.seen = b""

    def type(self, text):
        os.write(self.master, text.encode())

    def expect(self, pattern, timeout=120):
        """Reads until `pattern` (a regex) appears in what came since the last match; returns the match."""
        deadline = time.time() + timeout
        while True:
            m = re.search(pattern.encode(), self.seen)
            if m:
                self.seen = self.seen[m.end():]
                return m
            left = deadline - time.time()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} on the terminal within {timeout} s; it showed: {self.seen[-2000:]!r}")
            if select.select([self.master], [], [], min(left, 1))[0]:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:  # the command ended and closed its side
                    if self.proc.poll() is not None:
                        raise AssertionError(f"the command ended ({self.proc.returncode}) before {pattern!r}: {self.seen[-2000:]!r}")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        os.close(self.master)


def test_srun_pty_gives_a_shell_in_a_guest_a_real_terminal(cluster):
    """srun --pty sh: a prompt, a terminal device, its size, Ctrl-C for the foreground job only, the
    shell's exit status."""
    cmd = f"runuser -u nobody -- env SLURM_CONF={cluster.env['SLURM_CONF']} TERM=xterm srun -N1 -n1 --vm-count=1 --pty sh"
    t = Terminal(cmd, cluster.env, cluster.work)
    try:
        t.expect(r"\$ ", timeout=180)
        t.type("tty; stty size; hostname\n")
        t.expect(r"/dev/pts/\d+")
        t.expect(r"33 97")
        t.expect(r"vm0-job\d+")
        t.type("sleep 60\n")
        time.sleep(2)
        t.type("\x03")
        started = time.time()
        t.type("echo alive $((6*7))\n")
        t.expect(r"alive 42", timeout=30)
        assert time.time() - started < 30, "Ctrl-C interrupted the sleep"
        # Meanwhile, on the node: the job in `slurm-vm jobs`, for its owner (and root), not for others.
        sock = os.path.join(cluster.dir, "vmd", "node1.sock")
        mine = cluster.sh(f"{VM} jobs --socket {sock}", user="nobody")
        assert mine.returncode == 0 and re.search(r"^\d+\s+nobody\s+ready\s+minimal:\S+\s+1\s+qemu/", mine.stdout, re.M), mine.stdout + mine.stderr
        listed = json.loads(cluster.sh(f"{VM} jobs --json --socket {sock}").stdout)
        assert len(listed) == 1 and listed[0]["memoryMB"] > 0 and listed[0]["cpus"] and listed[0]["backend"].startswith("qemu"), listed
        t.type("exit 3\n")
        assert t.proc.wait(timeout=60) == 3, t.seen[-2000:]
    finally:
        t.close()
    cluster.expect_clean(timeout=60)


METRICS_PORT0 = 17200  # scripts/cluster: the catalog's endpoint, node i's on + i


def scrape(port):
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4"), r.headers
        return r.read().decode()


def metric(text, name, labels=""):
    """The value of one series (0 when absent), `labels` as written in the exposition: 'kind="prepare"'."""
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)$"
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else 0.0


def test_the_metrics_pass_promtool_and_move_when_a_job_runs(cluster):
    node, catalog = METRICS_PORT0 + 1, METRICS_PORT0
    before_node, before_catalog = scrape(node), scrape(catalog)
    for text in (before_node, before_catalog):
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert r.returncode == 0, f"promtool: {r.stdout}{r.stderr}\n{text}"
    for series in ("slurm_vm_guests_running", "slurm_vm_prolog_seconds_count", "slurm_vm_cache_bytes"):
        assert re.search(rf"^{series}", before_node, re.M), f"{series} missing:\n{before_node}"
    assert 'slurm_vm_failures_total{kind="guest_lost"}' in before_node, before_node
    r = cluster.sh("sbatch -W -N1 -n1 --vm-count=1 --wrap 'srun true'", timeout=300)
    assert r.returncode == 0, r.stderr
    job = r.stdout.split()[-1]
    after_node, after_catalog = scrape(node), scrape(catalog)
    # What the job got is in its AdminComment, where scontrol shows it to its user.
    wait_until("the job's AdminComment", lambda: "AdminComment=slurm-vm: image=minimal:" in cluster.sh(f"scontrol show job {job}").stdout, timeout=30)
    shown = cluster.sh(f"scontrol show job {job}").stdout
    assert re.search(r"AdminComment=slurm-vm: image=minimal:\S+ guests=1 vcpus=\d+ mem=\d+M backend=qemu/", shown), shown
    r = subprocess.run(["promtool", "check", "metrics"], input=after_node, capture_output=True, text=True)
    assert r.returncode == 0, f"promtool: {r.stdout}{r.stderr}"
    moved = lambda name, labels="": metric(after_node, name, labels) - metric(before_node, name, labels)
    assert moved("slurm_vm_prolog_seconds_count") == 1 and moved("slurm_vm_boot_seconds_count") == 1, after_node
    assert moved("slurm_vm_cache_hits_total") + moved("slurm_vm_cache_misses_total") == 1, after_node
    assert metric(after_node, "slurm_vm_cache_bytes") > 0, after_node
    wait_until("the node's gauge to count no guests once the job has ended",
               lambda: metric(scrape(node), "slurm_vm_guests_running") == 0, timeout=60)
    accepted = 'result="accepted"'
    assert metric(after_catalog, "slurm_vm_matches_total", accepted) > metric(before_catalog, "slurm_vm_matches_total", accepted)
    assert metric(after_catalog, "slurm_vm_match_seconds_count") > metric(before_catalog, "slurm_vm_match_seconds_count")
