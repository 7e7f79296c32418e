"""Rule changes in the daemon (`Firewall`'s rule management) on a real store file: a change
updates the held rule set rule by rule, expiry deletes what is due, and only a change made outside
snitchd reads the rules whole and raises an alert (issue 12). No kernel or bus is involved:
the firewall's packet side (attributor, event log) is not used here."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import psutil
import pytest

from snitch_common.errors import RuleNotFound
from snitch_common.records import Attribution, Flow, Process, Proto
from snitch_common.rules import Rule, parse_rule
from snitchd.decide import RuleSet
from snitchd.firewall import Firewall
from tests.support.firewall import NOW, Clock, make_firewall

CURL = "/usr/bin/curl"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "snitch.db"


@pytest.fixture
def firewall(db_path: Path, clock: Clock) -> Iterator[Firewall]:
    fw = make_firewall(db_path, clock)
    try:
        yield fw
    finally:
        fw.store.close()


def flow(port: int = 443) -> Flow:
    return Flow(Proto.TCP, ip_address("192.0.2.1"), 40000, ip_address("192.0.2.2"), port, "eth0")


def curl(sha256: str | None = None) -> Process:
    return Process(Attribution.PROCESS, pid=1, uid=1000, exe=CURL, sha256=sha256)


def held(fw: Firewall) -> dict[int, str]:
    return {i: str(rule) for i, rule in fw.rules.snapshot().values()}


def stored(fw: Firewall) -> dict[int, str]:
    return {r.id: str(r.rule) for r in fw.store.rules()}


def hand_edit(db_path: Path, sql: str) -> None:
    """What an admin (or malware) does with sqlite3 behind snitchd's back."""
    with sqlite3.connect(db_path) as raw:
        raw.execute(sql)
    raw.close()


async def test_added_and_deleted_rules_are_held_as_stored(firewall: Firewall) -> None:
    """Each change updates the held set in place; the set equals one built whole from the store."""
    a = await firewall.add_rule(parse_rule("allow port=443"), "test")
    b = await firewall.add_rule(parse_rule(f"deny app={CURL} port=443"), "test")
    c = await firewall.add_rule(parse_rule("allow port=80 for=restart"), "test")
    assert firewall.rules.match(flow(), curl(), frozenset(), NOW) == (b.id, b.rule)
    await firewall.delete_rule(b.id, "test")
    assert firewall.rules.match(flow(), curl(), frozenset(), NOW) == (a.id, a.rule)
    assert held(firewall) == stored(firewall) == {a.id: "allow port=443", c.id: str(c.rule)}
    with pytest.raises(RuleNotFound):
        await firewall.delete_rule(b.id, "test")


async def test_own_changes_are_not_taken_for_outside_ones(
    firewall: Firewall, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 12: the sweep took snitchd's own writes for outside changes and read all the
    rules again after each one. Now it does nothing for them."""
    await firewall.add_rule(parse_rule("allow port=443"), "test")
    record = await firewall.add_rule(parse_rule("allow port=80"), "test")
    await firewall.delete_rule(record.id, "test")
    await firewall.add_rule(parse_rule(f"allow app={CURL} port=22"), "prompt")
    before = firewall.rules
    with caplog.at_level(logging.INFO):
        await firewall.check_outside_change(NOW)
    assert firewall.rules is before
    assert "rules reloaded" not in caplog.text and "alert" not in caplog.text


async def test_hand_edit_is_followed_and_alerted(
    firewall: Firewall, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rule written with sqlite3 by hand is followed (the store is the truth) and alerted,
    with what changed; a pin the edit took away no longer counts."""
    pinned = await firewall.add_rule(parse_rule(f"allow app={CURL} sha256={'a' * 64}"), "test")
    kept = await firewall.add_rule(parse_rule("allow port=80"), "test")
    hand_edit(db_path, "INSERT INTO rules (text, created, hits) VALUES ('deny port=25', 0, 0)")
    hand_edit(db_path, f"DELETE FROM rules WHERE id = {pinned.id}")
    hand_edit(db_path, f"UPDATE rules SET text = 'deny port=80' WHERE id = {kept.id}")
    with caplog.at_level(logging.WARNING):
        await firewall.check_outside_change(NOW)
    assert "rules were changed outside snitch: 2 added or changed, 1 removed" in caplog.text
    assert held(firewall) == stored(firewall)
    assert CURL not in firewall._pinned
    caplog.clear()
    await firewall.check_outside_change(NOW)
    assert "outside snitch" not in caplog.text


async def test_minutes_rules_expire_from_store_and_held_set(
    firewall: Firewall, clock: Clock
) -> None:
    """A for=15m rule decides until its time is up, then is gone from both; its pin too."""
    rule = parse_rule(f"allow app={CURL} sha256={'a' * 64} port=443 for=15m")
    short = await firewall.add_rule(rule, "test")
    forever = await firewall.add_rule(parse_rule("deny port=443"), "test")
    await firewall.expire_rules()
    assert short.id in firewall.rules and firewall._pinned[CURL] == {"a" * 64}
    clock.now += 15 * 60 + 1
    await firewall.expire_rules()
    assert held(firewall) == stored(firewall) == {forever.id: "deny port=443"}
    assert CURL not in firewall._pinned
    assert firewall.rules.match(flow(), curl("a" * 64), frozenset(), clock.now) == (
        forever.id,
        forever.rule,
    )


async def test_process_rules_expire_when_their_process_is_gone(firewall: Firewall) -> None:
    """for=process: kept while the pid lives with the same start time, gone after."""
    me = os.getpid()
    mine = await firewall.add_rule(
        parse_rule(
            f"allow app={CURL} for=process pid={me} start={psutil.Process(me).create_time()}"
        ),
        "test",
    )
    dead = await firewall.add_rule(
        parse_rule(f"allow app={CURL} for=process pid={me} start=1.0"), "test"
    )
    await firewall.expire_rules()
    assert mine.id in firewall.rules and dead.id not in firewall.rules
    assert set(held(firewall)) == set(stored(firewall)) == {mine.id}


async def test_expiry_of_a_rule_deleted_meanwhile_is_not_an_error(
    firewall: Firewall, db_path: Path, clock: Clock
) -> None:
    """Someone deleted an expiring rule by hand: expiry still takes it out, without failing."""
    record = await firewall.add_rule(parse_rule("allow port=443 for=5m"), "test")
    hand_edit(db_path, f"DELETE FROM rules WHERE id = {record.id}")
    clock.now += 301
    await firewall.expire_rules()
    assert record.id not in firewall.rules


def test_rule_set_of_the_firewall_is_the_one_built_whole(firewall: Firewall) -> None:
    """At start, the held set is read whole from the store."""
    rules: list[tuple[int, Rule]] = [(r.id, r.rule) for r in firewall.store.rules()]
    assert held(firewall) == {i: str(r) for i, r in RuleSet(rules).snapshot().values()}
