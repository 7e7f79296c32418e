"""The lab: two network namespaces over veth pairs, a private system bus, and a real snitchd.

Topology (documentation addresses only; nothing leaves the machine)::

    client netns (snitchd runs here)            server netns (netserver.py)
      veth0 192.0.2.1/24  2001:db8:1::1/64  <->  192.0.2.2/24  2001:db8:1::2/64
      veth1 198.51.100.1/24                 <->  198.51.100.2/24
      route 203.0.113.0/24 via 198.51.100.2      203.0.113.7-9/32 on lo
                                                 dnsserver.py on UDP 53 (example.org zone)

Every namespace, daemon, bus and temp dir is removed afterwards, even when a test fails; only
processes this fixture started are ended, by pid. Queue rules exist only inside the client
namespace. The daemon log is checked for tracebacks at the end of each test.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import json
import os
import pty
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from snitchd.procs.bpf import SOURCES, build_object, cgroup2_root
from tests.integration.scriptagent import ScriptedAgent
from tests.support.lab import AS_NOBODY, Bus, add_veth, run, wait_for
from tests.support.launcher import built_launcher

VENV_BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
TCP_PORTS = "22,53,80,443,8080,9000"
UDP_PORTS = "9000"

# Warnings any test may cause without meaning to: the first connection of each program alerts.
AMBIENT_WARNINGS = (re.compile(r"WARNING snitchd\.firewall: alert new-app: "),)
_LEVEL = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) ")

if os.geteuid() != 0:
    pytest.skip("integration tests need root (network namespaces)", allow_module_level=True)
AGENT_LAUNCHER = built_launcher()


def _built_bpf() -> Path:
    """snitchd's BPF objects, built once for the session into a directory every lab's state
    directory links to: snitchd builds what is missing there at each start (clang, ~0.3 s an
    object, a minute over the suite). test_socket_match.py builds its own, as snitchd does."""
    where = Path(tempfile.mkdtemp(prefix="snitch-bpf-"))
    atexit.register(shutil.rmtree, where, True)
    for source in SOURCES:
        build_object(where, source)
    return where / "bpf"


BPF_OBJECTS = _built_bpf()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--shard",
        default="",
        metavar="K/N",
        help="run the K-th of N shares of the tests (K from 0): test.sh runs two pytest "
        "processes side by side, each lab being namespaces, a bus and pins of its own",
    )


@pytest.hookimpl(trylast=True)  # after -m has deselected: the shares are of what runs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deal the tests out in turn, so each share gets some of every file: neighbours are alike
    (variants of one test), and the shares end at nearly the same time."""
    shard = str(config.getoption("--shard"))
    if not shard:
        return
    k, _, n = shard.partition("/")
    if not (k.isdigit() and n.isdigit() and int(k) < int(n)):
        raise pytest.UsageError(f"--shard wants K/N with 0 <= K < N, not {shard!r}")
    kept = [item for i, item in enumerate(items) if i % int(n) == int(k)]
    config.hook.pytest_deselected(items=[i for j, i in enumerate(items) if j % int(n) != int(k)])
    items[:] = kept


