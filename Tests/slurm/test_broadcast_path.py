"""The prolog's image path on a 3-node local cluster: a VM job whose image is on no node boots after one
broadcast per artefact to all three nodes (the catalog's log names each), not one fetch per node; a
second job finds it cached and transfers nothing. Needs root and the built binaries, as test_slurm.py.
"""
import json
import os
import re
import shutil

import pytest

from test_slurm import VM, new_cluster, run  # the skips there apply here too


@pytest.fixture(scope="module")
def cluster3():
    c = new_cluster("slurm-vm-broadcast-")
    c.cluster("up", "--nodes", "3", "--catalog", c.catalog, "--dir", c.dir)
    yield c
    c.cluster("down", "--dir", c.dir)
    shutil.rmtree(c.root, ignore_errors=True)


def broadcasts(c):
    log = open(os.path.join(c.dir, "log", "slurm-vmd-catalog.log")).read()
    return re.findall(r"broadcast (\S+): (\d+) node\(s\)", log)


def test_a_three_node_job_boots_after_one_broadcast(cluster3):
    c = cluster3
    rec = json.loads(run([VM, "image", "show", "minimal", "--json"], env=c.env, check=True).stdout)
    blobs = [a["digest"] for a in rec["artefacts"]]
    for n in ("node1", "node2", "node3"):
        cache = os.path.join(c.dir, "vmd", n, "cache", "blobs", "sha256")
        assert not any(os.path.exists(os.path.join(cache, d[7:])) for d in blobs), f"{n} already has the image"
    r = c.sh("sbatch -W -N3 --ntasks-per-node=1 --vm-count=3 -o b.out --wrap 'srun hostname'", timeout=600)
    assert r.returncode == 0, r.stderr + open(os.path.join(c.work, "b.out")).read()
    hosts = open(os.path.join(c.work, "b.out")).read().split()
    assert len(hosts) == 3 and len(set(hosts)) == 3, hosts
    seen = broadcasts(c)
    assert len(seen) == len(blobs) and all(n == "3" for _, n in seen), seen
    for n in ("node1", "node2", "node3"):
        cache = os.path.join(c.dir, "vmd", n, "cache", "blobs", "sha256")
        assert all(os.path.exists(os.path.join(cache, d[7:])) for d in blobs), n
        assert not [f for f in os.listdir(cache) if f.startswith(".partial")]
        listing = run([VM, "cache", "ls", "--json", "--cache", os.path.join(c.dir, "vmd", n, "cache")], check=True).stdout
        assert any(e["digest"] == rec["digest"] and e["complete"] for e in json.loads(listing)), listing
    # Cached now: the next job joins, holds everything, and nothing moves.
    r = c.sh("sbatch -W -N3 --ntasks-per-node=1 --vm-count=3 -o b2.out --wrap 'srun true'", timeout=600)
    assert r.returncode == 0, r.stderr
    assert len(broadcasts(c)) == len(blobs)
    c.expect_clean()
