"""`procs.Attributor` against real sockets of real processes on this machine's loopback.

Attribution reads sock_diag and /proc only: no firewall rule is involved, so the host loopback is
enough and nothing here touches netfilter. Children block on stdin and exit when it closes, so a
failing test cannot leave them behind.
"""

import asyncio
import errno
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from contextlib import ExitStack, closing, contextmanager
from ipaddress import ip_address
from pathlib import Path

import psutil
import pytest

from snitch_common.records import Attribution, Flow, Process, Proto
from snitchd import procs
from snitchd.procs import Attributor, process_alive, sockdiag
from snitchd.procs.owners import holds

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="reads every /proc/<pid>/fd: needs root"),
]

DAEMON_DIR = str(Path(procs.__file__).resolve().parents[2])  # where snitchd was imported from
PYTHON = os.path.realpath(sys.executable)
TCP_SYN_SENT = 2  # tcp_states.h; the first byte of TCP_INFO


@pytest.fixture
def attributor():
    att = Attributor()
    try:
        yield att
    finally:
        att.close()


def flow(proto, local, remote):
    """The flow a socket with these (address, port) ends opens, as packet.py would decode it."""
    return Flow(
        proto=proto,
        src=ip_address(local[0]),
        sport=local[1],
        dst=ip_address(remote[0]),
        dport=remote[1],
    )


@contextmanager
def child(code, *args):
    """A Python child that runs `code`, prints one JSON line, then holds on until stdin closes."""
    script = textwrap.dedent(code) + "\nimport sys\nsys.stdout.flush()\nsys.stdin.read()\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line, f"child failed to start (exit {proc.poll()})"
        yield proc, json.loads(line)
    finally:
        stop(proc)


def stop(proc):
    for pipe in (proc.stdin, proc.stdout):
        if pipe:
            pipe.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def tcp_listener():
    with socket.create_server(("127.0.0.1", 0)) as srv:
        yield srv


@pytest.fixture
def udp_server():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.settimeout(5)
        yield srv


def test_tcp_connection_from_this_process(attributor, tcp_listener):
    with socket.create_connection(tcp_listener.getsockname()) as client:
        proc = attributor.lookup(flow(Proto.TCP, client.getsockname(), client.getpeername()))

    assert proc.attribution is Attribution.PROCESS
    assert proc.pid == os.getpid()
    assert proc.exe == PYTHON
    assert proc.uid == os.geteuid()
    assert proc.user == "root"
    assert proc.ppid == os.getppid()
    assert proc.cmdline == tuple(psutil.Process().cmdline())
    assert proc.start_time == pytest.approx(psutil.Process().create_time(), abs=0.02)
    assert proc.sha256 == hashlib.sha256(Path(PYTHON).read_bytes()).hexdigest()
    assert proc.parents[0] == (os.getppid(), os.path.realpath(f"/proc/{os.getppid()}/exe"))
    assert 0 < len(proc.parents) <= 8


def test_tcp_syn_sent_socket_is_found(attributor):
    """At the OUTPUT hook the first SYN leaves a socket in SYN_SENT: test one that stays there.
    A listener whose accept queue is full drops new SYNs, so the client's SYN stays unanswered on
    loopback. (A SYN sent out to a documentation address can be answered, by an RST or an ICMP
    error from a gateway, and its socket gone before the lookup: CI's machine did that.)"""
    with (
        socket.socket() as server,
        socket.socket() as first,
        socket.socket() as client,
    ):
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        first.connect(server.getsockname())  # fills the accept queue: it is never accepted
        client.setblocking(False)
        assert client.connect_ex(server.getsockname()) == errno.EINPROGRESS
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_SYN_SENT
        proc = attributor.lookup(flow(Proto.TCP, client.getsockname(), server.getsockname()))
        still = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    assert still == TCP_SYN_SENT, "the SYN was answered: the lookup may have missed a closed socket"
    assert proc.pid == os.getpid()


def test_hash_exe_false_skips_hashing(tcp_listener):
    att = Attributor(hash_exe=False)
    try:
        with socket.create_connection(tcp_listener.getsockname()) as client:
            proc = att.lookup(flow(Proto.TCP, client.getsockname(), client.getpeername()))
    finally:
        att.close()
    assert proc.pid == os.getpid()
    assert proc.sha256 is None


