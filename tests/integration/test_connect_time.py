"""Issue 14: who connected, for sure. Each attack of the issue, run against the real kernel on
both attribution paths (`attribution = "bpf"`: cgroup BPF hooks; `"proc"`: sock_diag + /proc with
the proc connector), so the fallback does not rot. What the fallback cannot see is marked xfail
(strict) with the reason: if it ever passes, the README's "What snitch cannot see" is wrong.

The BPF programs are attached to a cgroup this module creates under the cgroup v2 mount, and
every client joins it (its pid written to cgroup.procs) before it runs: nothing outside the test
is hooked. The cgroup is removed at the end, always; snitchd detaches on exit (and a crash
detaches too: the links die with its fds).

Before the fix (run on the parent of this branch): connect-then-exec was logged under curl and
allowed; the child on its parent's socket and the io_uring socket were misnamed or uid-only; of
twenty one-datagram processes none was attributed; UDP-Lite was "kernel".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from snitchd.procs.bpf import HOOKS as HOOK_NAMES
from tests.integration.conftest import (
    PYTHON,
    Lab,
    curl_exe,
    good_then_evil,
    python_exe,
    rows_like,
    run_in,
)
from tests.support.lab import AS_NOBODY, children_running, kill_and_see_replaced, wait_for

pytestmark = pytest.mark.root

CSRC = Path(__file__).resolve().parent / "csrc"
SERVER = "192.0.2.2"

BPF_ONLY = "the proc path reads /proc when the packet is read"


def _fallback_cannot(reason: str) -> Any:
    """What the proc path cannot do: an expected failure, run as a slow extra (.ci/run runs it
    after the suite; every other integration test runs on the proc path)."""
    return (pytest.mark.xfail(strict=True, reason=f"{BPF_ONLY}: {reason}"), pytest.mark.slow)


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The C helpers, compiled now with the system's cc (world-readable: run by others too)."""
    out = tmp_path_factory.mktemp("csrc")
    os.chmod(out, 0o755)
    built = {}
    for name in ("connexec", "udp_once", "uring_connect"):
        target = out / name
        subprocess.run(["cc", "-O2", "-o", str(target), str(CSRC / f"{name}.c")], check=True)
        built[name] = str(target)
    return built


