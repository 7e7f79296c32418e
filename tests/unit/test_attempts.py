"""A decided attempt remembered briefly (issue 15): retries get the same verdict without a new
prompt and count on the attempt's log row; rules always come first; the memory is bounded per
user. The firewall runs for real here, on a real store, with the broker and a transport that
records prompts; the packets and the event log are the recorders below the kernel and the log
writer."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest

from snitch_common.answers import Answer
from snitch_common.records import Attribution, Flow, Process, Proto
from snitch_common.rules import Action, parse_rule
from snitchd.attempts import Attempts, RowRef, attempt_key
from snitchd.config import Config
from snitchd.firewall import Firewall
from snitchd.queries import LogQuery
from snitchd.store import Decision, Store
from tests.support.broker import SentPrompts
from tests.support.firewall import NOW, Clock, EventRecorder, Packet, make_firewall

CURL = "/usr/bin/curl"


@pytest.fixture
def parts(tmp_path: Path, clock: Clock) -> Iterator[tuple[Firewall, EventRecorder, SentPrompts]]:
    log, prompts = EventRecorder(), SentPrompts()
    config = Config(database=str(tmp_path / "snitch.db"), default_action=Action.DENY)
    fw = make_firewall(tmp_path / "snitch.db", clock, config, log)
    fw.broker.transport = prompts
    fw.broker.register(":1.5", "/agent", 1000)
    try:
        yield fw, log, prompts
    finally:
        fw.store.close()


def curl(uid: int = 1000, verified: bool = True, pid: int = 7) -> Process:
    return Process(Attribution.PROCESS, pid=pid, uid=uid, exe=CURL, verified=verified)


def flow(sport: int, dst: str = "203.0.113.7", port: int = 443) -> Flow:
    return Flow(Proto.TCP, ip_address("192.0.2.1"), sport, ip_address(dst), port, "eth0")


def send(fw: Firewall, sport: int, proc: Process | None = None, dst: str = "203.0.113.7") -> Packet:
    pkt = Packet()
    fw._decide(pkt, flow(sport, dst), proc or curl())  # type: ignore[arg-type]
    return pkt


async def test_a_denied_attempt_retried_is_asked_and_logged_once(
    parts: tuple[Firewall, EventRecorder, SentPrompts], clock: Clock
) -> None:
    fw, log, prompts = parts
    first = send(fw, 40000)
    assert len(prompts.sent) == 1
    await fw.broker.answer(Answer(prompts.sent[0].id, Action.DENY, "once"), ":1.5")
    assert first.verdict == "drop" and len(log.rows) == 1
    for i in range(1, 4):  # three retries, a few seconds apart, each a new connection
        clock.now += 3
        assert send(fw, 40000 + i).verdict == "drop"
    assert len(prompts.sent) == 1, "a retry opened a new prompt"
    assert len(log.rows) == 1, "a retry made a row of its own"
    assert list(log.retries.values()) == [3]
    (row,) = log.retries
    assert (row.sport, row.time) == (40000, NOW)
    assert fw.counters.retries == 3


async def test_after_the_window_it_is_a_new_attempt(
    parts: tuple[Firewall, EventRecorder, SentPrompts], clock: Clock
) -> None:
    fw, log, prompts = parts
    send(fw, 40000)
    await fw.broker.answer(Answer(prompts.sent[0].id, Action.DENY, "once"), ":1.5")
    clock.now += fw.config.retry_window + 0.1
    send(fw, 40001)
    assert len(prompts.sent) == 2 and log.retries == {}


async def test_rules_come_first_and_a_deny_never_becomes_an_allow(
    parts: tuple[Firewall, EventRecorder, SentPrompts], clock: Clock
) -> None:
    """A deny rule added after an answer stands; a remembered deny never lets through what no
    rule allows; an allow answered once is not remembered (the next connection is asked)."""
    fw, log, prompts = parts
    send(fw, 40000)
    await fw.broker.answer(Answer(prompts.sent[0].id, Action.ALLOW, "once"), ":1.5")
    record = await fw.add_rule(parse_rule(f"reject app={CURL} to=203.0.113.7"), "test")
    assert send(fw, 40001).verdict == "reject" and len(prompts.sent) == 1
    assert log.rows[-1].rule_id == record.id
    await fw.delete_rule(record.id, "test")
    # The rule's reject was remembered, but its rule is gone: asked again, not rejected.
    pending = send(fw, 40002)
    assert pending.verdict == "" and len(prompts.sent) == 2


async def test_a_rule_verdict_retried_counts_one_hit(
    parts: tuple[Firewall, EventRecorder, SentPrompts], clock: Clock
) -> None:
    fw, log, _ = parts
    record = await fw.add_rule(parse_rule(f"deny app={CURL} to=203.0.113.7"), "test")
    for i in range(5):
        clock.now += 1
        assert send(fw, 40000 + i).verdict == "drop"
    assert [r.rule_id for r in log.rows] == [record.id]
    assert list(log.retries.values()) == [4]


async def test_unverified_and_other_users_share_nothing(
    parts: tuple[Firewall, EventRecorder, SentPrompts], clock: Clock
) -> None:
    fw, _, prompts = parts
    send(fw, 40000)
    await fw.broker.answer(Answer(prompts.sent[0].id, Action.DENY, "once"), ":1.5")
    fw.broker.register(":1.6", "/agent", 1001)
    send(fw, 40001, curl(uid=1001))
    assert len(prompts.sent) == 2, "another user's flow got this user's remembered verdict"
    assert attempt_key(flow(1), curl(verified=False)) is None
    assert attempt_key(flow(1), Process.uid_only(1000)) is None


def test_memory_is_bounded_per_user() -> None:
    """A user who makes a million attempts pushes out their own, not another user's."""
    attempts = Attempts(window=10, max_total=100, max_per_uid=20)
    row = RowRef(NOW, "tcp", "192.0.2.1", 1, "203.0.113.7", 443)
    bob = attempt_key(flow(1), curl(uid=1001))
    assert bob is not None
    attempts.remember(bob, Action.DENY, None, "x", row, NOW)
    for i in range(5000):
        key = attempt_key(flow(1, dst=str(ip_address("198.51.100.0") + i % 256), port=i), curl())
        assert key is not None
        attempts.remember(key, Action.DENY, None, "x", row, NOW)
    assert len(attempts) == 21
    assert attempts.recall(bob, NOW + 1) is not None
    assert attempts.recall(bob, NOW + 10) is None  # the window is over