def test_tcp_client_in_a_child_python(attributor, tcp_listener):
    code = """
        import json, socket, sys
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
        print(json.dumps(s.getsockname()))
    """
    with child(code, str(tcp_listener.getsockname()[1])) as (proc, local):
        got = attributor.lookup(flow(Proto.TCP, tuple(local), tcp_listener.getsockname()))
        assert got.pid == proc.pid
        assert got.exe == PYTHON
        assert got.ppid == os.getpid()
        assert got.parents[0][0] == os.getpid()


def test_tcp_client_curl(attributor, tcp_listener):
    curl = "/usr/bin/curl"
    if not os.path.exists(curl):
        pytest.skip("curl is not installed")
    port = tcp_listener.getsockname()[1]
    proc = subprocess.Popen(
        [curl, "-s", "-m", "20", f"http://127.0.0.1:{port}/"], stdout=subprocess.DEVNULL
    )
    try:
        tcp_listener.settimeout(10)
        conn, peer = tcp_listener.accept()
        with conn:
            got = attributor.lookup(flow(Proto.TCP, peer, tcp_listener.getsockname()))
    finally:
        proc.kill()
        proc.wait()
    assert got.pid == proc.pid
    assert got.exe == curl
    assert got.cmdline[0] == curl


UDP_CHILD = """
    import json, socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = ("127.0.0.1", int(sys.argv[1]))
    if sys.argv[2] == "connect":
        s.connect(target)
        s.send(b"hello")
    else:
        s.sendto(b"hello", target)
    print(json.dumps(s.getsockname()))
"""


@pytest.mark.parametrize("mode", ["connect", "sendto"])
def test_udp_from_a_child(attributor, udp_server, mode):
    """Connected and unconnected (plain sendto) UDP sockets are both found by the 5-tuple."""
    with child(UDP_CHILD, str(udp_server.getsockname()[1]), mode) as (proc, local):
        _, peer = udp_server.recvfrom(64)
        assert tuple(local)[1] == peer[1]
        got = attributor.lookup(flow(Proto.UDP, peer, udp_server.getsockname()))
        assert got.attribution is Attribution.PROCESS
        assert got.pid == proc.pid


def test_unconnected_udp_to_another_destination_is_found(attributor):
    """A sendto socket bound to 0.0.0.0 matches whatever destination its next datagram has."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        port = s.getsockname()[1]
        got = attributor.lookup(flow(Proto.UDP, ("192.0.2.77", port), ("198.51.100.9", 53)))
    assert got.pid == os.getpid()


@pytest.mark.parametrize("proto", [Proto.TCP, Proto.UDP])
def test_ipv6_on_loopback(attributor, proto):
    kind = socket.SOCK_STREAM if proto is Proto.TCP else socket.SOCK_DGRAM
    with ExitStack() as stack:
        srv = stack.enter_context(socket.socket(socket.AF_INET6, kind))
        srv.bind(("::1", 0))
        if proto is Proto.TCP:
            srv.listen()
        cli = stack.enter_context(socket.socket(socket.AF_INET6, kind))
        if proto is Proto.TCP:
            cli.connect(srv.getsockname())
        else:
            cli.sendto(b"x", srv.getsockname())
        got = attributor.lookup(flow(proto, cli.getsockname()[:2], srv.getsockname()[:2]))
    assert got.pid == os.getpid()


@pytest.mark.parametrize("proto", [Proto.TCP, Proto.UDP])
def test_dual_stack_ipv6_socket_sending_to_ipv4(attributor, proto, tcp_listener, udp_server):
    """Such a socket lists under AF_INET6 with ::ffff:a.b.c.d, while the flow is plain IPv4."""
    kind = socket.SOCK_STREAM if proto is Proto.TCP else socket.SOCK_DGRAM
    server = tcp_listener if proto is Proto.TCP else udp_server
    target = ("::ffff:127.0.0.1", server.getsockname()[1])
    with socket.socket(socket.AF_INET6, kind) as cli:
        cli.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if proto is Proto.TCP:
            cli.connect(target)
        else:
            cli.sendto(b"x", target)
        port = cli.getsockname()[1]
        got = attributor.lookup(flow(proto, ("127.0.0.1", port), server.getsockname()))
    assert got.pid == os.getpid()


def test_five_tuple_nobody_has_is_kernel(attributor):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))  # a port no connection uses while we hold it
        port = free.getsockname()[1]
        for proto in (Proto.TCP, Proto.UDP):
            got = attributor.lookup(flow(proto, ("127.0.0.1", port), ("127.0.0.1", port)))
            assert got == Process.kernel()


def test_listener_is_never_the_sender(attributor, tcp_listener):
    """inet_lookup falls back to listeners; a packet from a listening port is the kernel's."""
    got = attributor.lookup(flow(Proto.TCP, tcp_listener.getsockname(), ("127.0.0.1", 1)))
    assert got == Process.kernel()


