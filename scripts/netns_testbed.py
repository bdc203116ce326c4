"""A simulated cluster on one machine: N network namespaces joined by a bridge that lives in its own
namespace, each node's port shaped with tc (htb) in both directions. Only addresses created here are
used (10.77.0.0/24). Needs root. Used by Benchmarks/broadcast.py and Tests/broadcast.

    with Testbed(8, mbit=200) as tb:
        tb.run(3, ["slurm-vm", "broadcast", ...])   # inside node 3's namespace
"""
import os
import subprocess

PREFIX = "svmb"
# How a port queues packets waiting for the wire. Real switches and NICs differ here, and a transfer tuned
# to one kind can lose a third of the link on another:
#   prio  - htb, small packets (ACKs, requests) in a class of their own ahead of a 64-packet bulk FIFO:
#           a port with fair queueing, imitated (this kernel has no fq_codel, fq, sfq or cake)
#   bfifo - htb with one drop-tail FIFO of 10 ms at the port's rate (at least 128 KiB): ACKs wait behind
#           data, as on a NIC without fair queueing
#   tbf   - a token bucket holding 10 ms at the port's rate, drop-tail, and no classes at all
QUEUES = ("prio", "bfifo", "tbf")
QUEUE_MS = 10
ALLOWED_CC = "/proc/sys/net/ipv4/tcp_allowed_congestion_control"


def sh(*args, check=True):
    return subprocess.run(list(args), check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class Testbed:
    __test__ = False   # not a pytest class
    def __init__(self, n, mbit=200, slow=None, prefix=PREFIX, congestion=None, queue="prio"):
        """n nodes at `mbit` Mbit/s per port and direction; `slow` maps a node index to its own rate;
        `congestion` names the nodes' TCP congestion control (None: whatever the host's is); `queue` is
        how each port queues what waits for the wire (QUEUES)."""
        if queue not in QUEUES:
            raise ValueError(f"unknown port queue {queue!r}: one of {', '.join(QUEUES)}")
        self.n, self.mbit, self.slow, self.prefix = n, mbit, dict(slow or {}), prefix
        self.congestion, self.queue = congestion, queue
        self.allowed_before = None
        self.hub = f"{prefix}-hub"

    def ns(self, i):
        return f"{self.prefix}-n{i}"

    def addr(self, i):
        return f"10.77.0.{i + 1}"

    def __enter__(self):
        self.destroy()
        sh("ip", "netns", "add", self.hub)
        sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.hub, "link", "set", "br0", "up")
        for i in range(self.n):
            ns = self.ns(i)
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "link", "add", f"{self.prefix}h{i}", "netns", self.hub, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", self.hub, "link", "set", f"{self.prefix}h{i}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            rate = self.slow.get(i, self.mbit)
            # Upload: the node's own egress. Download: the hub's egress towards the node.
            for where, dev in ((ns, "eth0"), (self.hub, f"{self.prefix}h{i}")):
                self.shape(where, dev, rate, self.queue)
        if self.congestion:
            try:
                self.set_congestion(self.congestion)
            except BaseException:
                self.destroy()      # __exit__ is not called when __enter__ raises
                raise
        return self

    def set_congestion(self, algo):
        """A namespace may only pick an algorithm the host allows (EPERM otherwise), so the host's
        allowed list gains it for the testbed's lifetime and is restored by destroy()."""
        if algo not in open("/proc/sys/net/ipv4/tcp_available_congestion_control").read().split():
            sh("modprobe", f"tcp_{algo}", check=False)
        allowed = open(ALLOWED_CC).read().split()
        if algo not in allowed:
            self.allowed_before = " ".join(allowed)
            with open(ALLOWED_CC, "w") as f:
                f.write(" ".join(allowed + [algo]))
        for i in range(self.n):
            sh("ip", "netns", "exec", self.ns(i), "sysctl", "-qw", f"net.ipv4.tcp_congestion_control={algo}")

    @staticmethod
    def shape(where, dev, rate, queue="prio"):
        """`queue` prio: htb at `rate` with two classes under it: pure ACKs (IP packets under 128 bytes) first, then
        the bulk in a short FIFO. Without the first, a node's ACKs wait behind its own uploads and its
        downloads starve; without the second, htb's 1000-packet default queue adds 60 ms of delay.
        (This kernel has no fq_codel or sfq.)"""
        def tc(*a):
            sh("tc", "-n", where, *a)
        # Bytes the port holds: QUEUE_MS at its rate, but at least two 64 KiB GSO packets. The stack hands
        # the qdisc segments of up to 64 KiB, and a byte FIFO shorter than one drops every such segment:
        # at 40 Mbit/s, 10 ms is 50 KB, and TCP then crawled on retransmission timeouts.
        depth = max(2 * 65536, rate * 1_000_000 // 8 * QUEUE_MS // 1000)
        if queue == "tbf":
            # The bucket holds more than one 64 KiB GSO segment: tbf splits any packet larger than its
            # bucket into MTU-sized ones in software, which took 4x the CPU of the other queues here.
            tc("qdisc", "add", "dev", dev, "root", "handle", "1:", "tbf", "rate", f"{rate}mbit", "burst", "128k",
               "limit", str(depth + 131072))   # tbf counts its bucket in the limit
            return
        if queue == "bfifo":
            tc("qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1")
            tc("class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", f"{rate}mbit", "ceil", f"{rate}mbit",
               "burst", "64k", "cburst", "64k")
            tc("qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "bfifo", "limit", str(depth))
            return
        tc("qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "20")
        tc("class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", f"{rate}mbit", "ceil", f"{rate}mbit",
           "burst", "64k", "cburst", "64k")
        tc("class", "add", "dev", dev, "parent", "1:1", "classid", "1:10", "htb", "rate", f"{max(1, rate // 10)}mbit",
           "ceil", f"{rate}mbit", "prio", "0")
        tc("class", "add", "dev", dev, "parent", "1:1", "classid", "1:20", "htb", "rate", f"{rate - max(1, rate // 10)}mbit",
           "ceil", f"{rate}mbit", "prio", "1", "burst", "64k", "cburst", "64k")
        tc("qdisc", "add", "dev", dev, "parent", "1:20", "handle", "20:", "pfifo", "limit", "64")
        tc("filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
           "match", "u16", "0x0000", "0xff80", "at", "2", "flowid", "1:10")

    def __exit__(self, *exc):
        self.destroy()

    def destroy(self):
        out = sh("ip", "netns", "list", check=False).stdout
        for line in out.splitlines():
            name = line.split()[0] if line.split() else ""
            if name == self.hub or name.startswith(self.prefix + "-n"):
                sh("ip", "netns", "del", name, check=False)
        if self.allowed_before is not None:
            with open(ALLOWED_CC, "w") as f:
                f.write(self.allowed_before)
            self.allowed_before = None

    def popen(self, i, argv, **kw):
        return subprocess.Popen(["ip", "netns", "exec", self.ns(i)] + list(argv), **kw)
