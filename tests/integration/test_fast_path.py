"""Issue 21: the fast path (`snitchd.fastpath`). A process's connect to where a rule allowed it
to connect before is passed by the kernel and logged by snitchd, one row per flow, with no trip
through the queue; and nothing else ever is: another program, the same process after an exec,
any flow once the rules changed, any flow while a rule naming a host is held.

Each test drives one long-lived client (`csrc/fastclient.c`, compiled now) in the BPF recorder's
cgroup, and reads the kernel's own queue counter: a flow the fast path passed never reached the
queue.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.conftest import (
    AS_NOBODY,
    HERE,
    Lab,
    curl_exe,
    good_then_evil,
    rows_like,
    run_in,
)
from tests.support.lab import stop_process, wait_for

pytestmark = pytest.mark.root

SERVER = "192.0.2.2"
SERVER6 = "2001:db8:1::2"
QUEUE = 4242  # the lab's


class Client:
    """fastclient, one process, told what to do line by line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def tcp(self, port: int, host: str = SERVER) -> str:
        return self.say(f"tcp {host} {port}")

    def say(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()


@pytest.fixture(scope="module")
def fastclient() -> Iterator[str]:
    """csrc/fastclient.c, built in a directory every user may enter (uid 65534 runs it)."""
    where = tempfile.mkdtemp(prefix="snitch-fastclient-")
    try:
        os.chmod(where, 0o755)
        target = os.path.join(where, "fastclient")
        subprocess.run(["cc", "-O2", "-o", target, str(HERE / "csrc" / "fastclient.c")], check=True)
        yield target
    finally:
        shutil.rmtree(where)


@contextmanager
def client(lab: Lab, cgroup: Path, *argv: str) -> Iterator[Client]:
    """`argv` (fastclient, maybe through setpriv) in the client namespace and the recorder's
    cgroup."""
    join = f'echo $$ > {cgroup}/cgroup.procs && exec "$@"'
    argv = ("ip", "netns", "exec", lab.client, *argv)
    proc = subprocess.Popen(
        ["sh", "-c", join, "sh", *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        yield Client(proc)
    finally:
        stop_process(proc)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def queued(lab: Lab) -> int:
    return lab.queued().get(QUEUE, 0)


@pytest.mark.parametrize("server", [SERVER, SERVER6], ids=["ipv4", "ipv6"])
def test_a_connect_a_rule_allowed_before_is_passed_by_the_kernel_and_logged(
    lab_bpf: Lab, cgroup: Path, fastclient: str, server: str
) -> None:
    """Ten connects of one process (an ordinary user's) by one rule: the first is queued, the
    others pass in the kernel; each has its row, naming the rule and the program."""
    lab = lab_bpf
    assert lab.ctl_json("status")["fast_path"] == "on"
    rule = lab.add_rule(f"allow app={fastclient} port=80 proto=tcp")
    before = queued(lab)
    with client(lab, cgroup, *AS_NOBODY, fastclient) as c:
        seen = [c.tcp(80, server) for _ in range(10)]
    assert seen == ["connected"] * 10
    assert queued(lab) - before == 1, "every connect after the first went to the queue"
    rows = rows_like(lab, 10, dport=80, action="allow")
    assert len(rows) == 10, "one row per flow"
    assert {(r["rule_id"], r["exe"], r["uid"], r["dst"]) for r in rows} == {
        (rule, fastclient, 65534, server)
    }
    assert len({r["sport"] for r in rows}) == 10
    wait_for(lambda: lab.ctl_json("status")["fast"] == 9, 5, "fast counter 9")


def test_a_rule_change_ends_what_the_kernel_kept(
    lab_bpf: Lab, cgroup: Path, fastclient: str
) -> None:
    """Kept by one rule, then the rule deleted: the very next connect is queued and refused
    (the default, reject); a rule added again keeps it again."""
    lab = lab_bpf
    rule = lab.add_rule(f"allow app={fastclient} port=80 proto=tcp")
    with client(lab, cgroup, fastclient) as c:
        assert [c.tcp(80) for _ in range(3)] == ["connected"] * 3
        lab.ctl("delete-rule", str(rule))
        before = queued(lab)
        assert c.tcp(80) == "refused"
        assert queued(lab) - before == 1
        lab.add_rule(f"deny app={fastclient} port=80 proto=tcp to={SERVER}")
        lab.add_rule(f"allow app={fastclient} port=80 proto=tcp")
        assert c.tcp(80) == "timeout", "the more specific deny decides"


def test_an_exec_after_kept_connects_is_decided_afresh(
    lab_bpf: Lab, cgroup: Path, fastclient: str
) -> None:
    """The exec-after-connect attack, the other way round: a process kept by its program's rule
    execs curl (same pid, same start time); curl's connect is curl's, and no rule allows it."""
    lab = lab_bpf
    lab.add_rule(f"allow app={fastclient} port=80 proto=tcp")
    with client(lab, cgroup, *AS_NOBODY, fastclient) as c:
        assert [c.tcp(80) for _ in range(3)] == ["connected"] * 3
        before = queued(lab)
        assert c.proc.stdin is not None and c.proc.stdout is not None
        c.proc.stdin.write(f"exec {curl_exe()} -s -o /dev/null --connect-timeout 2 "
                           f"http://{SERVER}:80/\n")  # fmt: skip
        c.proc.stdin.flush()
        assert c.proc.wait(10) == 7, "curl connected: it was passed on fastclient's rule"
    assert queued(lab) - before == 1
    rows = rows_like(lab, 1, dport=80, exe=curl_exe())
    assert [r["action"] for r in rows] == ["reject"]


def test_nothing_is_kept_while_a_rule_names_a_host(
    lab_bpf: Lab, cgroup: Path, fastclient: str
) -> None:
    """A host's addresses change with DNS: while a rule naming one is held, every connect is
    queued and decided (a deny of a name learnt later must hold at once)."""
    lab = lab_bpf
    lab.add_rule(f"allow app={fastclient} port=80 proto=tcp")
    lab.add_rule("deny to=www.example.org")
    before = queued(lab)
    with client(lab, cgroup, fastclient) as c:
        assert [c.tcp(80) for _ in range(5)] == ["connected"] * 5
    assert queued(lab) - before == 5
    assert lab.ctl_json("status")["fast"] == 0


def test_several_queue_readers_keep_nothing_in_the_kernel(
    lab: Lab, cgroup: Path, fastclient: str
) -> None:
    """Each reader decides on its own copy of the rules, which the generation does not cover:
    the fast path is off, and status says why."""
    lab.start_daemon(attribution="bpf", bpf_cgroup=f"/proc/2/root{cgroup}", queue_readers=2)
    assert lab.ctl_json("status")["fast_path"] == "off: not with several queue readers"
    lab.add_rule(f"allow app={fastclient} port=80 proto=tcp")
    with client(lab, cgroup, fastclient) as c:
        assert [c.tcp(80) for _ in range(3)] == ["connected"] * 3
    assert sum(lab.queued().values()) == 3


def test_an_interpreter_execing_another_script_is_not_passed_as_the_first(
    lab_bpf: Lab, cgroup: Path
) -> None:
    """A script is part of who an interpreter's process is, and the kernel's key holds the
    task's exec count: good.py, kept by its `script=` rule, execs the same python with evil.py
    (same pid, start time and executable); evil.py's connect is queued and refused (uid 65534)."""
    lab = lab_bpf
    with good_then_evil() as (python, good, evil):
        lab.add_rule(f"allow app={python} script={good} port=80 proto=tcp")
        before = queued(lab)
        out = run_in(lab, cgroup, *AS_NOBODY, python, good, SERVER, evil, python, "3")
    assert out.splitlines() == ["good connected"] * 3 + ["evil refused"], out
    assert queued(lab) - before == 2, "good.py's first connect, and evil.py's"
    assert lab.ctl_json("status")["fast"] == 2
