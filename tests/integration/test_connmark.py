"""A decided flow is never queued again (issue 12): its verdict lives on its conntrack entry.

A one-way UDP flow stays conntrack NEW until a reply comes, and a dropped SYN never gets one, so
before this every datagram and every retransmitted SYN went through the queue, Python and the
log. These tests flood one flow and count three things: the rows `snitchctl log` shows, the
datagrams the server's kernel received (its `NoPorts` counter: the port is closed, so nothing
answers and the flow stays one-way), and the packets snitchd was handed (`status.seen`). The
kernel is read with `iptables-save -c` in the client namespace, once per iptables flavour.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import Popen
from typing import TypeVar

import pytest

from conftest import HERE, PYTHON, Lab, python_exe
from snitchd.netfilter import ALLOW_MARK, MARK_MASK
from snitchd.queue import kernel_stats
from tests.integration.readerparams import READERS
from tests.support.lab import wait_for

NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
# IPv4, and IPv6 as a slow extra where the socket match's own IPv6 path is not what is tested
# (.ci/run runs it after the suite).
HOSTS = ["192.0.2.2", pytest.param("2001:db8:1::2", marks=pytest.mark.slow)]
T = TypeVar("T")
SINK = 9999  # nothing listens here in the server namespace: the flow stays one-way
DATAGRAMS = 1000

# One unconnected socket, so one flow. With "wait" it sends its first datagram, then waits for a
# line on stdin before the rest. EPERM is the kernel dropping a datagram on the spot.
_FLOOD = """
import socket, sys
host, port, count, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "wait"
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("::" if ":" in host else "0.0.0.0", 0))
sent = refused = 0
for i in range(count):
    try:
        s.sendto(b"%d" % i, (host, port))
        sent += 1
    except PermissionError:
        refused += 1
    if i == 0 and wait:
        print(s.getsockname()[1], flush=True)
        sys.stdin.readline()
