"""Several queue reader processes (issue 21) in the lab: the kernel spreads new flows over
their queues by the sending CPU (`--queue-cpu-fanout`), so a client pinned to each CPU in turn
reaches each reader. Each test also checks, from the kernel's own queue counters, that every
queue got packets: a test that never reached a second reader would prove nothing.

The packet-path tests parametrised over readers=1 and readers=2 elsewhere:
test_packet_path.py (attribution, one row), test_prompts.py (twenty connects, one prompt),
test_lifecycle.py (fail modes after a crash).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from conftest import HERE, PYTHON, Lab, python_exe
from tests.integration.readerparams import READERS
from tests.support.lab import children_running

CPUS = sorted(os.sched_getaffinity(0))
QUEUE = 4242  # the lab's `queue`


def pinned(lab: Lab, cpu: int, port: int, *extra: str) -> str:
    """netclient.py, its connect sent from `cpu`: the queue `QUEUE + cpu % readers`."""
    argv = ("taskset", "-c", str(cpu), PYTHON, str(HERE / "netclient.py"), "tcp", "192.0.2.2")
    return lab.client_run(*argv, str(port), *extra)


def reader_pids(lab: Lab) -> list[int]:
    """snitchd's queue reader children, by their command line."""
    assert lab.daemon is not None
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rpartition(b")")[2].split()[1])
        if ppid == lab.daemon.pid and b"snitchd.readers.child" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def wait_for_log(lab: Lab, text: str, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while lab.log_text().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not {count} times in the daemon log"
        time.sleep(0.05)


@pytest.mark.parametrize("readers", [1, 2], ids=["readers=1", "readers=2"])
def test_a_rule_change_reaches_every_reader_on_the_next_flow(lab: Lab, readers: int) -> None:
    """A rule added, then deleted, decides the very next flow whichever reader gets it; each
    flow has one row; status sums the readers' counters."""
    if readers > len(CPUS):
        pytest.skip("one CPU: every flow would reach one reader")
    lab.start_daemon(queue_readers=readers)
    rule = lab.add_rule(f"allow app={python_exe()} port=80 proto=tcp")
    for cpu in CPUS:
        assert pinned(lab, cpu, 80) == "connected", f"cpu {cpu}: the new rule not seen"
    lab.ctl("delete-rule", str(rule))
    for cpu in CPUS:
        assert pinned(lab, cpu, 80, "--timeout", "1") == "timeout", f"cpu {cpu}: rule still held"
    counts = lab.queued()
    for n in range(readers):
        assert counts.get(QUEUE + n, 0) > 0, f"queue {QUEUE + n} got nothing: {counts}"
    rows = [r for r in lab.log_rows() if r["dport"] == 80]
    allowed = [r for r in rows if r["action"] == "allow"]
    assert len(allowed) == len(CPUS), "one row per allowed flow"
    assert all(r["rule_id"] == rule and r["exe"] == python_exe() for r in allowed)
    assert {r["action"] for r in rows} == {"allow", "deny"}
    deadline = time.monotonic() + 5  # readers send their counters every second
    while (seen := lab.ctl_json("status")["seen"]) < 2 * len(CPUS):
        assert time.monotonic() < deadline, f"status seen={seen}: readers' counters not summed"
        time.sleep(0.2)
    # The kernel's counters in status are every packet queue's, not the first one's only.
    packet_queues = sum(n for q, n in lab.queued().items() if QUEUE <= q < QUEUE + readers)
    assert lab.ctl_json("status")["kernel_queued_total"] == packet_queues


@pytest.mark.parametrize("mode", ["open", pytest.param("closed", marks=pytest.mark.slow)])
def test_a_killed_reader_is_replaced_and_decides_again(lab: Lab, mode: str) -> None:
    """A reader killed by pid: snitchd says what its queue does meanwhile (bypassed when fail
    open, closed when fail closed), starts another on the same queue, and flows of every CPU
    are decided by the rules again, a deny included (not bypassed)."""
    if len(CPUS) < 2:
        pytest.skip("one CPU: every flow would reach one reader")
    lab.expect_log(r"ERROR snitchd\.readers\.parent: queue reader \d exited")
    lab.start_daemon(queue_readers=2, fail_mode=mode)
    lab.add_rule("allow port=80")
    first = reader_pids(lab)
    assert len(first) == 2
    os.kill(first[0], signal.SIGKILL)
    wait_for_log(lab, "queue reader ready index=", 3)
    then = reader_pids(lab)
    assert len(then) == 2 and first[0] not in then and first[1] in then
    what = "bypassed (fail_mode open)" if mode == "open" else "closed (fail_mode closed)"
    assert f"is {what} until it is replaced" in lab.log_text()
    before = lab.queued()
    for cpu in CPUS:
        assert pinned(lab, cpu, 80) == "connected"
        assert pinned(lab, cpu, 9000, "--timeout", "1") == "timeout", "not decided: bypassed"
    after = lab.queued()
    for n in range(2):
        assert after[QUEUE + n] > before[QUEUE + n], f"queue {QUEUE + n} not read again"
    rows = [(r["dport"], r["action"]) for r in lab.log_rows()]
    assert rows.count((80, "allow")) == len(CPUS)


@pytest.mark.slow
def test_a_stuck_reader_is_killed_and_replaced(lab: Lab) -> None:
    """A reader whose loop stops (SIGSTOP: no counters for `STUCK_AFTER`) is killed by pid
    and replaced, as systemd's watchdog does to a stuck snitchd; its CPU's flows are decided
    again."""
    if len(CPUS) < 2:
        pytest.skip("one CPU: every flow would reach one reader")
    lab.expect_log(r"ERROR snitchd\.readers\.parent: queue reader \d exited .*stuck, killed")
    lab.start_daemon(queue_readers=2)
    lab.add_rule("allow port=80")
    first = reader_pids(lab)
    os.kill(first[1], signal.SIGSTOP)
    wait_for_log(lab, "queue reader ready index=", 3, timeout=30)
    assert "stuck, killed" in lab.log_text()
    then = reader_pids(lab)
    assert len(then) == 2 and first[1] not in then
    for cpu in CPUS:
        assert pinned(lab, cpu, 80) == "connected"
        assert pinned(lab, cpu, 9000, "--timeout", "1") == "timeout"


@pytest.mark.parametrize("readers", READERS)
def test_a_name_learnt_from_dns_decides_in_every_reader(lab: Lab, readers: int) -> None:
    """DNS answers are read by the main process only; the names it learns are copied to every
    reader before the answer reaches the program, so a host rule decides the connect that
    follows, whichever reader gets it, and the row names the host."""
    if readers > len(CPUS):
        pytest.skip("one CPU: every flow would reach one reader")
    lab.start_daemon(queue_readers=readers)
    lab.add_rule("allow port=53 proto=udp")
    lab.add_rule("allow to=api.example.org port=80")
    netclient = str(HERE / "netclient.py")
    for cpu in CPUS:
        argv = ("taskset", "-c", str(cpu), PYTHON, netclient, "resolve", "api.example.org", "80")
        assert lab.client_run(*argv, "--timeout", "2") == "connected", f"cpu {cpu}"
    rows = [r for r in lab.log_rows() if r["dport"] == 80]
    assert len(rows) == len(CPUS)
    assert all(r["host"] == "api.example.org" and r["action"] == "allow" for r in rows)
    counts = lab.queued()
    for n in range(readers):
        assert counts.get(QUEUE + n, 0) > 0, f"queue {QUEUE + n} got nothing: {counts}"


def test_an_executable_hashed_by_one_reader_is_not_hashed_by_another(lab: Lab) -> None:
    """Each reader hashed every executable for itself: a program's first flow on each reader
    waited for its digest again, and the machine hashed each file once per reader. A reader
    now passes each digest it computes to the others, through snitchd. The same program, from
    one CPU and then the other: one reader hashes, the other starts no hasher at all."""
    if len(CPUS) < 2:
        pytest.skip("one CPU: every flow would reach one reader")
    lab.start_daemon(queue_readers=2)
    lab.add_rule(f"allow app={python_exe()} port=80 proto=tcp")
    readers = reader_pids(lab)
    assert pinned(lab, CPUS[0], 80) == "connected"
    hashing = [pid for pid in readers if children_running(pid, "/procs/hasher.py")]
    assert len(hashing) == 1, hashing
    assert pinned(lab, CPUS[1], 80) == "connected"
    assert [pid for pid in readers if children_running(pid, "/procs/hasher.py")] == hashing
    counts = lab.queued()
    assert counts.get(QUEUE, 0) > 0 and counts.get(QUEUE + 1, 0) > 0, counts  # both readers
    rows = [r for r in lab.log_rows() if r["dport"] == 80]
    assert [(r["exe"], r["action"]) for r in rows] == [(python_exe(), "allow")] * 2, rows
    assert not [r["reason"] for r in rows if "unverified" in r["reason"]], rows  # digests known


@pytest.mark.slow
def test_a_reader_that_stops_reading_never_stops_the_main_process(lab: Lab) -> None:
    """Rule changes pile up for a stopped reader (SIGSTOP; a rules.d file of 4,000 rules: MBs,
    more than its socket takes): the main process writes them without blocking, so it still
    answers at once; the reader is killed and replaced, and its successor holds every rule.
    (Written blocking, the reload stopped the main process until a watchdog killed it.)"""
    if len(CPUS) < 2:
        pytest.skip("one CPU: every flow would reach one reader")
    lab.expect_log(r"ERROR snitchd\.readers\.parent: queue reader \d exited .*, killed")
    folder = lab.tmp / "rules.d"
    folder.mkdir(mode=0o755, exist_ok=True)
    lab.start_daemon(queue_readers=2)
    first = reader_pids(lab)
    os.kill(first[1], signal.SIGSTOP)
    rules = folder / "many.rules"
    rules.write_text("allow port=80\n" + "".join(f"deny port={p}\n" for p in range(20000, 24000)))
    os.chmod(rules, 0o644)
    assert lab.daemon is not None
    lab.daemon.send_signal(signal.SIGHUP)
    wait_for_log(lab, "rules file loaded name=many.rules", 1)
    assert lab.ctl_json("status")["rules"] == 4001  # answered: the loop never waited
    wait_for_log(lab, "queue reader ready index=", 3, timeout=30)
    assert first[1] not in reader_pids(lab)
    for cpu in CPUS:
        assert pinned(lab, cpu, 80) == "connected", f"cpu {cpu}: the file's rules not held"
