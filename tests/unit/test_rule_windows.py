"""Time windows on rules (issue 18, OpenSnitch #463): `during=` and `days=` in local time.

Local time comes from an injected clock (`decide.set_local_time`), never from the machine's zone,
so these tests mean the same everywhere; a rule outside its window matches nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from snitch_common.errors import RuleError
from snitch_common.records import Attribution, Flow, Process, Proto
from snitch_common.rules import Action, parse_rule
from snitchd.decide import Ask, RuleSet, Verdict, decide, set_local_time, utc_time

MONDAY_0900 = 4 * 86400 + 9 * 3600  # 1970-01-05, a Monday, 09:00 UTC
HOUR = 3600.0
DAY = 86400.0
CURL = "/usr/bin/curl"


@pytest.fixture(autouse=True)
def local_clock() -> Iterator[None]:
    """The zone of these tests: UTC+2 (so a UTC clock would give the wrong answers)."""
    set_local_time(lambda now: utc_time(now + 2 * HOUR))
    try:
        yield
    finally:
        set_local_time(utc_time)


def _flow() -> Flow:
    return Flow(Proto.TCP, IPv4Address("192.0.2.1"), 40000, IPv4Address("203.0.113.7"), 443)


def _proc() -> Process:
    return Process(Attribution.PROCESS, pid=7, uid=1000, exe=CURL)


def _verdict(rules: RuleSet, now: float) -> Action | None:
    outcome = decide(_flow(), _proc(), rules, now)
    return None if isinstance(outcome, Ask) else outcome.action


def _local(day: int, hour: float) -> float:
    """The Unix time of local weekday `day` (0 = Monday of the first week) at `hour`."""
    return MONDAY_0900 - 9 * HOUR + day * DAY + hour * HOUR - 2 * HOUR


@pytest.mark.parametrize(
    "text",
    [
        "deny during=08:00-18:00",
        "deny app=/usr/bin/curl during=22:00-06:00 days=fri",
        "allow days=mon-fri",
        "allow days=mon,wed,fri",
        "allow days=sat-sun during=00:00-24:00",
        "reject to=203.0.113.0/24 days=mon-wed,sun keep-open=yes",
    ],
)
def test_window_rules_round_trip(text: str) -> None:
    rule = parse_rule(text)
    assert parse_rule(str(rule)) == rule
    assert rule.timed or rule.keep_open


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("allow days=sat,sun", "allow days=sat,sun"),
        ("allow days=fri-mon", "allow days=mon,fri-sun"),
        ("allow days=mon,tue,wed,thu,fri", "allow days=mon-fri"),
        ("allow during=8:00-18:30", "allow during=08:00-18:30"),
        ("deny keep-open=no", "deny"),
    ],
)
def test_windows_print_in_one_canonical_form(text: str, canonical: str) -> None:
    assert str(parse_rule(text)) == canonical


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("allow during=08:00", "HH:MM-HH:MM"),
        ("allow during=25:00-26:00", "HH:MM-HH:MM"),
        ("allow during=08:00-08:00", "empty"),
        ("allow days=funday", "mon..sun"),
        ("allow keep-open=yes", "deny and reject"),
        ("deny keep-open=maybe", "yes or no"),
    ],
)
def test_bad_windows_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(RuleError, match=reason):
        parse_rule(text)


def test_during_rule_matches_only_inside_its_local_window() -> None:
    rules = RuleSet([(1, parse_rule("deny during=08:00-18:00"))])
    assert _verdict(rules, _local(0, 8.0)) is Action.DENY
    assert _verdict(rules, _local(0, 17.99)) is Action.DENY
    assert _verdict(rules, _local(0, 18.0)) is None
    assert _verdict(rules, _local(0, 7.5)) is None


def test_days_rule_matches_only_on_its_days() -> None:
    rules = RuleSet([(1, parse_rule("deny days=mon-fri"))])
    assert [_verdict(rules, _local(d, 12)) for d in range(7)] == [Action.DENY] * 5 + [None] * 2


def test_overnight_window_belongs_to_the_day_it_opened() -> None:
    """days=fri during=22:00-06:00: Friday night into Saturday morning, not Friday morning."""
    rules = RuleSet([(1, parse_rule("deny during=22:00-06:00 days=fri"))])
    assert _verdict(rules, _local(4, 23)) is Action.DENY  # Friday 23:00
    assert _verdict(rules, _local(5, 3)) is Action.DENY  # Saturday 03:00
    assert _verdict(rules, _local(4, 3)) is None  # Friday 03:00: Thursday's night
    assert _verdict(rules, _local(5, 23)) is None  # Saturday 23:00


def test_a_window_rule_beats_the_same_rule_without_one_inside_its_window() -> None:
    """ "Allow curl at work hours, deny otherwise" must be writable: the timed allow is more
    specific than the untimed deny (a time window is the last step before the action)."""
    rules = RuleSet(
        [
            (1, parse_rule(f"deny app={CURL}")),
            (2, parse_rule(f"allow app={CURL} during=09:00-17:00 days=mon-fri")),
        ],
        index_above=0,
    )
    assert _verdict(rules, _local(1, 10)) is Action.ALLOW
    assert _verdict(rules, _local(1, 20)) is Action.DENY
    assert _verdict(rules, _local(6, 10)) is Action.DENY


def test_the_injected_clock_decides_not_the_machine_zone() -> None:
    """The same instant is 07:30 in UTC and 09:30 in the tests' zone: the window follows the
    injected local time."""
    rules = RuleSet([(1, parse_rule("deny during=09:00-10:00"))])
    now = _local(0, 9.5)
    assert isinstance(decide(_flow(), _proc(), rules, now), Verdict)
    set_local_time(utc_time)
    assert isinstance(decide(_flow(), _proc(), rules, now), Ask)
