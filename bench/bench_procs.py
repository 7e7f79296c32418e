"""How long `procs.Attributor.lookup` holds a packet, on a machine with many sockets.

500 forked children each hold 10 TCP connections and 10 connected UDP sockets on loopback
(10,000 sockets); then: the raw sock_diag exact lookup, the same with pyroute2's message classes,
warm lookups, and the cold paths (a socket never seen: /proc scan; a new process: psutil + sha256).
Then issue 12: what a miss costs the packet loop when the lookup is done inline (as before) and
when it is handed to the worker (`Attributor.begin`), and how late a 1 ms timer on the loop runs
while a socket is looked for behind 20 more processes of 3,000 fds each.
Issue 14 (`--attribution` runs only this part): the cost per flow of attribution with the BPF
recorder and without it, the same warm flows in one run: `begin()` on the loop (sock_diag, then
the recorder's map, or the inode cache and /proc stat), and the recorder's map read alone. The
recorder is attached to a cgroup made for the run (removed after), which the children join.
Prints figures, asserts nothing; `--json PATH` also writes them (bench/connbench.py reads them).
Run as root: python -m bench.bench_procs
"""

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import socket
import statistics
import sys
import tempfile
import time
from ipaddress import ip_address
from pathlib import Path

from pyroute2.netlink import NLM_F_REQUEST
from pyroute2.netlink.diag import SOCK_DIAG_BY_FAMILY, inet_diag_msg, inet_diag_req

from snitch_common.records import Attribution, Flow, Proto
from snitchd.procs import Attributor, Limits, Lookup, bpf, sockdiag
from tests.support.fdhog import hidden_behind

FIGURES: dict[str, dict[str, float]] = {}
CHILDREN = 500
TCP_PER_CHILD = 10
UDP_PER_CHILD = 10
LO = "127.0.0.1"


def spawn(listeners, udp_sink, pipes):
    """Fork a child that opens its sockets, reports their 5-tuples and waits for EOF."""
    release_fd, release_w, report_r, report_fd = pipes
    pid = os.fork()
    if pid:
        return pid
    try:
        os.close(release_w)  # else no child would ever see EOF
        os.close(report_r)
        held = []
        for i in range(TCP_PER_CHILD):
            held.append(socket.create_connection(listeners[i % len(listeners)].getsockname()))
        for _ in range(UDP_PER_CHILD):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect(udp_sink.getsockname())
            held.append(s)
        rows = [[s.type == socket.SOCK_STREAM, s.getsockname(), s.getpeername()] for s in held]
        os.write(report_fd, (json.dumps(rows) + "\n").encode())
        os.read(release_fd, 1)  # EOF once the bench closes its end, even if it crashed
    finally:
        os._exit(0)


def stats(label, samples_ns):
    us = sorted(x / 1000 for x in samples_ns)
    p99 = us[min(len(us) - 1, int(len(us) * 0.99))]
    FIGURES[label] = {
        "n": len(us),
        "median_us": round(statistics.median(us), 2),
        "p99_us": round(p99, 2),
        "max_us": round(us[-1], 2),
    }
    print(
        f"{label:52s} n={len(us):6d}  median {statistics.median(us):9.1f} µs"
        f"  p99 {p99:9.1f} µs  max {us[-1]:9.1f} µs"
    )


def timed(fn, args_list):
    out = []
    clock = time.perf_counter_ns
    for args in args_list:
        start = clock()
        fn(*args)
        out.append(clock() - start)
    return out


def pyroute2_lookup(sock, flow):
    """The same exact request, encoded and decoded with pyroute2's message classes."""
    req = inet_diag_req()
    req["header"]["type"] = SOCK_DIAG_BY_FAMILY
    req["header"]["flags"] = NLM_F_REQUEST
    req["header"]["sequence_number"] = 1
    req["sdiag_family"] = socket.AF_INET
    req["sdiag_protocol"] = socket.IPPROTO_TCP
    req["idiag_states"] = 0xFFFFFFFF
    req["idiag_sport"] = flow.sport
    req["idiag_dport"] = flow.dport
    req["idiag_src"] = (int(flow.src), 0, 0, 0)
    req["idiag_dst"] = (int(flow.dst), 0, 0, 0)
    req["idiag_if"] = 0
    req["idiag_cookie"] = 0xFFFFFFFFFFFFFFFF
    req.encode()
    sock.send(req.data)
    msg = inet_diag_msg(sock.recv(8192, socket.MSG_DONTWAIT))
    msg.decode()
    return msg["idiag_uid"], msg["idiag_inode"]


async def on_the_loop(att, flows):
    """The loop's share of a lookup: `begin` on a hit, and on a miss (hand-off only), against
    the whole lookup inline, as on_packet ran it before."""
    limits = Limits()
    for f in flows:
        att.lookup(f)
    stats(
        "loop: begin(), hit (cached socket and process)",
        timed(att.begin, [(f, limits) for f in flows]),
    )
    inline, handed = [], []
    for f in flows[:50]:
        att.forget()
        start = time.perf_counter_ns()
        att.lookup(f)
        inline.append(time.perf_counter_ns() - start)
        att.forget()
        start = time.perf_counter_ns()
        got = att.begin(f, limits)
        handed.append(time.perf_counter_ns() - start)
        if isinstance(got, Lookup):
            await got.future
    stats("loop: miss, whole lookup inline (before)", inline)
    stats("loop: miss, begin() hands off (after)", handed)


