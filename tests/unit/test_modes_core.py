"""Modes without a kernel or a bus (issue 17): the words, time limits on a clock the test
advances, what each mode makes of a flow no rule covers, the bounded proposal book, and the
switcher on a real store file (stored modes survive a restart; a time limit ends by itself)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest

from snitch_common.errors import ModeError, ProposalNotFound, StoreError
from snitch_common.modes import Mode, ModeState, format_seconds, parse_for, parse_mode
from snitch_common.records import Attribution, Flow, Process, Proto
from snitch_common.rules import Action, parse_rule
from snitchd.modes import Modes, expired, switched
from snitchd.proposals import ProposalBook
from snitchd.switching import Switcher
from tests.support.firewall import NOW, Clock, make_firewall

CURL = "/usr/bin/curl"


def flow(dst: str = "203.0.113.7", port: int = 443, proto: Proto = Proto.TCP) -> Flow:
    return Flow(proto, ip_address("192.0.2.1"), 40000, ip_address(dst), port, "eth0")


def curl(uid: int = 1000, **kw: object) -> Process:
    return Process(Attribution.PROCESS, pid=7, uid=uid, exe=CURL, sha256="ab" * 32, **kw)  # type: ignore[arg-type]


# -- words ---------------------------------------------------------------------------------------


def test_mode_names_parse_and_unknown_ones_list_the_choices() -> None:
    assert parse_mode("silent-allow") is Mode.SILENT_ALLOW
    assert parse_mode(" LEARN ") is Mode.LEARN
    with pytest.raises(ModeError, match="unknown mode 'pause': use one of ask, silent-allow"):
        parse_mode("pause")


@pytest.mark.parametrize(
    ("text", "seconds"), [("15m", 900), ("1h", 3600), ("2s", 2), ("90", 5400), ("1d", 86400)]
)
def test_time_limits_read_as_seconds(text: str, seconds: float) -> None:
    assert parse_for(text) == seconds


@pytest.mark.parametrize("text", ["0m", "-5m", "15 minutes", "", "400d", "1.5h"])
def test_bad_time_limits_are_refused(text: str) -> None:
    with pytest.raises(ModeError, match="invalid time limit"):
        parse_for(text)


def test_time_left_reads_as_a_person_says_it() -> None:
    assert format_seconds(905) == "15m 5s"
    assert format_seconds(3600) == "1h"
    assert format_seconds(-3) == "0s"


# -- time limits on an injected clock ------------------------------------------------------------


def test_a_time_limited_mode_returns_to_the_one_before_when_its_deadline_passes() -> None:
    state = ModeState(Mode.SILENT_DENY, NOW - 100, "by uid 0")
    paused = switched(state, Mode.SILENT_ALLOW, NOW, 2.0, "by uid 0")
    assert paused.until == NOW + 2.0 and paused.previous is Mode.SILENT_DENY
    assert expired(paused, NOW + 1.999) is None
    back = expired(paused, NOW + 2.0)
    assert back is not None and back.mode is Mode.SILENT_DENY and back.until is None


def test_a_deadline_is_wall_clock_so_a_long_suspend_ends_it_at_the_first_check() -> None:
    """The clock jumps a day ahead (a laptop woke up): the limit is over at once."""
    paused = switched(ModeState(Mode.ASK), Mode.SILENT_ALLOW, NOW, 900.0, "tray")
    back = expired(paused, NOW + 86400)
    assert back is not None and back.mode is Mode.ASK


def test_pausing_during_a_pause_returns_to_the_mode_before_both() -> None:
    first = switched(ModeState(Mode.SILENT_DENY), Mode.SILENT_ALLOW, NOW, 60.0, "a")
    second = switched(first, Mode.LEARN, NOW + 10, 3600.0, "b")
    assert second.previous is Mode.SILENT_DENY


def test_a_switch_without_a_limit_forgets_the_limit() -> None:
    paused = switched(ModeState(Mode.ASK), Mode.SILENT_ALLOW, NOW, 60.0, "a")
    state = switched(paused, Mode.LEARN, NOW + 1, None, "b")
    assert state.until is None and state.previous is None
    assert expired(state, NOW + 10**6) is None


# -- what each mode decides ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "action"),
    [
        (Mode.SILENT_ALLOW, Action.ALLOW),
        (Mode.SILENT_DENY, Action.DENY),
        (Mode.LEARN, Action.ALLOW),
    ],
)
def test_silent_modes_and_learn_decide_an_uncovered_flow_and_count_it(
    mode: Mode, action: Action
) -> None:
    modes = Modes(ModeState(mode), ProposalBook())
    verdict, _ = modes.verdict(flow(), curl(), None, NOW)
    assert verdict is not None and verdict.action is action and verdict.rule_id is None
    assert verdict.reason.startswith(f"mode {mode.value}")
    assert modes.decided[mode] == 1


def test_ask_mode_leaves_the_flow_to_a_person() -> None:
    modes = Modes(ModeState(Mode.ASK), ProposalBook())
    assert modes.verdict(flow(), curl(), None, NOW) == (None, None)


def test_learn_proposes_the_narrowest_rule_once_per_app_and_destination() -> None:
    """The host name the flow carries, else its address; the port and protocol; the app pinned
    to its digest. A second flow of the same pair only counts."""
    modes = Modes(ModeState(Mode.LEARN), ProposalBook())
    _, a = modes.verdict(flow(), curl(), "api.example.org", NOW)
    _, b = modes.verdict(flow(port=80), curl(), None, NOW + 1)
    _, again = modes.verdict(flow(), curl(), "api.example.org", NOW + 2)
    assert a is not None and b is not None and again is not None
    sha = "ab" * 32
    assert str(a.rule) == f"allow app={CURL} sha256={sha} to=api.example.org port=443 proto=tcp"
    assert str(b.rule) == f"allow app={CURL} sha256={sha} to=203.0.113.7 port=80 proto=tcp"
    assert again.id == a.id and again.count == 2 and again.last_seen == NOW + 2
    assert [p.id for p in modes.book.listed()] == [a.id, b.id]


def test_learn_proposes_nothing_for_a_sender_whose_identity_is_in_doubt() -> None:
    """No app (kernel, uid only), an unverified path or injected code: a rule could not name
    who sent it. The flow is still allowed (learn is silent-allow)."""
    modes = Modes(ModeState(Mode.LEARN), ProposalBook())
    for proc in (
        Process(Attribution.UID_ONLY, uid=1000),
        curl(verified=False),
        curl(preload=("/tmp/evil.so",)),
    ):
        verdict, proposal = modes.verdict(flow(), proc, None, NOW)
        assert verdict is not None and verdict.action is Action.ALLOW and proposal is None
    assert len(modes.book) == 0


def test_the_book_is_bounded_for_everyone_and_per_user() -> None:
    """A user gets a quarter of the book; system flows may fill the rest; past it new pairs
    are counted as left out, and known ones still count."""
    book = ProposalBook(max_total=16)
    rule = parse_rule
    for port in range(1, 5):
        assert book.note(rule(f"allow app=/a port={port}"), 1000, NOW) is not None
    assert book.note(rule("allow app=/a port=99"), 1000, NOW) is None
    assert book.note(rule("allow app=/a port=1"), 1000, NOW) is not None  # known: counts
    for port in range(1, 13):
        assert book.note(rule(f"allow app=/root port={port}"), 0, NOW) is not None
    assert book.note(rule("allow app=/root port=99"), 0, NOW) is None
    assert len(book) == 16 and book.left_out == 2


def test_unknown_proposal_ids_raise_and_change_nothing() -> None:
    book = ProposalBook()
    p = book.note(parse_rule("allow app=/a port=1"), 0, NOW)
    assert p is not None
    with pytest.raises(ProposalNotFound, match="proposals 7, 9: no such proposal"):
        book.get([p.id, 7, 9])
    assert [q.id for q in book.listed()] == [p.id]


# -- the switcher, on a real store ---------------------------------------------------------------


def make_switcher(db: Path, clock: Clock) -> Switcher:
    switcher = Switcher(make_firewall(db, clock))
    switcher.load()
    return switcher


@pytest.fixture
def switcher(tmp_path: Path, clock: Clock) -> Iterator[Switcher]:
    s = make_switcher(tmp_path / "snitch.db", clock)
    try:
        yield s
    finally:
        s.fw.store.close()


async def test_the_mode_and_its_deadline_survive_a_restart(
    switcher: Switcher, clock: Clock, tmp_path: Path
) -> None:
    await switcher.set_mode(Mode.SILENT_ALLOW, 900.0, "by uid 0")
    switcher.fw.store.close()
    again = make_switcher(tmp_path / "snitch.db", clock)
    try:
        assert again.state == ModeState(Mode.SILENT_ALLOW, NOW, "by uid 0", NOW + 900, Mode.ASK)
    finally:
        again.fw.store.close()


async def test_a_two_second_mode_reverts_by_itself_on_the_tick_after_its_deadline(
    switcher: Switcher, clock: Clock, tmp_path: Path
) -> None:
    seen: list[tuple[Mode, Mode, str]] = []
    switcher.listeners.append(lambda c: seen.append((c.old.mode, c.new.mode, c.why)))
    await switcher.set_mode(Mode.SILENT_DENY, None, "by uid 0")
    await switcher.set_mode(Mode.SILENT_ALLOW, 2.0, "by uid 0")
    clock.now += 1.5
    await switcher.tick(clock.now)
    assert switcher.state.mode is Mode.SILENT_ALLOW
    clock.now += 0.5
    await switcher.tick(clock.now)
    assert switcher.state.mode is Mode.SILENT_DENY and switcher.state.until is None
    assert seen[-1] == (Mode.SILENT_ALLOW, Mode.SILENT_DENY, "its time limit ended")
    assert switcher.fw.store.load_mode() == switcher.state  # stored too


async def test_a_deadline_that_passed_while_stopped_ends_at_the_first_tick(
    switcher: Switcher, clock: Clock, tmp_path: Path
) -> None:
    await switcher.set_mode(Mode.LEARN, 60.0, "by uid 0")
    switcher.fw.store.close()
    clock.now += 3600
    again = make_switcher(tmp_path / "snitch.db", clock)
    try:
        await again.tick(clock.now)
        assert again.state.mode is Mode.ASK
    finally:
        again.fw.store.close()


async def test_a_mode_the_store_cannot_take_changes_nothing(
    switcher: Switcher, tmp_path: Path
) -> None:
    with sqlite3.connect(tmp_path / "snitch.db") as raw:  # a hand edit breaks every write
        raw.execute("DROP TABLE settings")
    raw.close()
    with pytest.raises(StoreError):
        await switcher.set_mode(Mode.SILENT_DENY, None, "by uid 0")
    assert switcher.state.mode is Mode.ASK


async def test_accepting_proposals_makes_exactly_those_rules_and_a_stale_one_changes_nothing(
    switcher: Switcher,
) -> None:
    fw = switcher.fw
    await switcher.set_mode(Mode.LEARN, None, "by uid 0")
    for port in (80, 443, 8080):
        fw.mode_verdict(flow(port=port), curl(), None, NOW)
    await switcher.tick(NOW)  # written to the store
    a, b, c = switcher.proposals()
    assert [p.id for p in fw.store.load_proposals()[0]] == [a.id, b.id, c.id]
    made = await switcher.accept([a.id, c.id], "uid 0")
    assert [str(r.rule) for r in made] == [str(a.rule), str(c.rule)]
    assert {str(r) for _, r in fw.rules.snapshot().values()} == {str(a.rule), str(c.rule)}
    assert [p.id for p in switcher.proposals()] == [b.id]
    # Accepted meanwhile by hand (the same rule text): the proposal no longer applies.
    await fw.add_rule(b.rule, "test")
    with pytest.raises(ProposalNotFound, match=f"proposal {b.id} is rule"):
        await switcher.accept(None, "uid 0")
    with pytest.raises(ProposalNotFound, match=f"proposal {a.id}: no such proposal"):
        await switcher.accept([a.id], "uid 0")
    assert [p.id for p in switcher.proposals()] == [b.id] and len(fw.rules) == 3
    await switcher.reject(None, "uid 0")
    assert switcher.proposals() == [] and fw.store.load_proposals()[0] == []


async def test_proposal_ids_are_never_given_twice_across_a_restart(
    switcher: Switcher, clock: Clock, tmp_path: Path
) -> None:
    fw = switcher.fw
    await switcher.set_mode(Mode.LEARN, None, "by uid 0")
    fw.mode_verdict(flow(port=1), curl(), None, NOW)
    (p,) = switcher.proposals()
    await switcher.reject([p.id], "uid 0")
    fw.store.close()
    again = make_switcher(tmp_path / "snitch.db", clock)
    try:
        again.fw.mode_verdict(flow(port=2), curl(), None, NOW)
        (q,) = again.proposals()
        assert q.id > p.id
    finally:
        again.fw.store.close()