def test_socket_closed_by_its_process_is_uid_only(attributor, tcp_listener):
    """After close() the kernel still owns the socket (FIN_WAIT) but no file does: inode 0."""
    client = socket.create_connection(tcp_listener.getsockname())
    conn, _ = tcp_listener.accept()
    with conn:
        local, remote = client.getsockname(), client.getpeername()
        client.close()
        got = attributor.lookup(flow(Proto.TCP, local, remote))
    assert got == Process.uid_only(os.geteuid())


def test_socket_in_flight_between_processes_is_uid_only(attributor, udp_server):
    """A socket whose only reference is an SCM_RIGHTS message in a queue has an inode but no
    process: that must not become whoever else the scan happens to see."""
    a, b = socket.socketpair()
    with a, b:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(udp_server.getsockname())
        local = s.getsockname()
        socket.send_fds(a, [b"x"], [s.fileno()])
        s.close()
        got = attributor.lookup(flow(Proto.UDP, local, udp_server.getsockname()))
        _, fds, _, _ = socket.recv_fds(b, 1, 1)
        os.close(fds[0])
    assert got == Process.uid_only(os.geteuid())


def test_owner_exits_and_the_inheriting_child_is_found(attributor, udp_server):
    """The cached (pid, fd) of an exited owner fails its readlink check and a rescan finds the
    process that still holds the socket."""
    code = """
        import json, os, socket, sys
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("127.0.0.1", int(sys.argv[1])))
        s.set_inheritable(True)
        kid = os.fork()
        if kid == 0:
            os.read(0, 1)  # hold the socket until the test closes our shared stdin
            os._exit(0)
        print(json.dumps([s.getsockname(), kid]))
    """
    server = udp_server.getsockname()
    with child(code, str(server[1])) as (parent, (local, kid)):
        first = attributor.lookup(flow(Proto.UDP, tuple(local), server))
        assert first.pid in (parent.pid, kid)
        os.kill(parent.pid, 9)
        parent.wait()
        try:
            second = attributor.lookup(flow(Proto.UDP, tuple(local), server))
        finally:
            os.kill(kid, 9)
    assert second.pid == kid


def test_pid_reuse_never_inherits_the_old_process_details(attributor, udp_server):
    """A new process on a recycled pid gets its own details, and process_alive() says the old
    one has quit. ns_last_pid makes the kernel hand the same pid out again."""
    code = """
        import json, os, socket, sys
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("127.0.0.1", int(sys.argv[1])))
        print(json.dumps(s.getsockname()))
    """
    server = udp_server.getsockname()
    with child(code, str(server[1]), "first") as (old, local):
        before = attributor.lookup(flow(Proto.UDP, tuple(local), server))
        assert before.cmdline[-1] == "first"
    assert not process_alive(before.pid, before.start_time)
    for _ in range(20):
        try:
            Path("/proc/sys/kernel/ns_last_pid").write_text(str(old.pid - 1))
        except OSError as exc:
            pytest.skip(f"cannot steer pid allocation: {exc}")
        with child(code, str(server[1]), "second") as (new, local):
            if new.pid != old.pid:
                continue  # someone else forked in between: try again
            after = attributor.lookup(flow(Proto.UDP, tuple(local), server))
            assert after.pid == before.pid
            assert after.cmdline[-1] == "second"
            assert after.start_time != before.start_time
            assert process_alive(after.pid, after.start_time)
            assert not process_alive(before.pid, before.start_time)
            return
    pytest.skip("the old pid was never handed out again")


