"""slurm-vm broadcast on a testbed of network namespaces (scripts/netns_testbed.py): real processes, real
TCP, shaped links. Needs root; says SKIPPED otherwise. Files are small so the suite stays quick; the
rates are lowered where a fault must land mid-transfer.

    SLURM_VM_BIN=.build/release/slurm-vm python3 -m pytest -q Tests/broadcast
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
from netns_testbed import QUEUES, Testbed  # noqa: E402

BIN = os.environ.get("SLURM_VM_BIN") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".build", "release", "slurm-vm")

if os.geteuid() != 0:
    pytest.skip("SKIPPED: the broadcast tests need root for network namespaces and tc", allow_module_level=True)


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


@pytest.fixture
def work():
    d = tempfile.mkdtemp(prefix="svmb-test-", dir="/dev/shm")
    yield d
    subprocess.run(["umount", "-q", os.path.join(d, "small")], stderr=subprocess.DEVNULL)
    shutil.rmtree(d, ignore_errors=True)


def image(work, mib, name="image"):
    path = os.path.join(work, name)
    with open(path, "wb") as f:
        f.write(os.urandom(int(mib * (1 << 20)) + 4321))   # not a whole number of chunks
    return path, digest(path)


def start(tb, src, work, want, extra=None, dst=None, chunk="256K", timeout=30, schedule="auto"):
    nodes = ",".join(tb.addr(i) for i in range(tb.n))
    procs = []
    for i in range(tb.n):
        argv = [BIN, "broadcast", "--rank", str(i), "--nodes", nodes, "--port", "17600", "--json",
                "--chunk-size", chunk, "--timeout", str(timeout), "--digest", want, "--schedule", schedule]
        argv += ["--src", src] if i == 0 else ["--dst", (dst or {}).get(i, os.path.join(work, f"copy{i}"))]
        argv += (extra or {}).get(i, [])
        procs.append(tb.popen(i, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs, timeout=120):
    out = []
    for p in procs:
        o, e = p.communicate(timeout=timeout)
        rep = json.loads(o.strip().splitlines()[-1]) if p.returncode == 0 and o.strip() else {}
        out.append((p.returncode, rep, e))
    return out


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_every_node_gets_a_verified_copy(work, n):
    src, want = image(work, 6)
    with Testbed(n, mbit=400) as tb:
        results = finish(start(tb, src, work, want))
    # The default: the relay while its depth (n - 1 chunks) is a sixteenth of the 25 chunks at most.
    chosen = "relay" if (n - 1) * 16 <= 25 else "twotree"
    for i, (rc, rep, err) in enumerate(results):
        assert rc == 0, f"rank {i}: {err}"
        assert rep["schedule"] == chosen, rep
    for i in range(1, n):
        assert digest(os.path.join(work, f"copy{i}")) == want
    assert not [f for f in os.listdir(work) if f.startswith(".partial")]


# The fault tests run on every kind of port queue the testbed has, with each schedule the default may
# choose (the two trees and the relay) and with the pipeline, under cubic; and the default's two
# schedules under BBR too (queue x congestion control: the variants of issue 21). The other tests run
# the default (auto).
VARIANTS = [(q, s, "cubic") for s in ("pipeline", "twotree", "relay") for q in QUEUES] + [
    (q, s, "bbr") for s in ("twotree", "relay") for q in QUEUES
]


@pytest.mark.parametrize("queue,schedule,congestion", VARIANTS)
def test_a_node_killed_mid_transfer_does_not_stop_the_others(work, queue, schedule, congestion):
    src, want = image(work, 12)
    with Testbed(6, mbit=40, queue=queue, congestion=congestion) as tb:           # 12 MiB at 40 Mbit/s: about 2.5 s
        procs = start(tb, src, work, want, schedule=schedule)
        time.sleep(1.2)
        procs[3].send_signal(signal.SIGKILL)
        results = finish(procs)
    for i, (rc, rep, err) in enumerate(results):
        if i == 3:
            assert rc == -signal.SIGKILL
        else:
            assert rc == 0, f"rank {i}: {err}"
    for i in (1, 2, 4, 5):
        assert digest(os.path.join(work, f"copy{i}")) == want
    # The killed node's copy never appeared under its name.
    assert not os.path.exists(os.path.join(work, "copy3"))


@pytest.mark.parametrize("queue,schedule,congestion", VARIANTS)
def test_a_corrupted_chunk_is_detected_and_fetched_again(work, queue, schedule, congestion):
    src, want = image(work, 4)
    with Testbed(4, mbit=400, queue=queue, congestion=congestion) as tb:
        results = finish(start(tb, src, work, want, extra={0: ["--corrupt", "0,3,7"], 2: ["--corrupt", "5"]}, schedule=schedule))
    assert all(rc == 0 for rc, _, _ in results), [e for _, _, e in results]
    assert sum(rep.get("corrupted", 0) for _, rep, _ in results) >= 3
    for i in range(1, 4):
        assert digest(os.path.join(work, f"copy{i}")) == want


def test_a_full_disk_is_a_clear_error_and_leaves_no_file(work):
    src, want = image(work, 4)
    small = os.path.join(work, "small")
    os.makedirs(small)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small], check=True)
    with Testbed(3, mbit=400) as tb:
        results = finish(start(tb, src, work, want, dst={2: os.path.join(small, "copy2")}, timeout=10))
    rc, _, err = results[2]
    assert rc == 1 and "not enough space" in err, err
    assert os.listdir(small) == []
    assert results[1][0] == 0 and digest(os.path.join(work, "copy1")) == want


@pytest.mark.parametrize("queue,schedule,congestion", VARIANTS)
def test_a_slow_node_finishes_and_so_do_the_others(work, queue, schedule, congestion):
    src, want = image(work, 8)
    with Testbed(8, mbit=200, slow={4: 50}, queue=queue, congestion=congestion) as tb:
        results = finish(start(tb, src, work, want, schedule=schedule))
    assert all(rc == 0 for rc, _, _ in results), [e for _, _, e in results]
    for i in range(1, 8):
        assert digest(os.path.join(work, f"copy{i}")) == want


@pytest.mark.parametrize("queue,schedule,slow", [(q, s, n) for s, n in (("twotree", 2), ("relay", 3)) for q in QUEUES])
def test_a_slow_inner_rank_trades_places_with_the_spare_leaf(work, queue, schedule, slow):
    """Two trees at 8 nodes: rank 2 forwards stripe 0 to ranks 4 (the spare leaf) and 5. At a quarter of
    the rate it falls 16 MiB behind both its parents, tells everyone, and trades places with rank 4;
    the new edges (4 to 5, 2 under 4) are dialed mid-transfer. The relay: rank 3 falls 8 MiB behind
    rank 2 and trades places with rank 7, the chain's end (2 to 7, 7 to 4, 6 to 3 are dialed)."""
    src, want = image(work, 64)
    with Testbed(8, mbit=200, slow={slow: 50}, queue=queue) as tb:
        results = finish(start(tb, src, work, want, schedule=schedule, timeout=60))
    assert all(rc == 0 for rc, _, _ in results), [e for _, _, e in results]
    for i in range(1, 8):
        assert digest(os.path.join(work, f"copy{i}")) == want
    replanned = [rep.get("replanned_slow") for _, rep, _ in results]
    assert replanned[slow] == slow and all(r in (slow, -1) for r in replanned), replanned