print(s.getsockname()[1], sent, refused, flush=True)
"""


def _no_ports(lab: Lab, v6: bool) -> int:
    """UDP datagrams the server's kernel received for a closed port (per namespace)."""
    if v6:
        text = lab.ns(lab.server, "cat", "/proc/net/snmp6").stdout
        return int(re.search(r"^Udp6NoPorts\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    lines = [ln.split() for ln in lab.ns(lab.server, "cat", "/proc/net/snmp").stdout.splitlines()]
    names, values = [ln for ln in lines if ln[0] == "Udp:"][:2]
    return int(values[names.index("NoPorts")])


def _settled(lab: Lab) -> dict[str, int]:
    """Status once the kernel holds no packet for snitchd: every verdict given, rows recorded."""
    status: dict[str, int] = {}

    def idle() -> bool:
        status.update(lab.ctl_json("status"))
        return status.get("kernel_held", 0) == 0

    wait_for(idle, 20, "the queue to drain")
    return status


def _flood(lab: Lab, host: str, *, user: tuple[str, ...] = ()) -> int:
    """Send a thousand datagrams of one flow at once; returns its source port."""
    out = lab.client_run(*user, PYTHON, "-c", _FLOOD, host, str(SINK), str(DATAGRAMS), "go")
    return int(out.split()[0])


def _rows(lab: Lab, sport: int) -> list[dict[str, object]]:
    return [r for r in lab.log_rows() if r["sport"] == sport and r["dport"] == SINK]


def _decided_then_flood(
    lab: Lab, host: str, user: tuple[str, ...], between: Callable[[], T]
) -> tuple[int, int, int, T]:
    """One flow's first datagram, and once its row is there (it is decided) `between()`, then
    the rest of the thousand at once: its source port, the datagrams sent and refused (EPERM),
    and what `between` returned."""
    argv = ["ip", "netns", "exec", lab.client, *user, PYTHON, "-c", _FLOOD]
    with subprocess.Popen(
        [*argv, host, str(SINK), str(DATAGRAMS), "wait"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as flood:
        assert flood.stdin is not None and flood.stdout is not None
        try:
            sport = int(flood.stdout.readline())
            wait_for(lambda: _rows(lab, sport), 10, "the first datagram's row")
            got = between()
            flood.stdin.write("go\n")
            flood.stdin.flush()
            _, sent, refused = map(int, flood.stdout.readline().split())
        finally:
            flood.kill()
    return sport, sent, refused, got


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize(("action", "delivered"), [("allow", DATAGRAMS), ("reject", 0)])
def test_udp_flood_of_one_flow_is_one_row(
    running: Lab, host: str, action: str, delivered: int
) -> None:
    """A thousand datagrams of one unanswered flow: one log row, and the verdict held for all of
    them (all delivered when allowed, none when rejected)."""
    running.add_rule(f"{action} app={python_exe()} port={SINK} proto=udp")
    v6 = ":" in host
    before = _no_ports(running, v6)
    sport = _flood(running, host)
    _settled(running)
    rows = _rows(running, sport)
    assert [r["action"] for r in rows] == [action]
    assert _no_ports(running, v6) - before == delivered


@pytest.mark.parametrize("host", HOSTS)
def test_denied_udp_flood_is_one_row_and_never_reaches_the_server(running: Lab, host: str) -> None:
    """An unprivileged sender's flow, denied by default: one row, and not one of its thousand
    datagrams reaches the server, before or after its verdict is kept by the kernel."""
    v6 = ":" in host
    before = _no_ports(running, v6)
    sport = _flood(running, host, user=NOBODY)
    _settled(running)
    assert [r["action"] for r in _rows(running, sport)] == ["deny"]
    assert _no_ports(running, v6) - before == 0


def test_denied_tcp_connect_with_retransmitted_syns_is_one_row(running: Lab) -> None:
    """A dropped SYN is sent again after 1 s and 3 s (Linux's initial RTO): one row, not three,
    and the connect still times out. The retransmissions come back to snitchd (a SYN is always
    queued: a SYN on a decided flow's ports may be another socket's, see the two tests below),
    which gives them the first one's verdict."""
    seen = _settled(running)["seen"]
    assert running.py("tcp", "192.0.2.2", 9000, "--timeout", "3.5") == "timeout"
    assert _settled(running)["seen"] >= seen + 3
    rows = [r for r in running.log_rows() if r["dport"] == 9000 and r["proto"] == "tcp"]
    assert [r["action"] for r in rows] == ["deny"]


def test_a_denied_connect_does_not_block_another_user_s_from_the_same_port(running: Lab) -> None:
    """A conntrack entry is a tuple, not a socket: uid 65534's denied SYN left a DENY entry for
    120 s, and root's connect from the same local port to the same place was taken for its
    retransmission and dropped in the kernel, never asked about (trying every local port, one
    user blocked everyone's connects to a place: bench.disturb window 11). Now root's SYN is
    decided, by root's own rule."""
    running.add_rule(f"allow app={python_exe()} user=root to=192.0.2.2 port=80")
    sport = 47001
    assert running.client_run(
        *NOBODY, PYTHON, str(HERE / "netclient.py"), "tcp", "192.0.2.2", "80",
        "--sport", str(sport), "--timeout", "1",
    ) == "timeout"  # fmt: skip
    assert running.py("tcp", "192.0.2.2", 80, "--sport", str(sport), "--timeout", "5") == (
        "connected"
    )
    rows = [r for r in running.log_rows() if r["sport"] == sport]
    assert sorted((r["uid"], r["action"]) for r in rows) == [(0, "allow"), (65534, "deny")]


def test_a_program_cannot_take_another_s_allow_by_its_ports(running: Lab) -> None:
    """Root's allowed SYN that nobody answered left an ALLOW entry in SYN_SENT; uid 65534,
    denied, connected from the same local port to the same place, and conntrack took its SYN
    for root's retransmission: it passed on root's verdict, undecided, and connected once the
    server answered. Now its SYN is decided by its own (missing) rule: denied."""
    running.add_rule(f"allow app={python_exe()} user=root to=192.0.2.2 port=80")
    sport = 47002
    drop = ["-p", "tcp", "--dport", "80", "--sport", str(sport), "-j", "DROP"]
    running.ns(running.server, "iptables", "-I", "INPUT", *drop)
    try:
        assert running.py("tcp", "192.0.2.2", 80, "--sport", str(sport), "--timeout", "1") == (
            "timeout"
        )
    finally:
        running.ns(running.server, "iptables", "-D", "INPUT", *drop)
    assert running.client_run(
        *NOBODY, PYTHON, str(HERE / "netclient.py"), "tcp", "192.0.2.2", "80",
        "--sport", str(sport), "--timeout", "3",
    ) == "timeout"  # fmt: skip
    rows = [r for r in running.log_rows() if r["sport"] == sport]
    assert sorted((r["uid"], r["action"]) for r in rows) == [(0, "allow"), (65534, "deny")]


def _udp_from(lab: Lab, sport: int, *user: str, host: str = "192.0.2.2") -> str:
    """A connected UDP socket bound to `sport` asks the server's echo (the client's word)."""
    return lab.client_run(
        *user, PYTHON, str(HERE / "netclient.py"), "udp", host, "9000",
        "--sport", str(sport), "--timeout", "1",
    )  # fmt: skip


def _who_was_decided(lab: Lab, sport: int) -> list[tuple[object, object]]:
    return sorted((r["uid"], r["action"]) for r in lab.log_rows() if r["sport"] == sport)


@pytest.mark.parametrize("host", ["192.0.2.2", "2001:db8:1::2"])
def test_a_program_cannot_take_another_s_udp_allow_by_its_port(running: Lab, host: str) -> None:
    """Root's allowed UDP flow stays in conntrack (with its allow) for 30 s after root's socket
    closed. uid 65534, denied, bound the same local port and sent to the same place: its
    datagrams passed on root's verdict, undecided (a datagram has no SYN to decide afresh).
    Now the socket match sends them to the queue: its socket was never decided."""
    running.add_rule(f"allow app={python_exe()} user=root to={host} port=9000")
    sport = 47003
    assert _udp_from(running, sport, host=host) == "reply"
    assert _udp_from(running, sport, *NOBODY, host=host) == "timeout"
    assert _who_was_decided(running, sport) == [(0, "allow"), (65534, "deny")]


def test_a_denied_datagram_does_not_block_another_user_s_from_the_same_port(
    running: Lab,
) -> None:
    """uid 65534's denied datagram left a DENY entry for 30 s, and root's socket on the same
    local port, to the same place, had its datagrams dropped in the kernel, never decided:
    one user sending from many ports to one place (the DNS server) blocked everyone's. Now
    root's socket is decided by root's own rule."""
    running.add_rule(f"allow app={python_exe()} user=root to=192.0.2.2 port=9000")
    sport = 47004
    assert _udp_from(running, sport, *NOBODY) == "timeout"
    assert _udp_from(running, sport) == "reply"
    assert _who_was_decided(running, sport) == [(0, "allow"), (65534, "deny")]


def test_a_denied_socket_sharing_a_live_port_does_not_stop_its_owner(running: Lab) -> None:
    """A service's socket that binds with SO_REUSEADDR (mDNS on 5353) lets a user's socket
    bind the same port and send to the same place: one conntrack entry for both. uid 65534's
    socket is decided (denied) and the entry's verdict became that deny: root's socket, still
    open and recorded as decided, passed no more datagrams there. Now each socket's datagrams
    go by its own verdict."""
    running.add_rule(f"allow app={python_exe()} user=root to=192.0.2.2 port=9000")
    sport = 47006
    with _sharer(running, sport, 2, "owner") as owner:
        assert _turn(owner) == "owner"
        assert _udp_from(running, sport, *NOBODY) == "timeout"
        assert _turn(owner) == "owner"
    assert _who_was_decided(running, sport) == [(0, "allow"), (65534, "deny")]


@pytest.mark.parametrize("host", ["192.0.2.2", "2001:db8:1::2"])
@pytest.mark.parametrize("readers", READERS)
def test_a_datagram_is_not_decided_as_another_socket_s_on_its_port(
    lab: Lab, readers: int, host: str
) -> None:
    """snitchd names a queued datagram's sender by its tuple, and two sockets on a shared port
    (SO_REUSEADDR) have the same one: the kernel's lookup answers with the better match, a
    connected socket. So uid 65534's unconnected socket on the port of root's connected one,
    sending to the same place, was named as root, and its datagrams passed on root's allow.
    Now the socket match notes which socket each queued datagram came from, and snitchd
    names that one: uid 65534's first is decided as its own (denied), and its next is
    refused on the spot. Root's socket gets every echo of the port: one of uid 65534's would
    come first. With several queue readers, each reads the notes."""
    lab.start_daemon(queue_readers=readers)
    lab.add_rule(f"allow app={python_exe()} user=root to={host} port=9000")
    sport, turns = 47007, 2  # `seen` below is for two turns
    with (
        _sharer(lab, sport, turns + 1, "owner", host=host) as owner,
        _sharer(lab, sport, turns, "joiner", *NOBODY, host=host) as joiner,
    ):
        seen = [_turn(owner)]
        for _ in range(turns):
            seen += [_turn(joiner), _turn(owner)]
    assert seen == ["owner", "sent", "owner", "refused", "owner"]
    assert _settled(lab)["datagrams_other_socket"] == 0
    assert _who_was_decided(lab, sport) == [(0, "allow"), (65534, "deny")]


@pytest.mark.parametrize("proto", [0, 136], ids=["udp", "udplite"])
def test_a_user_s_socket_on_a_service_s_port_does_not_take_its_datagrams(
    lab: Lab, proto: int
) -> None:
    """The other way round: root's socket is the unconnected one (a service binding its port
    with SO_REUSEADDR, as mDNS does), and uid 65534 binds the same port and connects its
    socket to where the service sends, sending nothing. sock_diag named uid 65534's socket,
    the better match, for each of root's datagrams: each was decided as uid 65534's and
    dropped (its repeat came from another uid's socket), for as long as uid 65534 held the
    port. Now root's datagrams are named as root's, allowed, and echoed: the echoes go to uid
    65534's socket (the better match for the replies), which tells that they got through.
    UDP-Lite (136) too: the match keys its flows by protocol number, as it does UDP's (and
    rules know it as proto=other, without ports: the rule names no port)."""
    lab.start_daemon()
    lab.add_rule(f"allow app={python_exe()} user=root to=192.0.2.2")
    sport, turns = 47009, 2
    with (
        _sharer(lab, sport, turns, "squatter", *NOBODY, proto=proto) as squatter,
        _sharer(lab, sport, turns, "service", proto=proto) as service,
    ):
        seen = []
        for _ in range(turns):
            seen += [_turn(service), _turn(squatter)]
    assert seen == ["sent", "service"] * turns
    assert _settled(lab)["datagrams_other_socket"] == 0
    assert _who_was_decided(lab, sport) == [(0, "allow")]


def test_a_note_of_another_socket_never_passes_a_datagram_on_its_verdict(lab: Lab) -> None:
    """The note is of the last datagram queued on the flow, maybe not the one snitchd reads:
    with snitchd stopped, uid 65534's unconnected socket and then root's connected one send on
    the shared port, so uid 65534's datagram is read under root's note, and named as root's
    (so does sock_diag: root's is the better match). Its repeat is dropped in the kernel
    (counted in the status): a wrong note may lose a datagram, never pass it on another's
    allow; passed, it would be echoed to root's socket. uid 65534's next datagram is decided
    as its own."""
    lab.start_daemon()
    lab.add_rule(f"allow app={python_exe()} user=root to=192.0.2.2 port=9000")
    assert lab.daemon is not None
    sport = 47010
    with (
        _sharer(lab, sport, 2, "owner") as owner,
        _sharer(lab, sport, 2, "joiner", *NOBODY) as joiner,
    ):
        assert owner.stdin is not None and owner.stdout is not None
        os.kill(lab.daemon.pid, signal.SIGSTOP)
        try:
            assert _turn(joiner) == "sent"
            wait_for(lambda: _held_in_queue(lab) == 1, 10, "uid 65534's datagram in the queue")
            owner.stdin.write("\n")
            owner.stdin.flush()
            wait_for(lambda: _held_in_queue(lab) == 2, 10, "root's datagram in the queue")
        finally:
            os.kill(lab.daemon.pid, signal.SIGCONT)
        seen = [owner.stdout.readline().strip(), _turn(joiner), _turn(owner)]
    assert seen == ["owner", "sent", "owner"]
    assert _settled(lab)["datagrams_other_socket"] == 1
    assert (65534, "deny") in _who_was_decided(lab, sport)


def _held_in_queue(lab: Lab) -> int:
    """Packets the kernel holds in the lab's flow queue (4242) for snitchd to take, read as
    its status reads them, in its namespace: stopped, snitchd cannot answer."""
    assert lab.daemon is not None
    queues = f"/proc/{lab.daemon.pid}/net/netfilter/nfnetlink_queue"
    return kernel_stats(4242, path=queues).get("held", 0)


# A UDP socket on a shared port (SO_REUSEADDR), sending its word to the server's echo each time
# a line comes in. The owner's is connected, so the kernel gives it every reply to the port
# (the better match), and it prints all it reads until 0.3 s pass without one ("lost" if none:
# dropped here, EPERM, or a timeout). A squatter's is connected too, and only reads. Any
# other's prints "sent", or "refused" (EPERM: dropped on the spot).
_SHARER = """
import socket, sys
port, turns, word, host = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
server, proto = (host, 9000), int(sys.argv[5])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM, proto)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::" if ":" in host else "0.0.0.0", port)); s.settimeout(1)
if word in ("owner", "squatter"): s.connect(server)
print("bound", flush=True)
for _ in range(turns):
    sys.stdin.readline()
    try:
        if word != "squatter": s.sendto(word.encode(), server)
        if word not in ("owner", "squatter"):
            print("sent", flush=True)
            continue
        heard = [s.recv(64).decode()]
        s.settimeout(0.3)
        try:
            while True: heard.append(s.recv(64).decode())
        except TimeoutError: pass
        s.settimeout(1)
        print(",".join(heard), flush=True)
    except PermissionError: print("refused", flush=True)
    except OSError: print("lost", flush=True)
"""


@contextlib.contextmanager
def _sharer(
    lab: Lab,
    sport: int,
    turns: int,
    word: str,
    *user: str,
    host: str = "192.0.2.2",
    proto: int = 0,
) -> Iterator[Popen[str]]:
    argv = ["ip", "netns", "exec", lab.client, *user, PYTHON, "-c", _SHARER]
    with subprocess.Popen(
        [*argv, str(sport), str(turns), word, host, str(proto)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as sharer:  # fmt: skip
        try:
            assert sharer.stdout is not None and sharer.stdout.readline().strip() == "bound"
            yield sharer
        finally:
            sharer.kill()


def _turn(sharer: Popen[str]) -> str:
    assert sharer.stdin is not None and sharer.stdout is not None
    sharer.stdin.write("\n")
    sharer.stdin.flush()
    return sharer.stdout.readline().strip()


# A new socket on one local port each time, sending one datagram to the sink and closing, for
# at most `seconds`: the datagrams sent and refused (EPERM: dropped on the spot).
_REBIND = """
import socket, sys, time
port, sink, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
sent = refused = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        try:
            s.sendto(b"x", ("192.0.2.2", sink))
            sent += 1
        except PermissionError:
            refused += 1
print(sent, refused, flush=True)
"""


def test_a_user_s_new_sockets_on_a_decided_flow_are_limited(lab: Lab) -> None:
    """Each new socket on a decided flow's port is queued (the socket match), but the nft
    limit of new flows counts no packet of a decided flow: uid 65534 binding the port of its
    own denied flow, sending one datagram and closing, in a loop, had every datagram queued,
    uncounted (the queue everyone's new flows wait in, filled again). Now what it sends to the
    queue past `new_flows_per_user` is dropped by the match's second program."""
    per_second, seconds, sport = 100, 3, 47005
    lab.start_daemon(new_flows_per_user=per_second)
    rebind = (*NOBODY, PYTHON, "-c", _REBIND, str(sport), str(SINK))
    lab.client_run(*NOBODY, PYTHON, str(HERE / "netclient.py"), "sendto", "192.0.2.2",
                   str(SINK), "--sport", str(sport), "--timeout", "0.5")  # fmt: skip
    seen = _settled(lab)["seen"]
    sent, refused = map(int, lab.client_run(*rebind, str(seconds)).split())
    status = _settled(lab)
    queued = status["seen"] - seen
    assert sent + refused > 20 * per_second * seconds, "the loop was too slow to test the limit"
    assert refused > sent, (sent, refused)
    assert queued <= per_second * (seconds + 2), (queued, sent, refused)
    assert status["datagrams_over_limit"] == refused
    # The loop's sockets are one program's attempt (a retry on its row), or its own row when
    # found by uid only under the load: denied, however they were counted.
    assert {r["action"] for r in _rows(lab, sport) if r["uid"] == 65534} == {"deny"}


def test_the_per_user_limit_counts_a_udp_stream_as_one_flow(lab: Lab) -> None:
    """The limit of new flows a user starts (`new_flows_per_user`, 50 here) counts flows with no
    verdict yet: a one-way UDP flow stays conntrack NEW, and counting its datagrams cut uid
    65534's allowed stream at the burst, the rest refused (EPERM). Once its first datagram is
    decided, all the thousand arrive."""
    lab.start_daemon(new_flows_per_user=50)
    lab.add_rule(f"allow app={python_exe()} to=192.0.2.2 port={SINK} proto=udp")
    before = _no_ports(lab, False)
    sport, sent, refused, _ = _decided_then_flood(lab, "192.0.2.2", NOBODY, lambda: None)
    assert (sent, refused) == (DATAGRAMS, 0)
    _settled(lab)
    assert _no_ports(lab, False) - before == DATAGRAMS
    assert len(_rows(lab, sport)) == 1


def test_denied_ping_is_one_row(running: Lab) -> None:
    """Echo requests of one ping share a conntrack entry (its identifier): the first is decided,
    the kernel drops the rest."""
    seen = _settled(running)["seen"]
    out = running.client_run("ping", "-c", "3", "-i", "0.3", "-W", "1", "192.0.2.2")
    assert "0 received" in out, out
    assert _settled(running)["seen"] == seen + 1
    rows = [r for r in running.log_rows() if r["proto"] == "icmp"]
    assert [r["action"] for r in rows] == ["deny"]


def _flavour_path(tmp: Path, flavour: str) -> str:
    """A PATH whose iptables tools are the given flavour (xtables picks it by argv[0])."""
    bin_dir = tmp / f"iptables-{flavour}"
    bin_dir.mkdir()
    for family in ("iptables", "ip6tables"):
        for suffix in ("", "-save", "-restore"):
            target = f"/usr/sbin/{family}-{flavour}{suffix}"
            if not os.path.exists(target):
                pytest.skip(f"{target} not installed")
            (bin_dir / f"{family}{suffix}").symlink_to(target)
    return f"{bin_dir}:{os.environ['PATH']}"


@pytest.fixture(params=["nft", "legacy"])
def flavoured(
    request: pytest.FixtureRequest, lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Lab]:
    """The lab's snitchd with `iptables` of one flavour; `lab.iptables_save` reads the same."""
    monkeypatch.setenv("PATH", _flavour_path(lab.tmp, request.param))
    legacy = request.param == "legacy"
    if legacy:  # it would break every later change of mangle (netfilter.plan_install)
        lab.expect_log(r"the socket match .* not with iptables-legacy")
    lab.start_daemon()
    version = lab.client_run("iptables", "--version")
    assert f"({request.param if legacy else 'nf_tables'})" in version
    assert lab.ctl_json("status")["sockets"].startswith("per tuple" if legacy else "per socket")
    yield lab


_RULE_COUNTS = re.compile(
    r"^\[(\d+):\d+\] -A SNITCH_QUEUE .*-m connmark --mark (0x[0-9a-f]+/0x[0-9a-f]+) -j (\w+)"
)


def _kernel_skips(lab: Lab) -> dict[str, int]:
    """Packets that each connmark rule of our queue chain took, by target, v4 and v6 summed."""
    counts: dict[str, int] = {}
    for tool in ("iptables-save", "ip6tables-save"):
        for line in lab.ns(lab.client, tool, "-c", "-t", "mangle").stdout.splitlines():
            m = _RULE_COUNTS.match(line)
            if m:
                counts[m.group(3)] = counts.get(m.group(3), 0) + int(m.group(1))
    return counts


@pytest.mark.parametrize(
    ("host", "user", "target"),
    [
        ("192.0.2.2", (), "RETURN"),  # allowed by the rule below: accepted by the kernel
        ("198.51.100.2", NOBODY, "DROP"),  # denied by default: dropped by the kernel
    ],
)
def test_decided_flow_skips_the_queue_in_the_kernel(
    flavoured: Lab, host: str, user: tuple[str, ...], target: str
) -> None:
    """Once a flow's first datagram is decided, the rest never reach snitchd: the kernel accepts
    an allowed flow's and drops a denied flow's by their conntrack mark (the rule counters say
    so), the client sees them sent or refused, and the server gets all or none."""
    lab = flavoured
    saved = lab.iptables_save()
    for rule in ("0x5a1a0000/0xffff0000 -j RETURN", "0x5a1d0000/0xffff0000 -j DROP"):
        assert saved.count(f"-A SNITCH_QUEUE -m connmark --mark {rule}") == 2, saved  # v4, v6
    lab.add_rule(f"allow app={python_exe()} to=192.0.2.2 port={SINK} proto=udp")
    before = _no_ports(lab, False)
    sport, sent, refused, (seen, skipped) = _decided_then_flood(
        lab, host, user, lambda: (_settled(lab)["seen"], _kernel_skips(lab).get(target, 0))
    )
    assert _settled(lab)["seen"] == seen
    assert _kernel_skips(lab).get(target, 0) - skipped == DATAGRAMS - 1
    assert len(_rows(lab, sport)) == 1
    if target == "RETURN":
        assert (sent, refused) == (DATAGRAMS, 0)
        assert _no_ports(lab, False) - before == DATAGRAMS
    else:
        assert (sent, refused) == (1, DATAGRAMS - 1)
        assert _no_ports(lab, False) - before == 0


def test_blocked_flow_row_never_shows_bytes(running: Lab) -> None:
    """The kernel counts a denied flow's packets on the entry that keeps its verdict, though
    none left: when that entry ends, its row must not get those bytes as if they were sent. An
    allowed flow ended at the same moment is the witness that the counters were joined."""
    running.add_rule(f"allow app={python_exe()} to=192.0.2.2 port={SINK} proto=udp")
    allowed = _flood(running, "192.0.2.2")
    denied = _flood(running, "198.51.100.2", user=NOBODY)
    _settled(running)
    for sport in (denied, allowed):  # the denied end first: joined no later than the witness
        out = running.ns(running.client, "conntrack", "-D", "-p", "udp", "--sport", str(sport))
        assert "1 flow entries have been deleted" in out.stderr, out.stderr
    wait_for(lambda: _rows(running, allowed)[0].get("bytes_out"), 15, "the allowed flow's bytes")
    (row,) = _rows(running, denied)
    assert row["action"] == "deny" and "bytes_out" not in row, row


@pytest.mark.parametrize("host", HOSTS)
def test_an_allowed_flow_keeps_its_mark_in_the_kernel_and_routing_never_sees_it(
    flavoured: Lab, host: str
) -> None:
    """An allow is a repeat of our hook with the allow mark on the packet: our rules move it to
    the conntrack entry and take it off the packet. A policy route that refuses packets that
    carry it, and a counter in mangle POSTROUTING, say that it never left the hook (routing
    looks again at a packet whose mark changed); conntrack says the entry kept it."""
    lab = flavoured
    v6 = ":" in host
    ip, tool = ("ip", "-6") if v6 else ("ip", "-4"), "ip6tables" if v6 else "iptables"
    marked = f"{ALLOW_MARK:#x}/{MARK_MASK:#x}"
    lab.ns(lab.client, *ip, "rule", "add", "fwmark", marked, "prohibit")
    lab.ns(lab.client, tool, "-t", "mangle", "-A", "POSTROUTING", "-m", "mark", "--mark", marked)
    lab.add_rule(f"allow app={python_exe()} to={host} port=80 proto=tcp")
    assert lab.py("tcp", host, 80, "--timeout", "2") == "connected"
    counted = lab.ns(lab.client, tool, "-t", "mangle", "-L", "POSTROUTING", "-v", "-x", "-n")
    (line,) = [ln for ln in counted.stdout.splitlines() if "mark match" in ln]
    assert line.split()[0] == "0", counted.stdout
    entries = lab.ns(lab.client, "conntrack", "-L", "-p", "tcp", "--dport", "80", "-d", host)
    assert f"mark={ALLOW_MARK}" in entries.stdout, entries.stdout
    assert [r["action"] for r in lab.log_rows() if r["dport"] == 80] == ["allow"]