class Terminal:
    """A program on a pseudo-terminal, read the way a person reads the screen."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
        )
        os.close(slave)
        self.screen = b""

    def read_until(self, marker: bytes, timeout: float = 10) -> str:
        end = time.monotonic() + timeout
        while marker not in self.screen and time.monotonic() < end:
            if select.select([self.master], [], [], 0.2)[0]:
                try:
                    self.screen += os.read(self.master, 4096)
                except OSError:  # EIO: the program ended; show what it said
                    break
        text = self.screen.decode(errors="replace")
        assert marker in self.screen, text
        return text

    def shows(self, marker: bytes) -> bool:
        """Whether `marker` is on the screen now (reads what is there, waits for nothing)."""
        while select.select([self.master], [], [], 0)[0]:
            self.screen += os.read(self.master, 4096)
        return marker in self.screen

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        os.close(self.master)


class Lab:
    def __init__(self, tmp: Path) -> None:
        tag = secrets.token_hex(3)
        self.tmp = tmp
        self.client = f"snt-{tag}-c"
        self.server = f"snt-{tag}-s"
        self.bus: Bus | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_log = tmp / "snitchd.log"
        self.server_proc: subprocess.Popen[str] | None = None
        self.dns_proc: subprocess.Popen[str] | None = None
        self.db = tmp / "snitch.db"
        (tmp / "bpf").symlink_to(BPF_OBJECTS)
        self.config_path = tmp / "snitchd.toml"
        # The client's resolv.conf, as snitchd reads it (`resolv_conf`): the lab's DNS server.
        self.resolv_conf = tmp / "resolv.conf"
        self.resolv_conf.write_text("nameserver 192.0.2.2\n")
        # Log lines at WARNING or above that this test provokes on purpose (regexes); any other
        # fails the test, as firewalld's testsuite fails on ERROR or WARNING in its log.
        self.expected_log: list[re.Pattern[str]] = list(AMBIENT_WARNINGS)
        self.notify: socket.socket | None = None
        # Queue reader processes unless a test asks (`queue_readers`), see `lab` below.
        self.readers = 1

    # -- set-up -------------------------------------------------------------------------------
    def build(self) -> None:
        c, s = self.client, self.server
        run("ip", "netns", "add", c)
        run("ip", "netns", "add", s)
        add_veth(c, s, "veth0", "192.0.2.1", "192.0.2.2")
        add_veth(c, s, "veth1", "198.51.100.1", "198.51.100.2")
        self.ns(c, "ip", "-6", "addr", "add", "2001:db8:1::1/64", "dev", "veth0", "nodad")
        self.ns(s, "ip", "-6", "addr", "add", "2001:db8:1::2/64", "dev", "veth0", "nodad")
        for ns in (c, s):
            self.ns(ns, "ip", "link", "set", "lo", "up")
        for last in (7, 8, 9):
            self.ns(s, "ip", "addr", "add", f"203.0.113.{last}/32", "dev", "lo")
        self.ns(c, "ip", "route", "add", "203.0.113.0/24", "via", "198.51.100.2")
        self.server_proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                s,
                PYTHON,
                str(HERE / "netserver.py"),
                "--tcp",
                TCP_PORTS,
                "--udp",
                UDP_PORTS,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.dns_proc = subprocess.Popen(
            ["ip", "netns", "exec", s, PYTHON, str(HERE / "dnsserver.py")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for proc in (self.server_proc, self.dns_proc):
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "ready", f"server did not start: {line!r}"
        self.bus = Bus()

    def ns(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", ns, *argv, check=check)

    @property
    def env(self) -> dict[str, str]:
        assert self.bus is not None
        return {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.bus.address}

    def write_config(self, **values: Any) -> Path:
        conf = {
            "database": str(self.db),
            "default_action": "deny",
            "queue": 4242,
            # One queue read by snitchd itself unless a test or its module asks for reader
            # processes (issue 21; `readerparams.READERS`).
            "queue_readers": self.readers,
            "prompt_timeout": 5,
            "resolv_conf": str(self.resolv_conf),
            # This venv's launcher starts the agents here (root-owned, set-group-id, like
            # /opt/snitch/venv's; snitchd.agents checks that).
            "agent_launcher": str(AGENT_LAUNCHER),
            # Never hook the machine's own cgroup root from a test: the BPF path runs where a
            # test asks for it, on a cgroup of its own (test_connect_time.py).
            "attribution": "proc",
            # Never the machine's /etc/snitch/rules.d: a folder of the test's own (issue 18).
            "rules_dir": str(self.tmp / "rules.d"),
        } | values
        lines = []
        for key, value in conf.items():
            if isinstance(value, list | tuple):
                lines.append(f"{key} = [{', '.join(json.dumps(v) for v in value)}]")
            elif isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, str):
                lines.append(f'{key} = "{value}"')
            elif isinstance(value, list | tuple):
                lines.append(f"{key} = {json.dumps(list(value))}")
            else:
                lines.append(f"{key} = {value}")
        self.config_path.write_text("\n".join(lines) + "\n")
        return self.config_path

    def start_daemon(self, *, prefix: tuple[str, ...] = (), **config: Any) -> None:
        """Start snitchd in the client namespace (run through `prefix`, e.g. setpriv) and wait
        for READY=1 on a notify socket."""
        self.write_config(**config)
        notify_path = self.tmp / "notify.sock"
        notify_path.unlink(missing_ok=True)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify = notify
        notify.bind(str(notify_path))
        notify.settimeout(20)
        env = self.env | {"NOTIFY_SOCKET": str(notify_path)}
        with open(self.daemon_log, "a") as err:
            self.daemon = subprocess.Popen(
                [*self.snitchd_argv(*prefix), "--debug"],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )
        try:
            while True:
                try:
                    msg = notify.recv(4096).decode()
                except TimeoutError:
                    raise AssertionError(
                        "snitchd did not send READY=1:\n" + self.log_text()
                    ) from None
                if "READY=1" in msg:
                    break
        except BaseException:
            notify.close()
            raise

    def snitchd_argv(self, *prefix: str, ip: str = "ip") -> list[str]:
        """snitchd in the client namespace on the lab's config, run through `prefix` (setpriv)."""
        snitchd = str(VENV_BIN / "snitchd")
        return [
            ip,
            "netns",
            "exec",
            self.client,
            *prefix,
            snitchd,
            "--config",
            str(self.config_path),
        ]

    def run_snitchd(
        self, *, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        """snitchd in the client namespace (run through `prefix`, e.g. setpriv), expected to
        stop by itself: a start-up error."""
        ip = shutil.which("ip") or "/usr/sbin/ip"
        return subprocess.run(
            self.snitchd_argv(*prefix, ip=ip),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=env or self.env,
        )

    def stop_daemon(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop snitchd with `sig` (SIGKILL stands for a crash) and wait for it. One that does
        not stop within 15 s is killed, and the test fails: systemd would have waited for it
        before starting it again (a log hand-over cut midway once held snitchd 60 s)."""
        if self.daemon is None:
            return None
        self.daemon.send_signal(sig)
        stuck = False
        try:
            rc = self.daemon.wait(15)
        except subprocess.TimeoutExpired:
            stuck = True
            self.daemon.kill()
            rc = self.daemon.wait()
        self.daemon = None
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        if stuck:
            name = signal.Signals(sig).name
            pytest.fail(f"snitchd did not stop within 15 s of {name}:\n{self.log_text()[-4000:]}")
        return rc

    def log_text(self) -> str:
        return self.daemon_log.read_text() if self.daemon_log.exists() else ""

    def expect_log(self, *patterns: str) -> None:
        """This test provokes these warnings or errors on purpose: the lab lets them pass."""
        self.expected_log += [re.compile(p) for p in patterns]

    def unexpected_log(self) -> list[str]:
        """Daemon log lines at WARNING or above that no test declared, and any traceback."""
        found = []
        for line in self.log_text().splitlines():
            level = _LEVEL.match(line)
            if level is None:
                if line.startswith("Traceback"):
                    found.append(line)
                continue
            if not any(p.search(line) for p in self.expected_log):
                found.append(line)
        return found

    # -- acting -------------------------------------------------------------------------------
    def client_run(self, *argv: str, timeout: float = 30) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", self.client, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return done.stdout.strip() or done.stderr.strip()

    def queued(self) -> dict[int, int]:
        """Packets each queue of the client namespace got since it was bound, by number: the
        kernel's own count (column 8 of /proc/net/netfilter/nfnetlink_queue), which says
        which queue reader a flow reached."""
        text = self.client_run("cat", "/proc/net/netfilter/nfnetlink_queue")
        return {int(f[0]): int(f[7]) for f in (line.split() for line in text.splitlines()) if f}

    def py(self, mode: str, host: str, port: int, *extra: str) -> str:
        return self.client_run(PYTHON, str(HERE / "netclient.py"), mode, host, str(port), *extra)

    def spawn_client(self, *args: str) -> subprocess.Popen[str]:
        """netclient.py in the background (the caller reads its stdout and reaps it)."""
        return subprocess.Popen(
            ["ip", "netns", "exec", self.client, PYTHON, str(HERE / "netclient.py"), *args],
            stdout=subprocess.PIPE,
            text=True,
        )

    def curl(self, url: str) -> str:
        """What curl saw: connected, refused or timeout (by its exit status)."""
        done = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.client,
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "--connect-timeout",
                "2",
                "-g",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return {0: "connected", 7: "refused", 28: "timeout"}.get(
            done.returncode, f"curl:{done.returncode}"
        )

    def ctl(self, *argv: str, uid: int | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [str(VENV_BIN / "snitchctl"), *argv]
        if uid is not None:
            cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *cmd]
        return subprocess.run(
            cmd, capture_output=True, text=True, env=self.env, timeout=30, check=False
        )

    def ctl_json(self, *argv: str) -> Any:
        done = self.ctl("--json", *argv)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def add_rule(self, text: str) -> int:
        return int(self.ctl_json("add-rule", text)["id"])

    def forward_queued(self) -> int:
        """Packets the FORWARD queue rules sent to snitchd (the kernel's own counters): in
        the forward chain, or past the limits in the chain it jumps to."""
        text = self.ns(self.client, "iptables-save", "-c", "-t", "mangle").stdout
        return sum(
            int(line.split(":")[0].lstrip("["))
            for line in text.splitlines()
            if "NFQUEUE" in line and re.search(r"\] -A SNITCH_(FORWARD|FWDQ) ", line)
        )

    def log_rows(self, limit: int = 1000, **query: str) -> list[dict[str, Any]]:
        """The newest `limit` rows of `snitchctl log`: a flood's rows can push older ones out."""
        args = ["log", "--limit", str(limit)]
        for key, value in query.items():
            args += [f"--{key}", value]
        rows: list[dict[str, Any]] = self.ctl_json(*args)
        return rows

    def insert_rule_by_hand(self, text: str) -> None:
        """What sqlite3 by hand (or malware) would do: a rule row snitchd did not write."""
        code = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute("
            "'INSERT INTO rules (text, created, hits) VALUES (?, 0, 0)', (sys.argv[2],)); "
            "c.commit()"
        )
        run(PYTHON, "-c", code, str(self.db), text, timeout=30)

    def iptables_save(self) -> str:
        return (
            self.ns(self.client, "iptables-save").stdout
            + self.ns(self.client, "ip6tables-save").stdout
        )

    # -- tear-down ----------------------------------------------------------------------------
    def destroy(self) -> None:
        try:
            self.stop_daemon()
        finally:
            for proc in (self.server_proc, self.dns_proc):
                if proc is not None:
                    proc.kill()
                    proc.wait()
                    if proc.stdout is not None:
                        proc.stdout.close()
            if self.bus is not None:
                self.bus.stop()
            for ns in (self.client, self.server):
                run("ip", "netns", "del", ns, check=False)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory uid 65534 can read and run files from (pytest's tmp dirs are root's alone),
    removed however the test ends."""
    path = Path(tempfile.mkdtemp(prefix="snitch-shared-", dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def nobody_dir(shared_dir: Path) -> Path:
    """`shared_dir`, owned by uid 65534: for a test whose unprivileged program writes there."""
    os.chown(shared_dir, 65534, 65534)
    return shared_dir


@pytest.fixture
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A module runs each of its tests with one queue reader and with several (issue 21) by
    `pytestmark = pytest.mark.parametrize("lab", READERS, indirect=True)`."""
    lab = Lab(tmp_path)
    lab.readers = getattr(request, "param", 1)
    try:
        lab.build()
        yield lab
        unexpected = lab.unexpected_log()
        assert unexpected == [], "unexpected daemon log lines:\n" + "\n".join(unexpected)
    finally:
        lab.destroy()


@pytest.fixture
def running(lab: Lab) -> Lab:
    lab.start_daemon()
    return lab


def python_exe() -> str:
    return os.path.realpath(PYTHON)


def netclient_who() -> str:
    """How a rule made by answering netclient.py's prompt names it (issue 14): the interpreter,
    pinned to its digest, and the script."""
    with open(python_exe(), "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return f"app={python_exe()} sha256={digest} script={HERE / 'netclient.py'}"


def bare_reason(row: dict[str, Any]) -> str:
    """A log row's reason without the notes on who sent it (" [script …]", issue 14)."""
    return str(row["reason"]).split(" [", 1)[0]


def curl_exe() -> str:
    found = shutil.which("curl")
    assert found is not None
    return os.path.realpath(found)


def lab_agent(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> ScriptedAgent:
    """The real agent code on the lab's bus, not yet started (`await agent.start()` once the
    daemon runs); the caller stops it."""
    assert lab.bus is not None
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", lab.bus.address)
    return ScriptedAgent()


async def start_agent(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> ScriptedAgent:
    """The real agent code registered on the lab's bus (the daemon started); the caller stops it."""
    agent = lab_agent(lab, monkeypatch)
    await agent.start()
    return agent


@pytest.fixture
async def agent(running: Lab, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ScriptedAgent]:
    """The real agent code, registered on the running lab's bus, driven by the test."""
    a = await start_agent(running, monkeypatch)
    try:
        yield a
    finally:
        a.stop()


_CLIENTS: list[asyncio.subprocess.Process] = []


@pytest.fixture
async def end_clients() -> AsyncIterator[None]:
    """Clients `spawn_in_client` started and a failed test left running are ended (by pid) and
    reaped. A module that spawns asks for it: `pytestmark = pytest.mark.usefixtures(...)`."""
    try:
        yield
    finally:
        while _CLIENTS:
            proc = _CLIENTS.pop()
            if proc.returncode is None:
                proc.kill()
            await proc.communicate()


async def _start_in_client(lab: Lab, *argv: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", lab.client, *argv, stdout=asyncio.subprocess.PIPE
    )


async def spawn_in_client(lab: Lab, *argv: str) -> asyncio.subprocess.Process:
    """A program in the client namespace, started and left running (stdout piped): read it with
    `client_outcome`. Ended by `end_clients` if it is still running at the test's end."""
    proc = await _start_in_client(lab, *argv)
    _CLIENTS.append(proc)
    return proc


async def spawn_netclient(lab: Lab, *args: str) -> asyncio.subprocess.Process:
    """netclient.py in the client namespace, as `spawn_in_client`."""
    return await spawn_in_client(lab, PYTHON, str(HERE / "netclient.py"), *args)


async def client_outcome(proc: asyncio.subprocess.Process) -> str:
    """What a client program printed: netclient.py's word on its connection ("connected",
    "refused", "timeout"…)."""
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return out.decode().strip()


async def run_netclient(lab: Lab, *args: str) -> str:
    """netclient.py in the client namespace, to its end: what it said."""
    proc = await _start_in_client(lab, PYTHON, str(HERE / "netclient.py"), *args)
    try:
        return await client_outcome(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def spawn_connect(
    lab: Lab, port: int, timeout: float = 30, user: Sequence[str] = ()
) -> subprocess.Popen[str]:
    """netclient.py connecting to the server side (192.0.2.2, tcp) on `port`, in the background,
    for a test that cannot await (a Qt test), run by `user` (a setpriv prefix; root if empty):
    read it with `popen_outcome`."""
    argv = [PYTHON, str(HERE / "netclient.py"), "tcp", "192.0.2.2", str(port)]
    return subprocess.Popen(
        ["ip", "netns", "exec", lab.client, *user, *argv, "--timeout", str(timeout)],
        stdout=subprocess.PIPE,
        text=True,
    )


def popen_outcome(proc: subprocess.Popen[str], timeout: float = 40) -> str:
    """What a background netclient.py said of its connection ("connected", "refused"…)."""
    out, _ = proc.communicate(timeout=timeout)
    return out.strip()


MODE_ALERT = r"WARNING snitchd\.firewall: alert mode-changed: "
PROFILE_ALERT = r"WARNING snitchd\.firewall: alert profile-changed: "


def run_with_lab_env(lab: Lab, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A program run on the host with the lab's environment (its private bus), output captured,
    its exit status left to the caller."""
    return subprocess.run(
        argv, capture_output=True, text=True, env=lab.env, timeout=timeout, check=False
    )


# Run in the client namespace: joins an IPv4 group on the client's address and an IPv6 one on
# veth0, so the kernel sends its own IGMP and MLD reports (packets of no process), then stays
# a moment while they go out.
JOIN_GROUPS = (
    "import socket, struct, time; "
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    "s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, "
    "socket.inet_aton('239.1.2.3') + socket.inet_aton('192.0.2.1')); "
    "s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
    "s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, "
    "socket.inet_pton(socket.AF_INET6, 'ff12::1234') "
    "+ struct.pack('@I', socket.if_nametoindex('veth0'))); time.sleep(1.5)"
)

FORGED_APP = "/forged/by-nobody"
# A program run as uid 65534, the unprivileged attacker of the threat model.


def forge(lab: Lab) -> None:
    """forger.py as uid 65534: lies to every connection on the lab's bus (a decision and rates
    naming FORGED_APP, a mode change, snitchd leaving, NetworkManager's and logind's changes)."""
    done = run_with_lab_env(lab, *AS_NOBODY, PYTHON, str(HERE / "forger.py"), FORGED_APP)
    assert done.returncode == 0 and int(done.stdout) >= 2, done


# -- a cgroup of the test's own, where the BPF recorder is attached ------------------------------
@pytest.fixture(scope="module")
def cgroup() -> Iterator[Path]:
    """A cgroup v2 directory of the module's own (snitchd's `bpf_cgroup` through
    `/proc/2/root`: `ip netns exec` hides the cgroup mount); removed after."""
    root = cgroup2_root()
    if root is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    path = Path(root) / f"snitch-test-{secrets.token_hex(4)}"
    path.mkdir()
    try:
        yield path
    finally:
        # Our clients have exited (each test waits for its own); rmdir fails loudly otherwise.
        for _ in range(50):
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)
        else:
            path.rmdir()


@pytest.fixture
def lab_bpf(lab: Lab, cgroup: Path) -> Lab:
    """The lab's snitchd on the BPF path, attached to the module's cgroup; rejects by default,
    so a client whose flow is not allowed learns it at once."""
    # (`ip netns exec` hides the cgroup mount: it is reached through kthreadd's root.)
    lab.start_daemon(
        attribution="bpf", bpf_cgroup=f"/proc/2/root{cgroup}", default_action="reject",
        retry_window=0,
    )  # fmt: skip
    assert str(lab.ctl_json("status")["attribution"]).startswith("bpf")
    return lab


# -- an interpreter that execs itself with another script (same pid, start time, executable) --
GOOD_SCRIPT = """
import os, socket, sys
server, evil, python, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
for _ in range(count):
    with socket.create_connection((server, 80), timeout=2):
        print("good connected", flush=True)
os.execv(python, [python, evil, server])
"""
EVIL_SCRIPT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], 80), timeout=2):
        print("evil connected", flush=True)
except ConnectionRefusedError:
    print("evil refused", flush=True)
"""


@contextlib.contextmanager
def good_then_evil() -> Iterator[tuple[str, str, str]]:
    """(python, good.py, evil.py): run as `python good.py SERVER evil.py python N`, good.py
    connects to port 80 N times, then execs the same python with evil.py, which connects once.
    The system's python: the lab's may live under /root, where uid 65534 cannot exec."""
    where = Path(tempfile.mkdtemp(prefix="snitch-scripts-"))
    try:
        where.chmod(0o755)
        good, evil = where / "good.py", where / "evil.py"
        good.write_text(GOOD_SCRIPT)
        evil.write_text(EVIL_SCRIPT)
        yield os.path.realpath("/usr/bin/python3"), str(good), str(evil)
    finally:
        shutil.rmtree(where)


def run_in(lab: Lab, cgroup: Path | None, *argv: str, timeout: float = 30) -> str:
    """`argv` in the client namespace, inside `cgroup` from its first instruction (it joins
    before `ip netns exec`, which hides the cgroup mount, and stays in it); outside any of
    ours when `cgroup` is None."""
    join = f"echo $$ > {cgroup}/cgroup.procs && " if cgroup is not None else ""
    done = subprocess.run(
        ["sh", "-c", f'{join}exec "$@"', "sh", "ip", "netns", "exec", lab.client, *argv],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    return done.stdout.strip() or done.stderr.strip()


def rows_like(lab: Lab, count: int, **match: object) -> list[dict[str, Any]]:
    """The log rows whose fields equal `match`, once at least `count` are there (10 s at most)."""
    found: list[dict[str, Any]] = []

    def enough() -> bool:
        found[:] = [r for r in lab.log_rows() if all(r.get(k) == v for k, v in match.items())]
        return len(found) >= count

    with contextlib.suppress(TimeoutError):  # the assertion that follows says what was there
        wait_for(enough, 10, f"{count} log rows like {match}")
    return found
