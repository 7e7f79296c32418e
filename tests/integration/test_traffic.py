"""`traffic.FlowEnds` against the kernel's own conntrack in a private pair of network namespaces.

Topology: client netns 192.0.2.1/24 (veth) <-> server netns 192.0.2.2/24. The client namespace
gets one nft rule that matches `ct state` (a namespace tracks connections only once some rule
needs conntrack) and runs the FlowEnds reader in a helper process that prints each FlowEnd as a
JSON line. Flows are ended with `conntrack -D` in the client namespace, because a natural end
waits for the protocol timeout *and* the kernel's conntrack garbage collector (up to 60 s more),
too slow for a test. Nothing here touches the root namespace's netfilter; namespaces and every
process started are removed in `finally`.

Byte formula: conntrack counts IP-layer bytes, headers included, once per skb it sees (a GSO
super-packet counts once). Every packet here carries a 20-byte IPv4 header without options, UDP
an 8-byte header, ICMP echo 8 bytes, and TCP a 20-60-byte header (options: MSS, timestamps, SACK):

    UDP, ICMP:  bytes == payload + 28 * packets                        (exact)
    TCP:        payload + 40 * packets <= bytes <= payload + 80 * packets
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snitchd.logwriter import conntrack as traffic
from tests.support.lab import Lines, end_child

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="makes network namespaces: needs root"),
    pytest.mark.skipif(
        not (shutil.which("nft") and shutil.which("conntrack")),
        reason="needs nft and conntrack (conntrack-tools) to drive the kernel",
    ),
]

PYTHON = sys.executable
DAEMON_DIR = str(Path(traffic.__file__).resolve().parents[2])
CLIENT_IP, SERVER_IP = "192.0.2.1", "192.0.2.2"
PORT = 9000
TCP_REPLY = 30_000  # bytes the server sends back on every TCP connection
IPV4, UDP_HDR, ICMP_HDR = 20, 8, 8
TCP_HDR_MIN, TCP_HDR_MAX = 20, 60

SERVER = f"""
import socket, threading
def tcp():
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("{SERVER_IP}", {PORT}))
    ls.listen(16)
    ready.set()
    while True:
        conn, _ = ls.accept()
        while conn.recv(65536):
            pass
        conn.sendall(b"s" * {TCP_REPLY})
        conn.close()