@pytest.fixture(params=["bpf", "proc"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def lab_on(lab: Lab, mode: str, cgroup: Path) -> Lab:
    """The lab's snitchd on the attribution path under test; rejects by default, so a client
    whose flow is not allowed learns it at once."""
    # `ip netns exec` mounts a sysfs of its own over /sys, hiding the cgroup mounts from snitchd:
    # the cgroup is reached through kthreadd's root, which is the machine's.
    where = f"/proc/2/root{cgroup}"
    # retry_window 0: each flow gets its own row here, though the same app sends to the same
    # destination again (the rounds below); the retry memory would count them as retries.
    lab.start_daemon(attribution=mode, bpf_cgroup=where, default_action="reject", retry_window=0)
    status = lab.ctl_json("status")
    assert str(status["attribution"]).startswith(mode), status["attribution"]
    return lab


# The proc path sees the exec through the proc connector's event, read by a thread of its own:
# when that event is read after the packet (a loaded machine), the flow is curl's. Seen once in
# a full run here; the bpf path records the connect itself and never races.
_EXEC_EVENT_RACES = pytest.mark.xfail(
    strict=False, reason="proc path: the exec event can be read after the packet"
)


@pytest.mark.parametrize("mode", ["bpf", pytest.param("proc", marks=_EXEC_EVENT_RACES)])
def test_connect_then_exec_is_decided_by_the_connecting_program(
    lab_on: Lab, mode: str, cgroup: Path, binaries: dict[str, str]
) -> None:
    """A non-blocking connect(), then at once execve() of curl (allowed everywhere): the flow
    must meet the connecting program's `reject`, and be logged under it (on the proc path the
    proc connector's exec event says which identity connected, or both are weighed)."""
    connexec = binaries["connexec"]
    lab_on.add_rule(f"allow app={curl_exe()}")
    lab_on.add_rule(f"reject app={connexec}")
    curl = [curl_exe(), "-s", "-o", "/dev/null", "--max-time", "3", f"http://{SERVER}:80/"]
    run_in(lab_on, cgroup, connexec, SERVER, "9000", *curl)
    rows = rows_like(lab_on, 1, dport=9000, proto="tcp")
    assert [r["action"] for r in rows] == ["reject"], rows
    if mode == "bpf":
        assert (rows[0]["exe"], rows[0]["source"]) == (connexec, "bpf")
    else:
        assert rows[0]["exe"] == connexec or connexec in rows[0]["reason"], rows[0]
        assert rows[0]["source"] == "sock_diag"
    own = rows_like(lab_on, 1, dport=80)
    if mode == "bpf":  # curl's own connection, made after its exec, is curl's and allowed
        assert [(r["exe"], r["action"]) for r in own] == [(curl_exe(), "allow")]
    else:  # the fallback cannot tell: within 250 ms of an exec, the stricter identity decides
        assert [(r["exe"], r["action"]) for r in own] == [(curl_exe(), "reject")]
        assert connexec in own[0]["reason"]


SHARED = """
import json, os, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setblocking(False)
child = os.fork()
if child == 0:
    try:
        s.connect((sys.argv[1], 9000))
    except BlockingIOError:
        pass
    print(json.dumps({"pid": os.getpid(), "sport": s.getsockname()[1]}), flush=True)
    time.sleep(2)
    os._exit(0)
time.sleep(2.5)  # the parent holds the very same socket all along
os.waitpid(child, 0)
"""


def test_child_connecting_on_its_parents_socket_is_named(lab_on: Lab, cgroup: Path) -> None:
    """A parent keeps a socket, its forked child connects on it: the child is who connected.
    (The proc path finds the child too here: it scans the newest processes first; a parent
    that sent on the socket before would be found first.)"""
    out = json.loads(run_in(lab_on, cgroup, PYTHON, "-c", SHARED, SERVER))
    rows = rows_like(lab_on, 1, dport=9000, sport=out["sport"])
    assert [r["pid"] for r in rows] == [out["pid"]], rows


REUSEPORT = """
import json, os, socket, sys, time
port = int(sys.argv[2])
def member(send):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", port))
    time.sleep(0.3)  # both bound before anyone sends
    if send:
        s.sendto(b"x", (sys.argv[1], 9000))
    time.sleep(1.5)
    os._exit(0)
pids = []
for send in (False, True):
    pid = os.fork()
    if pid == 0:
        member(send)
    pids.append(pid)
print(json.dumps({"sender": pids[1], "idle": pids[0]}), flush=True)
for pid in pids:
    os.waitpid(pid, 0)
"""


@pytest.mark.parametrize("mode", ["bpf"])
def test_reuseport_sibling_that_sent_is_named(lab_on: Lab, cgroup: Path) -> None:
    """Two siblings bound to one port with SO_REUSEPORT, one sends: the sender is named, in
    each of five rounds on five ports. BPF only: on the proc path sock_diag names the member
    the tuple's hash picks, the sender or not by chance (a strict expected failure here passed
    once in CI), as the README says."""
    for round_ in range(5):
        port = 41000 + round_
        out = json.loads(run_in(lab_on, cgroup, PYTHON, "-c", REUSEPORT, SERVER, str(port)))
        rows = rows_like(lab_on, 1, dport=9000, sport=port)
        assert [r["pid"] for r in rows] == [out["sender"]], (round_, out, rows)


@pytest.mark.parametrize(
    "mode",
    ["bpf", pytest.param("proc", marks=_fallback_cannot("no fd names an io_uring fixed file"))],
)
def test_io_uring_fixed_file_socket_is_attributed(
    lab_on: Lab, cgroup: Path, binaries: dict[str, str]
) -> None:
    """A socket only an io_uring ring holds, connected through the ring: its program is named,
    and its allow rule lets it through."""
    helper = binaries["uring_connect"]
    lab_on.add_rule(f"allow app={helper} port=9000")
    said = run_in(lab_on, cgroup, helper, SERVER, "9000")
    if said.startswith("io_uring-refused"):
        pytest.skip(f"the kernel refuses io_uring here: {said}")
    rows = rows_like(lab_on, 1, dport=9000, proto="tcp")
    assert [(r["exe"], r["action"]) for r in rows] == [(helper, "allow")], (said, rows)
    assert said == "connected"


@pytest.mark.parametrize(
    "mode",
    ["bpf", pytest.param("proc", marks=_fallback_cannot("the sender exits with its socket"))],
)
def test_twenty_one_datagram_processes_are_all_attributed(
    lab_on: Lab, cgroup: Path, binaries: dict[str, str]
) -> None:
    """Twenty processes, each sends one UDP datagram from a fresh socket and exits at once:
    all twenty flows are attributed to the program."""
    helper = binaries["udp_once"]
    lab_on.add_rule(f"allow app={helper} port=9000")
    for _ in range(20):
        run_in(lab_on, cgroup, helper, SERVER, "9000")
    rows = rows_like(lab_on, 20, dport=9000, proto="udp")
    assert len(rows) == 20, rows
    assert [(r["exe"], r["action"]) for r in rows] == [(helper, "allow")] * 20, rows


UDPLITE = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136)  # IPPROTO_UDPLITE
s.sendto(b"x", (sys.argv[1], 9000))
print(s.getsockname()[1], flush=True)
time.sleep(1)
"""


def test_udplite_sender_is_attributed(lab_on: Lab, mode: str, cgroup: Path) -> None:
    """UDP-Lite (IP protocol 136): sock_diag answers for it as for UDP, and its ports count."""
    sport = int(run_in(lab_on, cgroup, PYTHON, "-c", UDPLITE, SERVER))
    rows = rows_like(lab_on, 1, sport=sport, dport=9000)
    assert [(r["exe"], r["proto"]) for r in rows] == [(python_exe(), "other")], rows
    assert rows[0]["source"] == ("bpf" if mode == "bpf" else "sock_diag")


def attached(cgroup: Path) -> list[str]:
    """The BPF programs attached to `cgroup`, as the kernel lists them (bpftool)."""
    done = subprocess.run(
        ["bpftool", "-j", "cgroup", "show", str(cgroup)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return [str(p.get("name", "")) for p in json.loads(done.stdout.strip() or "[]")]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_recorder_is_detached_when_snitchd_stops_or_dies(lab: Lab, cgroup: Path, sig: str) -> None:
    """The programs live as long as snitchd's bpf_link fds: a clean stop detaches them, and so
    does a crash (SIGKILL), with nothing left hooked on the cgroup."""
    lab.start_daemon(attribution="bpf", bpf_cgroup=f"/proc/2/root{cgroup}")
    assert sorted(attached(cgroup)) == sorted(HOOK_NAMES)
    lab.stop_daemon(getattr(signal, sig))
    wait_for(lambda: attached(cgroup) == [], 10, "the programs to be detached")


def exec_watchers(daemon_pid: int) -> list[int]:
    return children_running(daemon_pid, "/procs/execs.py")


def test_exec_watcher_is_a_child_process_and_comes_back(lab: Lab) -> None:
    """The proc connector reports every fork of the machine: read in a thread of snitchd, a
    fork storm by any user held the packet loop's GIL (issue 12). It is read by a child, which
    snitchd starts again when it dies, and ends when snitchd stops."""
    lab.start_daemon(attribution="proc")
    assert lab.daemon is not None
    daemon = lab.daemon.pid
    lab.expect_log(r"exec watcher exited")
    _, second = kill_and_see_replaced(lambda: exec_watchers(daemon), "exec watcher child")
    wait_for(lambda: "exec watcher started again" in lab.log_text(), 10, "the restart logged")
    lab.stop_daemon()
    wait_for(lambda: not Path(f"/proc/{second}").exists(), 10, "the watcher to end with snitchd")


@pytest.mark.slow
def test_bpf_attribution_works_in_every_queue_reader(lab: Lab, cgroup: Path) -> None:
    """With two queue readers each reader looks up the recorder's connect records: curl's
    connections sent from each CPU are named curl by `bpf` and allowed, and snitchd stops with
    the hooks detached. The readers read snitchd's own recorder's maps: each program is
    attached once (each reader attached its own before: every connect ran them three times)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("one CPU: every flow would reach one reader")
    lab.start_daemon(
        attribution="bpf", bpf_cgroup=f"/proc/2/root{cgroup}", default_action="reject",
        retry_window=0, queue_readers=2,
    )  # fmt: skip
    assert str(lab.ctl_json("status")["attribution"]).startswith("bpf")
    assert sorted(attached(cgroup)) == sorted(HOOK_NAMES)
    lab.add_rule(f"allow app={curl_exe()}")
    curl = [curl_exe(), "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3"]
    for cpu in cpus:
        run_in(lab, cgroup, "taskset", "-c", str(cpu), *curl, f"http://{SERVER}:80/")
    rows = rows_like(lab, len(cpus), dport=80)
    assert [(r["exe"], r["source"], r["action"]) for r in rows] == [
        (curl_exe(), "bpf", "allow")
    ] * len(cpus), rows
    by_queue = lab.queued()
    assert by_queue.get(4242, 0) > 0 and by_queue.get(4243, 0) > 0, by_queue  # both readers


# A socket on a shared port (SO_REUSEADDR). "squat": connected to the server's echo, it sends
# nothing and prints the first echo it is given (the better match for the replies). "send": an
# unconnected one sends "service" there once.
_SHARED_PORT = """
import socket, sys
role, port, server = sys.argv[1], int(sys.argv[2]), (sys.argv[3], 9000)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
if role == "send":
    s.sendto(b"service", server)
    print("sent", flush=True)
    sys.exit()
s.connect(server)
s.settimeout(5)
print("bound", flush=True)
try:
    print(s.recv(64).decode(), flush=True)
except OSError:
    print("lost", flush=True)
"""


@pytest.mark.parametrize("mode", ["bpf"])  # the proc path: test_connmark.py
def test_a_datagram_on_a_shared_port_is_named_for_its_own_socket(
    lab_on: Lab, mode: str, cgroup: Path
) -> None:
    """uid 65534's connected socket on root's port, the better match of the tuple, was named
    for root's datagram, which the kernel then dropped (another uid's socket sent it). The
    socket match's note names root's socket, and the recorder knows it by that cookie."""
    lab_on.add_rule(f"allow app={python_exe()} user=root to={SERVER} port=9000")
    port = "47012"
    squat = ["ip", "netns", "exec", lab_on.client, *AS_NOBODY, PYTHON, "-c", _SHARED_PORT]
    with subprocess.Popen(
        [*squat, "squat", port, SERVER], stdout=subprocess.PIPE, text=True
    ) as squatter:
        try:
            assert squatter.stdout is not None
            assert squatter.stdout.readline().strip() == "bound"
            assert (
                run_in(lab_on, cgroup, PYTHON, "-c", _SHARED_PORT, "send", port, SERVER) == "sent"
            )
            heard = squatter.stdout.readline().strip()
        finally:
            squatter.kill()
    assert heard == "service"
    rows = rows_like(lab_on, 1, sport=int(port))
    assert [(r["uid"], r["action"], r["exe"], r["source"]) for r in rows] == [
        (0, "allow", python_exe(), "bpf")
    ]


@pytest.mark.parametrize("mode", ["bpf", pytest.param("proc", marks=_EXEC_EVENT_RACES)])
def test_an_interpreter_that_execs_another_script_is_that_script(
    lab_on: Lab, mode: str, cgroup: Path
) -> None:
    """A script allowed by a `script=` rule connects, then execs the same interpreter with
    another script (same pid, start time and executable): the second script's connect is its
    own, and no rule allows it (uid 65534, the attacker). Before: both paths kept the process
    described under (pid, start, executable) and judged evil.py as good.py ("evil connected");
    now the recorder's key holds the task's exec count, and the proc path asks the exec watch."""
    with good_then_evil() as (python, good, evil):
        lab_on.add_rule(f"allow app={python} script={good} port=80 proto=tcp")
        out = run_in(lab_on, cgroup, *AS_NOBODY, python, good, SERVER, evil, python, "1")
    assert out.splitlines() == ["good connected", "evil refused"], out
    rows = rows_like(lab_on, 2, dport=80)
    assert [r["action"] for r in rows] == ["allow", "reject"], rows
