"""The prolog's image path on a 3-node local cluster: a VM job whose image is on no node boots after one
broadcast per artefact to all three nodes (the catalog's log names each), not one fetch per node; a
second job finds it cached and transfers nothing; `slurm-vm image push` does the same by hand. Needs root and the built binaries, as test_slurm.py.
"""
import json
import os
import re
import shutil
import socket

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


PUSH_PORT0 = 17100  # scripts/cluster: node i's push listener


def push_targets(*nodes):
    return ",".join(f"127.0.0.1:{PUSH_PORT0 + i}" for i in nodes)


def test_image_push_sends_what_nodes_lack_in_one_broadcast(cluster3):
    c = cluster3
    rec = json.loads(run([VM, "image", "show", "minimal", "--json"], env=c.env, check=True).stdout)
    blobs = [a["digest"] for a in rec["artefacts"]]
    before = len(broadcasts(c))
    # Every node holds it (the job above brought it): nothing moves.
    r = run([VM, "image", "push", "minimal", "--nodes", push_targets(1, 2, 3), "--json"], env=c.env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [n["held"] for n in out["nodes"]] == [True, True, True], out
    assert len(broadcasts(c)) == before
    # Two nodes lose it; a push brings it back to both in one broadcast per artefact.
    for n in ("node2", "node3"):
        run([VM, "cache", "rm", rec["digest"], "--cache", os.path.join(c.dir, "vmd", n, "cache")], check=True)
    r = run([VM, "image", "push", "minimal", "--nodes", push_targets(1, 2, 3)], env=c.env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert "already held" in lines[0] and "received" in lines[1] and "received" in lines[2], r.stdout
    assert "100%" in r.stderr and "3/3 nodes done" in r.stderr, r.stderr   # the progress bar's last line
    seen = broadcasts(c)[before:]
    assert len(seen) == len(blobs) and all(n == "2" for _, n in seen), seen
    for n in ("node2", "node3"):
        cache = os.path.join(c.dir, "vmd", n, "cache", "blobs", "sha256")
        assert all(os.path.exists(os.path.join(cache, d[7:])) for d in blobs), n


def raw_push(port, cred):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"PUSH " + cred.strip().encode() + b"\n")
        return s.makefile().read()


def test_image_push_refuses_others_replays_and_bad_input(cluster3):
    c = cluster3
    rec = json.loads(run([VM, "image", "show", "minimal", "--json"], env=c.env, check=True).stdout)
    order = json.dumps({"digest": rec["digest"], "label": f"{rec['name']}:{rec['version']}", "transfer": "push-test", "nodes": 1, "to": "x"})
    # A credential minted by an ordinary user is refused, naming the uid.
    cred = run(["runuser", "-u", "nobody", "--", "munge", "-s", order], check=True).stdout
    reply = raw_push(PUSH_PORT0 + 1, cred)
    assert reply.startswith("ERR only root or SlurmUser may push"), reply
    # root's credential works once; munged refuses the same credential again.
    cred = run(["munge", "-s", order], check=True).stdout
    assert "DONE held" in raw_push(PUSH_PORT0 + 1, cred)
    reply = raw_push(PUSH_PORT0 + 1, cred)
    assert reply.startswith("ERR the credential was refused by munged") and "eplayed" in reply, reply
    # Not a credential at all.
    assert raw_push(PUSH_PORT0 + 1, "MUNGE:garbage:").startswith("ERR the credential was refused")
    # The CLI's own mistakes.
    r = run([VM, "image", "push", "nosuch", "--nodes", push_targets(1)], env=c.env)
    assert r.returncode != 0 and "nosuch" in r.stderr, r.stderr
    r = run([VM, "image", "push", "minimal", "--nodes", "node 1,x"], env=c.env)
    assert r.returncode == 64 and "is not HOST or HOST:PORT" in r.stderr, r.stderr   # a usage error
    r = run([VM, "image", "push", "minimal", "--nodes", "127.0.0.1:1"], env=c.env)
    assert r.returncode == 1 and "cannot reach slurm-vmd's push listener at 127.0.0.1:1" in r.stdout + r.stderr, r.stdout + r.stderr