def test_cached_owner_that_no_longer_holds_the_socket_is_not_used(attributor, udp_server):
    """The inode cache is only a hint: a (pid, fd) pointing at someone else is rechecked."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(udp_server.getsockname())
        inode = os.fstat(s.fileno()).st_ino
        code = "import json, os; print(json.dumps(os.getpid()))"
        with child(code) as (other, _):
            attributor._owners._owners[inode] = (other.pid, 0)
            assert not holds(other.pid, 0, inode)
            got = attributor.lookup(flow(Proto.UDP, s.getsockname(), udp_server.getsockname()))
        assert attributor._owners._owners[inode] == (os.getpid(), s.fileno())
    assert got.pid == os.getpid()


def test_process_alive_checks_pid_and_start_time():
    me = psutil.Process()
    assert process_alive(me.pid, me.create_time())
    assert not process_alive(me.pid, me.create_time() + 1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not process_alive(dead.pid, time.time())


def test_process_alive_is_false_for_a_zombie():
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        start = psutil.Process(zombie.pid).create_time()
        deadline = time.monotonic() + 5
        while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not process_alive(zombie.pid, start)
    finally:
        zombie.wait()


def raw_icmp_sockets():
    return [r for r in sockdiag._proc_net("raw") if r[1] in (1, 255)]


def test_raw_icmp_socket_of_this_process(attributor):
    if raw_icmp_sockets():
        pytest.skip("another raw ICMP socket exists: attribution would rightly be ambiguous")
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP):
        got = attributor.lookup(flow(Proto.ICMP, ("127.0.0.1", 0), ("127.0.0.1", 0)))
    assert got.pid == os.getpid()


def test_two_raw_icmp_sockets_give_uid_only(attributor):
    """Nothing tells which raw socket sent the packet: name the user, not a process."""
    if raw_icmp_sockets():
        pytest.skip("raw ICMP sockets of other users may exist")
    with (
        closing(socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
        closing(socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
    ):
        got = attributor.lookup(flow(Proto.ICMP, ("127.0.0.1", 0), ("127.0.0.1", 0)))
    assert got == Process.uid_only(os.geteuid())


PING_IN_NETNS = """
import json, os, socket, subprocess, sys
from ipaddress import ip_address
from snitchd.procs import Attributor
from snitch_common.records import Flow, Proto
try:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
        f.write("0 2147483647")  # this namespace only: allow ping sockets
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    s.sendto(bytes([8, 0, 0, 0, 0, 0, 0, 1]), ("127.0.0.1", 0))
except OSError as exc:
    print(exc, file=sys.stderr)
    sys.exit(77)
