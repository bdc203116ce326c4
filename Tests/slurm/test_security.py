"""A guest never holds root on the host (issue 19), seen through a real Slurm job of an ordinary user
(nobody) on the QEMU backend: every VMM and file server of the job runs unprivileged and confined in
the job's cgroup, and root inside a guest creates in the shared working directory only what the job's
owner could. The embedded VMM's side of the same checks runs in the SVM sandbox (test_embedded.py).

Needs root, like test_slurm.py.
"""
import hashlib
import os
import re
import shlex
import shutil
import stat
import subprocess
import time

import pytest

from test_slurm import VM, assert_jailed, new_cluster, run, state, submit, wait_step, wait_until

NOBODY = 65534


@pytest.fixture(scope="module")
def cluster():
    c = new_cluster("slurm-vm-security-")
    # A small console limit, so the endless-console case reaches it in seconds under TCG.
    c.env["SLURM_VM_NODE_EXTRA"] = 'console_limit = "1M"'
    c.cluster("up", "--nodes", "1", "--catalog", c.catalog, "--dir", c.dir)
    # The node's directories closed to all but root, as a careful admin would leave them: VMMs and file
    # servers must need no way through the directories above their own.
    os.chmod(os.path.join(c.dir, "vmd", "node1"), 0o700)
    yield c
    c.cluster("down", "--dir", c.dir)
    shutil.rmtree(c.root, ignore_errors=True)


def submit_as(cluster, user, args, script):
    return submit(cluster, args, script, user=user)


def status(pid):
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        fields[k] = v.strip()
    return fields


def cgroups(pid):
    """controller -> path, from /proc/PID/cgroup (v1 lines are ID:CONTROLLERS:PATH)."""
    out = {}
    for line in open(f"/proc/{pid}/cgroup"):
        _, ctrls, path = line.strip().split(":", 2)
        for c in ctrls.split(","):
            out[c] = path
    return out


def file_servers(cluster, node):
    """The virtiofsd of every guest of `node`, from the pid files its run directories keep."""
    run_dir = os.path.join(cluster.dir, "vmd", node, "run")
    pids = []
    for d, _, files in os.walk(run_dir):
        pids += [int(open(os.path.join(d, f)).read().split()[0]) for f in files if re.fullmatch(r"virtiofsd\d+\.pid", f)]
    return pids


def console_sinks(cluster, node):
    """The process bounding each QEMU guest's console log (VMMLaunch.handBoundedConsole)."""
    run_dir = os.path.join(cluster.dir, "vmd", node, "run")
    pids = []
    for d, _, files in os.walk(run_dir):
        pids += [int(open(os.path.join(d, f)).read()) for f in files if f == "console-sink.pid"]
    return pids


def job_exec(cluster, job, command, root=False, user=None):
    sock = os.path.join(cluster.dir, "vmd", "node1.sock")
    flag = " --root" if root else ""
    return cluster.sh(f"{VM} job exec {job}{flag} --socket {sock} -- sh -c {shlex.quote(command)}", user=user, timeout=120)


def test_every_vmm_and_file_server_of_a_job_runs_unprivileged_in_the_jobs_cgroup(cluster):
    job = submit_as(cluster, "nobody", "-N1 -n2 --vm-count=2 --vm-vcpus=1 --vm-mem=256M", "srun sleep 300")
    try:
        wait_step(cluster, job)
        vmms, servers = cluster.vmms(), file_servers(cluster, "node1")
        assert len(vmms) == 2 and len(servers) == 2, (vmms, servers)
        want = f"/slurm-vm_node1/job_{job}"
        uids = set()
        for pid in vmms + servers:
            s, cg = status(pid), cgroups(pid)
            what = f"{'VMM' if pid in vmms else 'virtiofsd'} {pid}: {s}"
            uid = int(s["Uid"].split()[0])
            assert uid != 0 and all(int(u) == uid for u in s["Uid"].split()), what
            assert s["CapEff"] == "0000000000000000" and s["CapPrm"] == "0000000000000000", what
            assert s["NoNewPrivs"] == "1" and s["Seccomp"] == "2", what
            for c in ("memory", "cpuset", "pids", "cpuacct"):
                assert cg.get(c) == want, f"{what}\nin {c}: {cg.get(c)}, not {want}"
            if pid in vmms:
                # A uid of its own, from the range no account uses; no groups, not the owner's.
                assert uid >= 4_200_000_000 and s["Groups"] == "", what
                uids.add(uid)
            else:
                # The file server is the job's owner (root of a namespace mapping only that uid).
                assert uid == NOBODY, what
                assert open(f"/proc/{pid}/uid_map").read().split() == ["0", str(NOBODY), "1"]
        assert len(uids) == 2, f"each VMM has a uid of its own: {uids}"
        # Each VMM and its console sink in a file system of its own: its run directory, the
        # distribution's read-only files, /dev/null, its own /proc; nothing else of the node's.
        sinks = console_sinks(cluster, "node1")
        assert len(sinks) == 2, sinks
        for pid in vmms + sinks:
            assert_jailed(pid, dynamic=True)
        mem = f"/sys/fs/cgroup/memory/{want}"
        limit = int(open(f"{mem}/memory.limit_in_bytes").read())
        assert limit == 2 * (256 + 256) << 20, f"guest RAM plus 256 MiB per guest, not {limit}"
        # The guests' memory is charged to the job: preallocated, so at least their RAM.
        assert int(open(f"{mem}/memory.usage_in_bytes").read()) >= 2 * 256 << 20
        cpus = open(f"/sys/fs/cgroup/cpuset/{want}/cpuset.cpus").read().strip()
        assert cpus, "the job's cpuset has its CPUs"
    finally:
        cluster.sh(f"scancel {job}")
    cluster.expect_clean(timeout=60)