def udp():
    us = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    us.bind(("{SERVER_IP}", {PORT}))
    ready.set()
    while True:
        data, peer = us.recvfrom(65536)
        us.sendto(b"r" * max(1, len(data) // 2), peer)
ready = threading.Event()
for target in (tcp, udp):
    threading.Thread(target=target, daemon=True).start()
    ready.wait(); ready.clear()
print("ready", flush=True)
import sys; sys.stdin.read()
"""

READER = """
import asyncio, dataclasses, json, sys, time
from snitchd.logwriter.conntrack import FlowEnds, enable_accounting

def show(end):
    row = dataclasses.asdict(end)
    row.update(proto=end.proto.value, src=str(end.src), dst=str(end.dst), at=time.monotonic())
    print(json.dumps(row), flush=True)
    if sys.argv[2] == "raise":
        raise RuntimeError("on_end fails on purpose")

async def main():
    loop = asyncio.get_running_loop()
    ends = FlowEnds(show)
    ends.start(loop)
    print(json.dumps({"ready": True, "accounting": enable_accounting()}), flush=True)
    time.sleep(float(sys.argv[1]))  # a busy loop: events pile up in the socket buffer
    stop = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: stop.done() or stop.set_result(None))
    print(json.dumps({"listening": True}), flush=True)
    await stop
    print(json.dumps({"events": ends.events, "errors": ends.errors,
                      "unaccounted": ends.unaccounted}), flush=True)
    ends.close()

asyncio.run(main())
"""


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


class Pair:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.client = f"snt-{tag}-tc"
        self.server = f"snt-{tag}-ts"
        self.procs: list[subprocess.Popen[str]] = []

    def build(self) -> None:
        c, s = self.client, self.server
        run("ip", "netns", "add", c)
        run("ip", "netns", "add", s)
        run(
            "ip",
            "link",
            "add",
            "veth0",
            "netns",
            c,
            "type",
            "veth",
            "peer",
            "name",
            "veth0",
            "netns",
            s,
        )
        for ns, addr in ((c, CLIENT_IP), (s, SERVER_IP)):
            self.ns(ns, "ip", "addr", "add", f"{addr}/24", "dev", "veth0")
            self.ns(ns, "ip", "link", "set", "veth0", "up")
            self.ns(ns, "ip", "link", "set", "lo", "up")
        self.ns(
            c,
            "nft",
            "add table inet snitch_test; "
            "add chain inet snitch_test out { type filter hook output priority 0; }; "
            "add rule inet snitch_test out ct state new counter",
        )
        server = self.spawn(s, PYTHON, "-c", SERVER)
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"

    def ns(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", ns, *argv, check=check)

    def spawn(self, ns: str, *argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": DAEMON_DIR},
        )
        self.procs.append(proc)
        return proc

    def reader(self, stall: float = 0.0, on_end: str = "print") -> Lines:
        """A FlowEnds reader in the client namespace, subscribed and accounting when returned;
        `on_end` "raise" makes its callback raise after printing each end."""
        lines = Lines(self.spawn(self.client, PYTHON, "-c", READER, str(stall), on_end))
        hello = lines.next(10)
        assert hello == {"ready": True, "accounting": True}
        assert self.sysctl("net.netfilter.nf_conntrack_acct") == "1"
        return lines

    def client_py(self, code: str, *args: str) -> dict[str, Any]:
        done = self.ns(self.client, PYTHON, "-c", textwrap.dedent(code), *args)
        row: dict[str, Any] = json.loads(done.stdout)
        return row

    def sysctl(self, name: str, value: str | None = None) -> str:
        if value is not None:
            self.ns(self.client, "sysctl", "-qw", f"{name}={value}")
        return self.ns(self.client, "sysctl", "-n", name).stdout.strip()

    def conntrack(self, *argv: str) -> str:
        return self.ns(self.client, "conntrack", *argv, check=False).stdout

    def kernel_counters(self, *match: str) -> list[tuple[int, int]]:
        """[(packets, bytes) original, (packets, bytes) reply] as `conntrack -L` shows them."""
        text = self.conntrack("-L", *match)
        assert text.count("\n") == 1, f"expected one entry for {match}: {text!r}"
        pairs = re.findall(r"packets=(\d+) bytes=(\d+)", text)
        return [(int(p), int(b)) for p, b in pairs]

    def end_flow(self, *match: str) -> float:
        """Delete the entry; returns the monotonic time just before, for the event latency."""
        started = time.monotonic()
        out = self.ns(self.client, "conntrack", "-D", *match, check=False)
        assert "1 flow entries have been deleted" in out.stderr, out.stderr
        return started

    def destroy(self) -> None:
        try:
            for proc in self.procs:
                end_child(proc)
        finally:
            for ns in (self.client, self.server):
                run("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    pair = Pair()
    try:
        pair.build()
        yield pair
    finally:
        pair.destroy()


@pytest.fixture
def reader(pair: Pair) -> Iterator[Lines]:
    lines = pair.reader()
    try:
        assert lines.next(10) == {"listening": True}
        yield lines
    finally:
        end_child(lines.proc)
        pair.procs.remove(lines.proc)


def _check_tcp_bytes(payload: int, packets: int, count: int) -> None:
    low = payload + (IPV4 + TCP_HDR_MIN) * packets
    high = payload + (IPV4 + TCP_HDR_MAX) * packets
    assert low <= count <= high, f"{count} bytes in {packets} packets for {payload} payload bytes"


def test_tcp_flow_end_counts_ip_bytes_both_ways(pair: Pair, reader: Lines) -> None:
    """What `snitchctl top` shows for a TCP flow: payload plus per-packet headers, each way,
    equal to the kernel's own final counters and within the header formula of the payload."""
    sent = 100_000
    flow = pair.client_py(
        f"""
        import json, socket
        s = socket.create_connection(("{SERVER_IP}", {PORT}))
        s.sendall(b"c" * {sent})
        s.shutdown(socket.SHUT_WR)
        got = 0
        while chunk := s.recv(65536):
            got += len(chunk)
        print(json.dumps({{"sport": s.getsockname()[1], "got": got}}))
        s.close()
        """
    )
    assert flow["got"] == TCP_REPLY
    match = ("-p", "tcp", "--orig-port-src", str(flow["sport"]))
    deadline = time.monotonic() + 5  # the last ACK is counted once conntrack says TIME_WAIT
    while "TIME_WAIT" not in pair.conntrack("-L", *match):
        assert time.monotonic() < deadline, pair.conntrack("-L", *match)
        time.sleep(0.02)
    (packets_out, bytes_out), (packets_in, bytes_in) = pair.kernel_counters(*match)
    started = pair.end_flow(*match)
    end = reader.until({"proto": "tcp", "sport": flow["sport"]}, timeout=5)
    assert end["src"] == CLIENT_IP and end["dst"] == SERVER_IP and end["dport"] == PORT
    assert (end["packets_out"], end["bytes_out"]) == (packets_out, bytes_out)
    assert (end["packets_in"], end["bytes_in"]) == (packets_in, bytes_in)
    assert packets_out >= 3 and packets_in >= 3  # SYN, data, FIN / SYN-ACK, data, FIN at least
    _check_tcp_bytes(sent, packets_out, bytes_out)
    _check_tcp_bytes(TCP_REPLY, packets_in, bytes_in)
    assert end["at"] - started < 2, f"event came {end['at'] - started:.3f} s after conntrack -D"


def test_udp_flow_end_counts_every_datagram_exactly(pair: Pair, reader: Lines) -> None:
    """UDP headers are fixed, so the counters are exact: payload + 28 bytes per datagram."""
    sizes = [1, 100, 1000, 1400]
    flow = pair.client_py(
        f"""
        import json, socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.connect(("{SERVER_IP}", {PORT}))
        got = []
        for size in {sizes}:
            s.send(b"u" * size)
            got.append(len(s.recv(65536)))
        print(json.dumps({{"sport": s.getsockname()[1], "got": got}}))
        """
    )
    replies = [max(1, n // 2) for n in sizes]
    assert flow["got"] == replies
    started = pair.end_flow("-p", "udp", "--orig-port-src", str(flow["sport"]))
    end = reader.until({"proto": "udp", "sport": flow["sport"]}, timeout=5)
    assert end == end | {
        "src": CLIENT_IP,
        "dst": SERVER_IP,
        "dport": PORT,
        "packets_out": len(sizes),
        "bytes_out": sum(sizes) + (IPV4 + UDP_HDR) * len(sizes),
        "packets_in": len(replies),
        "bytes_in": sum(replies) + (IPV4 + UDP_HDR) * len(replies),
    }
    assert end["at"] - started < 2


def test_ping_flow_end_carries_echo_id_as_sport(pair: Pair, reader: Lines) -> None:
    """An ICMP echo flow joins its log row as `packet.decode` keyed it: sport = echo id."""
    count, size = 3, 56
    done = pair.ns(
        pair.client, "ping", "-c", str(count), "-i", "0.05", "-s", str(size), "-q", SERVER_IP
    )
    assert f"{count} received" in done.stdout, done.stdout
    listing = pair.conntrack("-L", "-p", "icmp", "--dst", SERVER_IP)
    echo_id = int(re.findall(r"id=(\d+)", listing)[0])
    pair.end_flow("-p", "icmp", "--dst", SERVER_IP, "--icmp-id", str(echo_id))
    end = reader.until({"proto": "icmp", "sport": echo_id}, timeout=5)
    per_packet = IPV4 + ICMP_HDR + size
    assert (end["dport"], end["packets_out"], end["bytes_out"]) == (0, count, count * per_packet)
    assert (end["packets_in"], end["bytes_in"]) == (count, count * per_packet)


def test_flow_begun_without_accounting_is_counted_not_reported(pair: Pair) -> None:
    """Counters are attached when a flow begins: one that began with nf_conntrack_acct=0 must not
    reach `on_end` as zero bytes (a lie in `top`), only as `unaccounted`."""
    lines = pair.reader()
    try:
        assert lines.next(10) == {"listening": True}
        pair.sysctl("net.netfilter.nf_conntrack_acct", "0")
        flow = pair.client_py(
            f"""
            import json, socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"x", ("{SERVER_IP}", {PORT}))
            print(json.dumps({{"sport": s.getsockname()[1]}}))
            """
        )
        pair.end_flow("-p", "udp", "--orig-port-src", str(flow["sport"]))
        time.sleep(0.3)
        assert lines.proc.stdin is not None
        lines.proc.stdin.close()
        final = lines.until({}, timeout=5)
        assert final == {"events": 0, "errors": 0, "unaccounted": 1}
    finally:
        pair.sysctl("net.netfilter.nf_conntrack_acct", "1")
        end_child(lines.proc)
        pair.procs.remove(lines.proc)


def test_on_end_raising_is_counted_and_later_ends_still_arrive(pair: Pair) -> None:
    """A bug in the caller's callback must not stop the reader nor escape into the loop."""
    lines = pair.reader(on_end="raise")
    try:
        assert lines.next(10) == {"listening": True}
        for payload in (b"one", b"two"):
            flow = pair.client_py(
                f"""
                import json, socket
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.sendto({payload!r}, ("{SERVER_IP}", {PORT}))
                print(json.dumps({{"sport": s.getsockname()[1]}}))
                """
            )
            pair.end_flow("-p", "udp", "--orig-port-src", str(flow["sport"]))
            end = lines.until({"sport": flow["sport"]}, timeout=5)
            assert end["bytes_out"] == IPV4 + UDP_HDR + len(payload)
        assert lines.proc.stdin is not None
        lines.proc.stdin.close()
        final = lines.until({"unaccounted": 0}, timeout=5)
        assert final == {"events": 2, "errors": 2, "unaccounted": 0}
        assert lines.proc.wait(5) == 0
    finally:
        end_child(lines.proc)
        pair.procs.remove(lines.proc)


def test_event_storm_overrun_is_counted_and_reader_goes_on(pair: Pair) -> None:
    """More flow ends than the socket buffer holds (ENOBUFS) lose events but neither stop the
    reader nor raise: the loss shows in `errors` and the next flow is still reported."""
    flows = 10_000
    lines = pair.reader(stall=3)  # the loop sleeps while the storm fills its buffer
    try:
        pair.client_py(
            f"""
            import json, socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for port in range(20000, 20000 + {flows}):
                s.sendto(b"x", ("{SERVER_IP}", port))
            print(json.dumps({{}}))
            """
        )
        assert "connection tracking table has been emptied" in (
            pair.ns(pair.client, "conntrack", "-F").stderr
        )
        assert lines.next(10) == {"listening": True}
        drained = lines.drain(quiet=1.0)  # a full buffer would drop the next event too
        assert 0 < drained < flows
        flow = pair.client_py(
            f"""
            import json, socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"after", ("{SERVER_IP}", 9))
            print(json.dumps({{"sport": s.getsockname()[1]}}))
            """
        )
        pair.end_flow("-p", "udp", "--orig-port-src", str(flow["sport"]))
        after = lines.until({"sport": flow["sport"], "dport": 9}, timeout=15)
        assert after["bytes_out"] == IPV4 + UDP_HDR + len("after")
        assert lines.proc.stdin is not None
        lines.proc.stdin.close()
        final = lines.until({"unaccounted": 0}, timeout=5)
        assert final["errors"] >= 1, final
        assert final["events"] == drained + 1, final
    finally:
        end_child(lines.proc)
        pair.procs.remove(lines.proc)