def test_an_attempt_retried_forever_ends() -> None:
    attempts = Attempts(window=10)
    key = attempt_key(flow(1), curl())
    assert key is not None
    row = RowRef(NOW, "tcp", "192.0.2.1", 1, "203.0.113.7", 443)
    attempts.remember(key, Action.DENY, None, "x", row, NOW)
    t = NOW
    while (found := attempts.recall(key, t + 5)) is not None:
        t += 5
        attempts.retried(key, found, t)
    assert NOW + 50 <= t <= NOW + 60


def test_the_store_adds_retries_to_the_attempts_row(tmp_path: Path) -> None:
    store = Store(tmp_path / "snitch.db")
    try:
        first = Decision(NOW, flow(40000), curl(), Action.DENY, None, "answered once")
        other = Decision(NOW + 1, flow(40009), curl(), Action.DENY, None, "answered once")
        store.log_decisions([first, other])
        ref = RowRef(NOW, "tcp", "192.0.2.1", 40000, "203.0.113.7", 443)
        assert store.record_retries({ref: 2}) == 1
        assert store.record_retries({ref: 1}) == 1
        rows = {r["sport"]: r["retries"] for r in store.connections(LogQuery())}
        assert rows == {40000: 3, 40009: 0}
    finally:
        store.close()
