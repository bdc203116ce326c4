"""The Debian package (scripts/package.sh, `make deb`): built from the tree `make` built, laid out
exactly as `make install DESTDIR=… PREFIX=/usr` lays it out, installed with apt; then a VM job runs
from the installed files alone — the CLI, slurm-vmd, the VMM, the image recipes and the plugin in
Slurm's plugin directory — with the daemons started without systemd, as the local cluster starts them.

Needs root, like test_slurm.py. The package is purged at the end.
"""
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from test_slurm import REPO, Cluster, run

PLUGIN_DIR = "/usr/lib/x86_64-linux-gnu/slurm-wlm"
# The node as a machine without the Swift toolchain sees it.
PLAIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture(scope="module")
def package():
    r = run([os.path.join(REPO, "scripts", "package.sh")], cwd=REPO, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    deb = os.path.join(REPO, r.stdout.strip().splitlines()[-1])
    r = run(["apt-get", "install", "-y", "-q", "--no-install-recommends", deb], timeout=900,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    assert r.returncode == 0, r.stdout + r.stderr
    yield deb
    run(["dpkg", "--purge", "slurm-vm"], timeout=300)


def test_the_package_holds_what_make_install_lays_out(package):
    stage = tempfile.mkdtemp(prefix="slurm-vm-install-")
    try:
        r = run(["make", "-s", "install", f"DESTDIR={stage}", "PREFIX=/usr"], cwd=REPO, timeout=300)
        assert r.returncode == 0, r.stderr
        laid = {"/" + os.path.relpath(os.path.join(d, f), stage) for d, _, fs in os.walk(stage) for f in fs}
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    listing = run(["dpkg-deb", "-c", package]).stdout.splitlines()
    packaged = {l.split()[-1].lstrip(".") for l in listing if not l.startswith("d")}
    assert packaged == laid, f"only packaged: {packaged - laid}\nonly installed: {laid - packaged}"
    for f in laid:
        assert os.path.exists(f), f"{f} is not installed"
    for f in ("/usr/bin/slurm-vm", "/usr/sbin/slurm-vmd", "/usr/bin/slurm-vm-vmm", f"{PLUGIN_DIR}/slurm-vm.so",
              "/usr/lib/systemd/system/slurm-vmd.service", "/etc/slurm-vm/examples/node.toml",
              "/etc/slurm-vm/examples/catalog.toml", "/usr/share/slurm-vm/images/minimal.toml"):
        assert f in laid, f
    # A node needs no Swift toolchain: the runtime is linked in.
    for b in ("/usr/bin/slurm-vm", "/usr/sbin/slurm-vmd"):
        deps = run(["ldd", b]).stdout
        assert "/opt/swift" not in deps and "not found" not in deps, f"{b}:\n{deps}"
    r = run(["/usr/bin/slurm-vm", "--help"], env={"PATH": PLAIN_PATH})
    assert r.returncode == 0 and "jobs" in r.stdout, r.stderr
    r = run(["/usr/sbin/slurm-vmd", "--config", "/etc/slurm-vm/examples/catalog.toml", "--check"], env={"PATH": PLAIN_PATH})
    assert r.returncode == 0, r.stdout + r.stderr
    snippet = open("/etc/slurm/plugstack.conf.d/slurm-vm.conf").read()
    assert snippet.startswith(f"required {PLUGIN_DIR}/slurm-vm.so ") and "exec_wrapper=/usr/bin/slurm-vm" in snippet, snippet
    unit = open("/usr/lib/systemd/system/slurm-vmd.service").read()
    assert "ExecStart=/usr/sbin/slurm-vmd --config /etc/slurm-vm/slurm-vmd.toml" in unit and "KillMode=process" in unit, unit
    # The admin's edits to the configuration survive upgrades.
    conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", "slurm-vm"]).stdout
    for f in ("/etc/slurm/plugstack.conf.d/slurm-vm.conf", "/etc/slurm-vm/examples/node.toml"):
        assert f in conffiles, conffiles


def test_a_vm_job_runs_from_the_installed_files(package):
    c = Cluster(tempfile.mkdtemp(prefix="slurm-vm-package-"))
    c.env.update(PATH=PLAIN_PATH, SLURM_VM_BIN_DIR="/usr/bin", SLURM_VM_PLUGIN=f"{PLUGIN_DIR}/slurm-vm.so")
    r = run(["/usr/bin/slurm-vm", "image", "build", "/usr/share/slurm-vm/images/minimal.toml"], env=c.env, timeout=1800)
    assert r.returncode == 0, r.stderr
    c.cluster("up", "--nodes", "1", "--catalog", c.catalog, "--dir", c.dir)
    try:
        # The daemons are the installed ones.
        for name in ("catalog", "node1"):
            pid = open(os.path.join(c.dir, "run", f"slurm-vmd-{name}.pid")).read().strip()
            assert os.readlink(f"/proc/{pid}/exe") == "/usr/sbin/slurm-vmd", name
        assert f"required {PLUGIN_DIR}/slurm-vm.so " in open(os.path.join(c.dir, "etc", "plugstack.conf")).read()
        r = c.sh("sbatch -W -N1 -n1 --vm-count=1 -o pkg.out --wrap 'srun hostname; srun uname -r'", timeout=600)
        out = open(os.path.join(c.work, "pkg.out")).read() if os.path.exists(os.path.join(c.work, "pkg.out")) else ""
        assert r.returncode == 0, r.stderr + out
        assert re.search(r"^vm0-job\d+$", out, re.M) and os.uname().release not in out, out
        c.expect_clean()
    finally:
        c.cluster("down", "--dir", c.dir)
        shutil.rmtree(c.root, ignore_errors=True)