ident = s.getsockname()[1]
att = Attributor()
lo = ip_address("127.0.0.1")
hit = att.lookup(Flow(proto=Proto.ICMP, src=lo, sport=ident, dst=lo, dport=0))
other = att.lookup(Flow(proto=Proto.ICMP, src=lo, sport=ident ^ 1, dst=lo, dport=0))
att.close()
s.close()
print(json.dumps([os.getpid(), hit.pid, other.attribution.value]))
"""


def test_ping_socket_matched_by_echo_identifier():
    """Unprivileged ping sockets have no sock_diag module; /proc/net/icmp names them. Run in a
    private network namespace (gone with the process) to allow ping sockets there only."""
    env = dict(os.environ, PYTHONPATH=DAEMON_DIR)
    out = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", PING_IN_NETNS],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    if out.returncode in (1, 77) and not out.stdout and "Traceback" not in out.stderr:
        pytest.skip(f"cannot run a ping socket in a private netns: {out.stderr.strip()[-200:]}")
    assert out.returncode == 0, out.stderr
    pid, hit, other = json.loads(out.stdout)
    assert hit == pid
    assert other == "kernel"


def test_warm_lookup_is_fast(attributor, tcp_listener):
    """A budget far above the measured ~12 µs, so only a lost cache or a dump would break it."""
    with socket.create_connection(tcp_listener.getsockname()) as client:
        f = flow(Proto.TCP, client.getsockname(), client.getpeername())
        attributor.lookup(f)
        start = time.perf_counter()
        for _ in range(1000):
            attributor.lookup(f)
        per_call = (time.perf_counter() - start) / 1000
    assert per_call < 200e-6


def test_a_process_that_sleeps_between_reads_is_attributed(attributor, tcp_listener):
    """Issue 14: a live process that went from running to sleeping between the two reads of its
    /proc/PID/stat was dropped to uid-only (77 lookups in 300). This child flips between the two
    states all the time; its details are read afresh each round (the caches are dropped)."""
    code = """
        import json, socket, sys, time
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
        print(json.dumps(s.getsockname()), flush=True)
        end = time.monotonic() + 60
        while time.monotonic() < end:  # running, then sleeping, a few thousand times a second
            t = time.perf_counter() + 0.0002
            while time.perf_counter() < t:
                pass
            time.sleep(0.0002)
    """
    script = textwrap.dedent(code)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tcp_listener.getsockname()[1])],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        local = tuple(json.loads(proc.stdout.readline()))
        f = flow(Proto.TCP, local, tcp_listener.getsockname())
        misses = []
        for _ in range(50):
            attributor.forget()
            got = attributor.lookup(f)
            if got.pid != proc.pid:
                misses.append(got.describe())
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert misses == []


EXECD = """
import json, socket, sys
held = [socket.create_connection(("127.0.0.1", int(sys.argv[1]))) for _ in range(3)]
print(json.dumps([[s.getsockname(), s.getpeername()] for s in held]), flush=True)
sys.stdin.read()
"""


def test_flows_in_the_window_after_an_exec_carry_both_identities_and_one_log_line(
    tcp_listener, monkeypatch, caplog
):
    """A program that exec'd (sh → python) just before it connected: each of its flows in the
    window is decided by the stricter of both identities, alike, and the log says so once for
    the process, not once per flow (the identities are made once and kept)."""
    from snitchd.procs.execs import ExecWatch  # noqa: PLC0415 (needs root: the proc connector)

    monkeypatch.setattr(procs, "_EXEC_WINDOW_NS", 60 * 10**9)  # however slow this machine is
    caplog.set_level(logging.INFO, logger="snitchd.procs")
    port = tcp_listener.getsockname()[1]
    command = f"read _; exec {PYTHON} -c '{EXECD}' {port}"
    att = Attributor(execs=ExecWatch(), hash_exe=False)  # subscribed before the execs
    proc = subprocess.Popen(
        ["sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    execs = att.execs
    assert execs is not None

    def seen(ok) -> None:  # the watcher child reports an exec a moment later
        for _ in range(500):
            if ok(execs.since(proc.pid, 0)):
                return
            time.sleep(0.01)
        pytest.fail(f"no such exec of pid {proc.pid}: {execs.since(proc.pid, 0)}")

    try:
        # The shell's exec is seen (so its executable is known) before it execs python:
        # the watcher reads the new executable of each exec when it is reported.
        seen(bool)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        ends = json.loads(proc.stdout.readline())
        flows = [flow(Proto.TCP, tuple(local), tuple(remote)) for local, remote in ends]
        seen(lambda got: any(ex.before.endswith("sh") for ex in got))
        assert att.lookup(flows[0]).exe == PYTHON  # first sight: described, cached

        async def begin_all():
            return [att.begin(f, procs.Limits()) for f in flows[1:]]

        got = asyncio.run(begin_all())
        assert all(isinstance(r, procs.Lookup) and r.future.done() for r in got), got
        first, second = got
        assert first.future.result().exe == PYTHON
        assert [p.exe for p in first.also] and PYTHON not in [p.exe for p in first.also]
        assert first.note and "around its connect" in first.note
        assert (second.future.result(), second.also, second.note) == (
            first.future.result(),
            first.also,
            first.note,
        )
        lines = [r for r in caplog.records if r.getMessage().startswith("exec around connect")]
        assert len(lines) == 1, [r.getMessage() for r in lines]
    finally:
        att.close()
        stop(proc)
