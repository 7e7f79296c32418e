"""Issue 21: a connecting TCP socket is attributed from the record the kernel keeps under the flow
itself (`attrib.bpf.c`'s sock_ops program, `Recorder.find_connected`), with no sock_diag request
on the packet loop; and a 4-tuple used again later never names the earlier socket's task.

What snitchd asks sock_diag is watched from outside, with strace on the real daemon: strace
decodes each netlink request (or shows its raw bytes: family, protocol). A UDP datagram, still
looked up by sock_diag, shows the trace sees the packet loop's requests, so "no TCP request" is
not the trace missing them.

Before the change (the parent of this branch): every TCP flow was one IPPROTO_TCP request; without
the record's deletion at TCP_CLOSE, the reused 4-tuple's flow was named by the earlier socket's
program (python, source bpf) instead of curl.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import (
    AS_NOBODY,
    PYTHON,
    Lab,
    curl_exe,
    python_exe,
    rows_like,
    run_in,
)
from tests.support.lab import stop_process, wait_for

pytestmark = pytest.mark.root

SERVER = "192.0.2.2"
SERVER6 = "2001:db8:1::2"


SEND_UDP = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"x", (sys.argv[1], int(sys.argv[2])))
print(s.getsockname()[1])
"""


CONNECT_MAPPED = """
import select, socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)  # dual-stack, to an IPv4 peer
s.setblocking(False)
try:
    s.connect(("::ffff:" + sys.argv[1], 9000))
except BlockingIOError:
    pass
print(s.getsockname()[1], flush=True)
select.select([], [s], [], 3)  # open until its SYN is decided (rejected: a reset)
"""


class Trace:
    """strace on snitchd (every thread), its decoded sendto() calls in a file."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            ["strace", "-f", "-e", "trace=sendto", "-e", "signal=none", "-s", "4", "-xx",
             "-o", str(out), "-p", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "Process N attached"
        if "attached" not in line:
            self.stop()
            raise AssertionError(f"strace did not attach to snitchd: {line}")

    def requests(self, protocol: int) -> int:
        """sock_diag requests for `protocol` so far: decoded by strace where it can tell the
        fd's netlink family (`sdiag_protocol=IPPROTO_TCP`), else raw after the header (family,
        then protocol: `\\x02\\x06...`; strace asks sock_diag in its own namespace, not
        snitchd's, so it often cannot)."""
        text = self.out.read_text(errors="replace") if self.out.exists() else ""
        name = {6: "TCP", 17: "UDP"}[protocol]
        raw = re.compile(rf'nlmsg_type=0x14 .*\}}, "\\x0[2a]\\x{protocol:02x}')
        return sum(
            1 for x in text.splitlines() if f"sdiag_protocol=IPPROTO_{name}" in x or raw.search(x)
        )

    def stop(self) -> None:
        stop_process(self.proc)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_tcp_flow_is_attributed_without_a_sock_diag_request(
    lab_bpf: Lab, cgroup: Path, tmp_path: Path
) -> None:
    """curl run by uid 65534 (IPv4 twice, IPv6 once), allowed by rule, and python's dual-stack
    socket connecting to an IPv4 address: named curl, uid 65534, and python, source bpf, with
    no IPPROTO_TCP sock_diag request; a datagram sent meanwhile is looked up by sock_diag."""
    lab_bpf.add_rule(f"allow app={curl_exe()}")
    assert lab_bpf.daemon is not None
    trace = Trace(lab_bpf.daemon.pid, tmp_path / "trace")
    try:
        sport = int(run_in(lab_bpf, cgroup, PYTHON, "-c", SEND_UDP, SERVER, "9000"))
        rows_like(lab_bpf, 1, proto="udp", sport=sport)
        wait_for(lambda: trace.requests(17) > 0, 10, "the datagram's request")
        curl = [curl_exe(), "-s", "-o", "/dev/null", "--max-time", "3"]
        for url in (f"http://{SERVER}:80/", f"http://{SERVER}:80/", f"http://[{SERVER6}]:80/"):
            run_in(lab_bpf, cgroup, *AS_NOBODY, *curl, url)
        mapped = int(run_in(lab_bpf, cgroup, PYTHON, "-c", CONNECT_MAPPED, SERVER))
        rows = rows_like(lab_bpf, 3, proto="tcp", dport=80)
        by_python = rows_like(lab_bpf, 1, proto="tcp", dport=9000, sport=mapped)
    finally:
        trace.stop()
    assert [(r["exe"], r["uid"], r["source"], r["action"]) for r in rows] == [
        (curl_exe(), 65534, "bpf", "allow")
    ] * 3, rows
    assert sorted(str(r["dst"]) for r in rows) == sorted([SERVER, SERVER, SERVER6]), rows
    assert [(r["exe"], r["uid"], r["source"]) for r in by_python] == [(python_exe(), 0, "bpf")], (
        by_python
    )
    assert trace.requests(6) == 0, [x for x in trace.out.read_text().splitlines() if "0x14" in x]


HOLD_AND_RESET = """
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.settimeout(3)
try:
    s.connect((sys.argv[1], 80))
except OSError as exc:
    print(exc, file=sys.stderr)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()  # a reset: no TIME_WAIT, the 4-tuple is free at once
"""


def test_a_reused_four_tuple_never_names_the_earlier_socket(lab_bpf: Lab, cgroup: Path) -> None:
    """python (hooked) connects from port P and resets; curl from outside the hooked cgroup (no
    record of its own) then connects from P to the same destination at once: curl's flow is
    curl's (found by sock_diag and /proc), never python's. Five rounds, five ports."""
    lab_bpf.add_rule(f"allow app={python_exe()}")
    curl = [curl_exe(), "-s", "-o", "/dev/null", "--max-time", "3"]
    for round_ in range(5):
        port = 42000 + round_
        run_in(lab_bpf, cgroup, PYTHON, "-c", HOLD_AND_RESET, SERVER, str(port))
        first = rows_like(lab_bpf, 1, proto="tcp", sport=port)
        assert [(r["exe"], r["source"]) for r in first] == [(python_exe(), "bpf")], first
        run_in(lab_bpf, None, *curl, "--local-port", str(port), f"http://{SERVER}:80/")
        rows = rows_like(lab_bpf, 2, proto="tcp", sport=port)
        assert sorted((str(r["exe"]), str(r["source"])) for r in rows) == sorted(
            [(python_exe(), "bpf"), (curl_exe(), "sock_diag")]
        ), (round_, rows)
