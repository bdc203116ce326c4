#!/usr/bin/env python3
"""The baseline slurm-vm's broadcast must never lose to: a plain pipelined chain, written for the benchmark.
Rank 0 streams the file to rank 1; every other rank writes what arrives to its copy and, in the same loop,
passes it on to the next rank, so all links carry the image at once (0 -> 1 -> ... -> N-1). One TCP stream
per link and direction, nothing else on the wire: on any port queue it runs at the link's TCP goodput,
plus N hops of pipeline fill. It does not verify (the benchmark hashes every copy afterwards) and has no
fault handling; one slow node slows everyone behind it.

    chain_relay.py --rank R --nodes A,B,C --port P (--src FILE | --dst FILE) [--start-at UNIX] [--json]
"""
import argparse
import json
import os
import socket
import sys
import time

BLOCK = 1 << 20


def listen(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(1)
    return s


def dial(host, port, deadline):
    while True:
        try:
            s = socket.create_connection((host, port), timeout=5)
            s.settimeout(None)   # blocking again: sendfile and sendall must wait for the link, not fail
            return s
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.01)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--nodes", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--src")
    ap.add_argument("--dst")
    ap.add_argument("--start-at", type=float)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    nodes = a.nodes.split(",")
    last = a.rank == len(nodes) - 1
    server = listen(a.port) if a.rank > 0 else None
    if a.start_at:
        time.sleep(max(0.0, a.start_at - time.time()))
    began = time.time()
    nxt = None if last else dial(nodes[a.rank + 1], a.port, began + 30)
    if a.rank == 0:
        with open(a.src, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            nxt.sendall(size.to_bytes(8, "little"))
            sent = 0
            while sent < size:
                sent += os.sendfile(nxt.fileno(), f.fileno(), sent, size - sent)
        nxt.shutdown(socket.SHUT_WR)
        nxt.recv(1)   # the next rank closes once it has everything
        print(json.dumps({"rank": 0, "seconds": time.time() - began}) if a.json else "sent")
        return
    prev, _ = server.accept()
    server.close()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    head = b""
    while len(head) < 8:
        part = prev.recv(8 - len(head))
        if not part:
            sys.exit(f"rank {a.rank}: the previous rank closed before the size")
        head += part
    size = int.from_bytes(head, "little")
    if nxt:
        nxt.sendall(head)
    got = 0
    with open(a.dst, "wb") as out:
        while got < size:
            n = prev.recv_into(view, min(BLOCK, size - got))
            if n == 0:
                sys.exit(f"rank {a.rank}: the stream ended at {got} of {size} bytes")
            if nxt:
                nxt.sendall(view[:n])
            out.write(view[:n])
            got += n
        out.flush()
        os.fsync(out.fileno())
    done = time.time()
    if nxt:
        nxt.shutdown(socket.SHUT_WR)
        nxt.recv(1)
    prev.close()
    print(json.dumps({"rank": a.rank, "seconds": done - began, "done_unix": done}) if a.json else "received")


if __name__ == "__main__":
    main()