def test_root_in_a_guest_creates_only_what_the_jobs_owner_could(cluster):
    job = submit_as(cluster, "nobody", "-N1 -n1 --vm-count=1", "srun sleep 300")
    try:
        wait_step(cluster, job)
        work = cluster.work
        r = job_exec(cluster, job, f"""cd {work}; id -u
            echo x > rootmade; chown 0:0 rootmade; echo chown=$?
            chmod u+s rootmade; echo suid=$?; chmod g+s rootmade; echo sgid=$?
            install -m 4755 /bin/busybox suidcopy; echo install=$?
            mkdir rootdir; mknod rootdev c 1 3; echo mknod=$?; chown 1234 rootmade; echo chown-other=$?""", root=True)
        out = r.stdout
        assert out.split()[0] == "0", f"the command ran as root in the guest:\n{out}\n{r.stderr}"
        assert "chown=0" in out, out  # chown 0 is allowed: root in the guest is the owner on the host
        assert "suid=1" in out and "sgid=1" in out and "install=0" not in out, out
        assert "mknod=1" in out and "chown-other=0" not in out, out
        for name in ("rootmade", "rootdir"):
            st = os.lstat(os.path.join(work, name))
            assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), f"{name}: {st.st_uid}:{st.st_gid}"
            assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), f"{name}: {oct(st.st_mode)}"
        assert not os.path.exists(os.path.join(work, "rootdev"))
        copy = os.path.join(work, "suidcopy")
        assert not os.path.exists(copy) or not os.stat(copy).st_mode & stat.S_ISUID
        # Only root on the node may ask for root in a job's guests; the owner runs as the owner.
        r = job_exec(cluster, job, "id -u", root=True, user="nobody")
        assert r.returncode != 0 and "only root" in r.stderr, r.stderr
        r = job_exec(cluster, job, "id -u", user="nobody")
        assert r.returncode == 0 and r.stdout.strip() == str(NOBODY), r.stderr
    finally:
        cluster.sh(f"scancel {job}")
    cluster.expect_clean(timeout=60)


# The fault matrix (docs/security.md): each case ends with nothing left behind and no node drained
# (Cluster.expect_clean: VMMs, file servers, run directories, job state, cgroups, network devices,
# firewall rules, node states).

def two_steps(cluster, name):
    """A job whose first step is running when the fault is made, and a second step after it."""
    return submit_as(cluster, "nobody", f"-N1 -n1 --vm-count=1 -o {name}.out",
                     "srun sleep 120; echo first=$?; srun true; echo second=$?")


def finish(cluster, job, name):
    wait_until(f"job {job} to end", lambda: state(cluster, job) == "", timeout=180, step=1)
    return open(os.path.join(cluster.work, f"{name}.out")).read()


def test_fault_a_vmm_killed_mid_step_fails_that_step_and_the_later_ones_naming_the_guest(cluster):
    job = two_steps(cluster, "killed")
    wait_step(cluster, job)
    time.sleep(2)
    [vmm] = cluster.vmms()
    os.kill(vmm, 9)
    out = finish(cluster, job, "killed")
    said = f"guest vm0-job{job} of job {job} on node1 ended: VMM killed by signal 9"
    assert said in out and "first=0" not in out and "second=0" not in out, out
    assert out.count(said) >= 2, f"the later step says it too:\n{out}"
    cluster.expect_clean(timeout=60)


def test_fault_a_guest_kernel_panic_fails_the_job_with_the_panic(cluster):
    job = two_steps(cluster, "panic")
    wait_step(cluster, job)
    job_exec(cluster, job, "echo c > /proc/sysrq-trigger", root=True)
    out = finish(cluster, job, "panic")
    assert f"guest vm0-job{job} of job {job} on node1 ended: its kernel panicked (Kernel panic - not syncing: sysrq triggered crash)" in out, out
    assert "first=0" not in out and "second=0" not in out, out
    cluster.expect_clean(timeout=60)