async def _lag_while(work):
    """Max lateness of a 1 ms timer on this loop while `work()` runs (a coroutine)."""
    lags = []
    stop = asyncio.Event()

    async def ticker():
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            due = loop.time() + 0.001
            await asyncio.sleep(0.001)
            lags.append(loop.time() - due)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    start = time.perf_counter()
    await work()
    took = time.perf_counter() - start
    stop.set()
    await task
    return max(lags) * 1e3, took * 1e3


def heavy_user(att):
    """20 processes of 3,000 fds forked after this one: a socket of ours is scanned for last."""
    with hidden_behind(20, 3000), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((LO, 9))
        f = Flow(Proto.UDP, ip_address(LO), s.getsockname()[1], ip_address(LO), 9)

        async def inline():
            att.forget()
            att.lookup(f)

        async def handed():
            att.forget()
            got = att.begin(f, Limits(timeout=30))
            if isinstance(got, Lookup):
                await got.future

        for label, work in (("inline (before)", inline), ("worker (after)", handed)):
            lag, took = asyncio.run(_lag_while(work))
            FIGURES[f"heavy user, {label}"] = {"max_lag_ms": round(lag, 2), "ms": round(took, 1)}
            print(
                f"{'20x3000 fds, lookup ' + label:52s} took {took:7.1f} ms,"
                f" loop max lag {lag:7.1f} ms"
            )


def _held_in(cgroup, count, pipes, listener):
    """A child in `cgroup` holding `count` TCP connections; reports their 5-tuples, then waits
    for EOF on the release pipe."""
    release_fd, release_w, report_r, report_fd = pipes
    pid = os.fork()
    if pid:
        return pid
    try:
        os.close(release_w)  # else no child would ever see EOF
        os.close(report_r)
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        held = [socket.create_connection(listener.getsockname()) for _ in range(count)]
        rows = [[s.getsockname(), s.getpeername()] for s in held]
        os.write(report_fd, (json.dumps(rows) + "\n").encode())
        os.read(release_fd, 1)
    finally:
        os._exit(0)