def test_the_wrong_image_is_refused(work):
    src, want = image(work, 1)
    other = "sha256:" + "0" * 64
    with Testbed(2, mbit=400) as tb:
        procs = start(tb, src, work, want)
        procs[0].wait(timeout=30)
        results = finish(procs)
    assert results[1][0] == 0
    with Testbed(2, mbit=400) as tb:
        procs = start(tb, src, work, other, timeout=5, extra={1: ["--dial-timeout", "5"]})
        results = finish(procs, timeout=60)
    assert results[0][0] == 1 and "not the expected" in results[0][2], results[0][2]
    assert results[1][0] == 1 and "no neighbor offered the image" in results[1][2], results[1][2]
    assert not os.path.exists(os.path.join(work, "copy1")) or digest(os.path.join(work, "copy1")) == want


@pytest.mark.parametrize("args,message", [
    (["--rank", "3", "--nodes", "a,b", "--src", "/x"], "not a position"),
    (["--rank", "0", "--nodes", "a,b"], "give --src"),
    (["--rank", "1", "--nodes", "a,b"], "give --dst"),
    (["--rank", "0", "--nodes", "a", "--src", "/x", "--schedule", "ring"], "must be auto or one of"),
    (["--rank", "0", "--nodes", "a", "--src", "/x", "--chunk-size", "1X"], "is not a size"),
])
def test_bad_input_is_explained(args, message):
    r = subprocess.run([BIN, "broadcast"] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 64 or r.returncode == 2, r
    assert message in r.stderr, r.stderr