def test_fault_an_endless_console_is_cut_off_at_its_limit_and_the_guest_goes_on(cluster):
    job = submit_as(cluster, "nobody", "-N1 -n1 --vm-count=1", "srun sleep 300")
    try:
        wait_step(cluster, job)
        # 3 MiB at the console, three times the limit the fixture set (console_limit = "1M").
        r = job_exec(cluster, job, "head -c 3145728 /dev/zero | tr '\\0' x > /dev/console; echo written", root=True)
        assert r.returncode == 0 and "written" in r.stdout, r.stderr
        logs = [os.path.join(d, "console.log") for d, _, f in os.walk(os.path.join(cluster.dir, "vmd", "node1", "run")) if "console.log" in f]
        assert len(logs) == 1, logs
        size = os.path.getsize(logs[0])
        assert 512 << 10 < size <= 1 << 20, f"console log of {size} bytes"
        r = job_exec(cluster, job, "echo still here")
        assert r.stdout.strip() == "still here", r.stderr
    finally:
        cluster.sh(f"scancel {job}")
    cluster.expect_clean(timeout=60)


def test_fault_the_jobs_memory_limit_reached_kills_its_vmm_and_says_so(cluster):
    job = submit_as(cluster, "nobody", "-N1 -n1 --vm-count=1 --vm-mem=512M -o oom.out",
                    "srun sleep 120; echo first=$?; srun true; echo second=$?")
    wait_step(cluster, job)
    cg = f"/sys/fs/cgroup/memory/slurm-vm_node1/job_{job}"
    limit = int(open(f"{cg}/memory.limit_in_bytes").read())
    used = int(open(f"{cg}/memory.usage_in_bytes").read())
    # A stand-in for a VMM whose own memory grows: a process charged to the job's cgroup takes what
    # is left and 128 MiB more. It is smaller than the VMM (which holds the guest's 512 MiB), so the
    # kernel's OOM killer, choosing the largest of the job's processes, ends the VMM.
    grab = limit - used + (128 << 20)
    assert grab < 400 << 20, (limit, used)
    hog = subprocess.Popen(["sh", "-c", f"echo $$ > {cg}/cgroup.procs && "
                            f"exec python3 -c 'import time; b = b\"x\" * {grab}; time.sleep(120)'"])
    try:
        out = finish(cluster, job, "oom")
        assert f"guest vm0-job{job} of job {job} on node1 ended: VMM killed by signal 9" in out, out
        assert "killed by the kernel's OOM killer: the job's memory limit" in out, out
    finally:
        hog.kill()
        hog.wait()
    cluster.expect_clean(timeout=60)


def restart_vmd(cluster, before=None):
    pid = int(open(os.path.join(cluster.dir, "run", "slurm-vmd-node1.pid")).read())
    os.kill(pid, 9)
    wait_until("slurm-vmd to end", lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z")
    if before:
        before()
    cluster.cluster("start-vmd", "--node", "node1", "--dir", cluster.dir)


def test_fault_the_node_cache_disk_full_during_a_prolog_fails_the_job_not_the_node(cluster):
    cache = os.path.join(cluster.dir, "vmd", "node1", "cache")
    # The node's cache on a 4 MiB file system: the image (17 MiB) cannot fit.
    restart_vmd(cluster, lambda: run(["mount", "-t", "tmpfs", "-o", "size=4m", "fullcache", cache], check=True))
    try:
        job = submit_as(cluster, "nobody", "-N1 -n1 --vm-count=1 -o full.out", "srun true; echo rc=$?")
        out = finish(cluster, job, "full")
        assert "could not be prepared" in out and "rc=0" not in out, out
        assert re.search(r"[Nn]o space left on device|disk full|space", out), out
        cluster.expect_clean(timeout=60)
        # Nothing half-written is left in the cache: a blob there is whole (the initramfs fits in
        # 4 MiB, the kernel does not).
        blobs = os.path.join(cache, "blobs", "sha256")
        for name in os.listdir(blobs) if os.path.isdir(blobs) else []:
            digest = hashlib.sha256(open(os.path.join(blobs, name), "rb").read()).hexdigest()
            assert digest == name, f"{name} in the cache is not whole"
        left = [os.path.join(d, f) for d, _, fs in os.walk(cache) for f in fs]
        assert all(p.startswith(blobs) or p.endswith(".json") for p in left), left
    finally:
        restart_vmd(cluster, lambda: run(["umount", cache], check=True))
    # The node is fine once it has room again.
    job = submit_as(cluster, "nobody", "-N1 -n1 --vm-count=1 -o roomy.out", "srun echo fine")
    assert "fine" in finish(cluster, job, "roomy")
    cluster.expect_clean(timeout=60)


def test_fault_slurm_vmd_killed_during_teardown_leaves_nothing_once_it_is_back(cluster):
    job = submit_as(cluster, "nobody", "-N1 -n1 --vm-count=1", "srun sleep 300")
    wait_step(cluster, job)
    pid = int(open(os.path.join(cluster.dir, "run", "slurm-vmd-node1.pid")).read())
    cluster.sh(f"scancel {job}")
    time.sleep(0.3)  # the epilog has asked for the teardown
    os.kill(pid, 9)
    wait_until(f"job {job} to end", lambda: state(cluster, job) == "", timeout=180, step=1)
    # The epilog never fails (a failing epilog drains the node); what is left goes at the restart.
    cluster.cluster("start-vmd", "--node", "node1", "--dir", cluster.dir)
    cluster.expect_clean(timeout=60)