def with_and_without_bpf(children=50, per_child=20):
    """Issue 14: warm `begin()` per flow through the recorder and through /proc, same flows."""
    root = bpf.cgroup2_root()
    if root is None:
        print("no cgroup v2 mounted: BPF figures skipped")
        return
    cgroup = Path(root) / f"snitch-bench-{os.getpid()}"
    cgroup.mkdir()
    listener = socket.create_server((LO, 0), backlog=4096)
    release_r, release_w = os.pipe()
    report_r, report_w = os.pipe()
    pids, plain, recorded = [], None, None
    try:
        with tempfile.TemporaryDirectory() as state:
            recorder = bpf.Recorder(str(cgroup), bpf.build_object(Path(state)))
            recorded = Attributor(recorder=recorder)
            plain = Attributor()
            for _ in range(children):
                pipes = (release_r, release_w, report_r, report_w)
                pids.append(_held_in(cgroup, per_child, pipes, listener))
            flows = []
            with os.fdopen(os.dup(report_r), "r") as reports:
                for _ in range(children):
                    for local, remote in json.loads(reports.readline()):
                        src, dst = ip_address(local[0]), ip_address(remote[0])
                        flows.append(Flow(Proto.TCP, src, local[1], dst, remote[1]))

            async def measure():
                limits = Limits()
                for att in (plain, recorded):
                    for f in flows:  # warm: owners found, processes described and hashed
                        got = att.begin(f, limits)
                        if isinstance(got, Lookup):
                            await got.future
                for _ in range(2):
                    without = timed(plain.begin, [(f, limits) for f in flows])
                    with_bpf = timed(recorded.begin, [(f, limits) for f in flows])
                stats("issue 14: begin() per flow, warm, proc path", without)
                stats("issue 14: begin() per flow, warm, bpf path", with_bpf)
                sources = {recorded.begin(f, limits).source for f in flows}
                print(f"  bpf path sources: {sorted(str(s.value) for s in sources)}")

            asyncio.run(measure())
            found = plain._diag.find(flows[0])
            cookie = found[2] if found else 0
            stats(
                "issue 14: recorder map read alone (ctypes)",
                timed(recorder.find, [(cookie, flows[0])] * 2000),
            )
            stats(
                "issue 14: sock_diag exact lookup alone",
                timed(plain._diag.find, [(f,) for f in flows]),
            )
    finally:
        for att in (plain, recorded):
            if att is not None:
                att.close()  # detaches the recorder
        for fd in (release_w, report_w, release_r, report_r):
            os.close(fd)
        for pid in pids:
            os.waitpid(pid, 0)
        listener.close()
        for _ in range(50):  # a reaped child leaves its cgroup a moment later
            try:
                cgroup.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--attribution", action="store_true", help="only the with/without BPF comparison"
    )
    args = parser.parse_args()
    if args.attribution:
        with_and_without_bpf()
        if args.json is not None:
            args.json.write_text(json.dumps(FIGURES, indent=1))
        return
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # somaxconn caps one accept queue at 4096: spread the never-accepted connections.
    listeners = [socket.create_server((LO, 0), backlog=4096) for _ in range(2)]
    udp_sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_sink.bind((LO, 0))
    release_r, release_w = os.pipe()
    report_r, report_w = os.pipe()
    pids = []
    att = None
    began = time.monotonic()
    try:
        for _ in range(CHILDREN):
            pids.append(spawn(listeners, udp_sink, (release_r, release_w, report_r, report_w)))
        os.close(report_w)
        report_w = -1
        flows = []  # (flow, pid)
        with os.fdopen(report_r, "r") as reports:
            report_r = -1
            for _ in range(CHILDREN):
                for is_tcp, local, remote in json.loads(reports.readline()):
                    proto = Proto.TCP if is_tcp else Proto.UDP
                    src, dst = ip_address(local[0]), ip_address(remote[0])
                    flows.append(Flow(proto, src, local[1], dst, remote[1]))
        print(
            f"setup: {len(pids)} processes, {len(flows)} sockets in "
            f"{time.monotonic() - began:.1f} s"
        )
        rng = random.Random(7)
        att = Attributor()

        sample = rng.sample(flows, 2000)
        tcp = [f for f in sample if f.proto is Proto.TCP]
        udp = [f for f in sample if f.proto is Proto.UDP]
        diag_args = [
            (
                socket.AF_INET,
                socket.IPPROTO_TCP if f.proto is Proto.TCP else socket.IPPROTO_UDP,
                *(
                    (f.src.packed, f.sport, f.dst.packed, f.dport)
                    if f.proto is Proto.TCP
                    else (f.dst.packed, f.dport, f.src.packed, f.sport)
                ),
            )
            for f in sample
        ]
        for _ in range(3):
            raw = timed(att._diag.query, diag_args)
        stats("sock_diag exact lookup, struct codec", raw)
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, sockdiag.NETLINK_SOCK_DIAG)
        try:
            stats(
                "sock_diag exact lookup, pyroute2 classes",
                timed(lambda f: pyroute2_lookup(nl, f), [(f,) for f in tcp[:500]]),
            )
        finally:
            nl.close()

        # Cold: a socket nobody has looked up, in a process never seen (full /proc scan).
        cold = []
        for f in rng.sample(flows, 20):
            att.forget()
            start = time.perf_counter_ns()
            got = att.lookup(f)
            cold.append(time.perf_counter_ns() - start)
            assert got.attribution is Attribution.PROCESS
        stats("cold: /proc scan + psutil (exe hash cached)", cold)
        att.forget()
        start = time.perf_counter_ns()
        att._hashes.digest_now(os.getpid())
        size = os.stat(f"/proc/{os.getpid()}/exe").st_size
        print(
            f"sha256 of the python binary once ({size / 1e6:.1f} MB): "
            f"{(time.perf_counter_ns() - start) / 1e6:.1f} ms"
        )
        mru = []
        for f in rng.sample(flows, 200):
            att.lookup(f)  # its process becomes the hot one
            with att._owners._lock:
                att._owners._owners.clear()
            start = time.perf_counter_ns()
            att.lookup(f)
            mru.append(time.perf_counter_ns() - start)
        stats("new socket of the last-seen process (hot-pid scan)", mru)

        icmp = Flow(Proto.ICMP, ip_address(LO), 0, ip_address(LO), 0)
        stats("ICMP: /proc/net/{icmp,raw} read, no candidate", timed(att.lookup, [(icmp,)] * 500))

        for f in flows:  # warm every entry
            att.lookup(f)
        print(f"caches: {len(att._owners._owners)} inodes, {len(att._procs)} processes")
        for _ in range(2):
            warm_tcp = timed(att.lookup, [(f,) for f in tcp])
            warm_udp = timed(att.lookup, [(f,) for f in udp])
        stats("warm lookup, TCP", warm_tcp)
        stats("warm lookup, UDP", warm_udp)
        stats("warm lookup, all", warm_tcp + warm_udp)
        wrong = sum(att.lookup(f).pid is None for f in sample)
        print(f"unattributed in sample: {wrong}")
        FIGURES["unattributed in sample"] = {"count": wrong, "of": len(sample)}
        asyncio.run(on_the_loop(att, flows[:200]))
        heavy_user(att)
        with_and_without_bpf()
        if args.json is not None:
            args.json.write_text(json.dumps(FIGURES, indent=1))
    finally:
        if att is not None:
            att.close()
        for fd in (release_w, release_r, report_r, report_w):
            if fd >= 0:
                os.close(fd)
        deadline = time.monotonic() + 5
        for pid in pids:
            while True:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done or time.monotonic() > deadline:
                    break
                time.sleep(0.005)
            if not done:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        for s in (*listeners, udp_sink):
            s.close()
        print(f"total {time.monotonic() - began:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
