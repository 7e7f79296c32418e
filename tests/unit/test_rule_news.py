"""Rule changes become `RulesChanged` news (snitchd/rulenews.py): from every source of change
in the firewall (on a real store file), paced, bounded, and ids only.

The pacing is checked without timing anything: changes made while a signal is due are in that
one signal, however many; the clock that says when the last one went is the test's."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from snitch_common.rulechange import MAX_NAMED, RulesChanged
from snitch_common.rulefile import RuleLine
from snitch_common.rules import parse_rule
from snitchd.config import Config
from snitchd.firewall import Firewall
from snitchd.rulenews import RuleNews
from tests.support.firewall import NOW, Clock, make_firewall


class Heard:
    """What a listener got, and a way to wait for the next one (bounded)."""

    def __init__(self, news: RuleNews) -> None:
        self.got: list[RulesChanged] = []
        self._new = asyncio.Event()
        news.listeners.append(self._take)

    def _take(self, change: RulesChanged) -> None:
        self.got.append(change)
        self._new.set()

    async def next(self) -> RulesChanged:
        await asyncio.wait_for(self._new.wait(), 5)
        self._new.clear()
        return self.got[-1]


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "rules.d"
    folder.mkdir(mode=0o755)
    return folder


@pytest.fixture
def firewall(tmp_path: Path, clock: Clock, rules_dir: Path) -> Iterator[Firewall]:
    db = tmp_path / "snitch.db"
    fw = make_firewall(db, clock, Config(database=str(db), rules_dir=str(rules_dir)))
    fw.news = RuleNews(min_gap=0.0)  # paced in the tests below; here every change is seen
    try:
        yield fw
    finally:
        fw.store.close()


async def test_one_turn_of_changes_is_one_signal_with_the_last_word_per_id() -> None:
    news = RuleNews()
    heard = Heard(news)
    news.changed(1, 2)
    news.removed(2, 3)  # 2 added then removed: removed
    news.removed(4)
    news.changed(4)  # 4 released then held again (an edit): changed
    change = await heard.next()
    await asyncio.sleep(0)
    assert heard.got == [RulesChanged(1, changed=(1, 4), removed=(2, 3))]
    assert change.to_bus()["changed"].signature == "at"


async def test_changes_while_a_signal_waits_for_its_turn_go_out_together() -> None:
    now = [100.0]
    news = RuleNews(min_gap=1.0, clock=lambda: now[0])
    heard = Heard(news)
    news.changed(1)
    await heard.next()
    now[0] = 100.5  # the next may go 0.5 s from now: everything until then joins it
    for rule_id in range(2, 50):
        news.changed(rule_id)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(heard.got) == 1, "not before its turn"
    second = await heard.next()
    assert second == RulesChanged(2, changed=tuple(range(2, 50)))


async def test_more_ids_than_a_signal_names_say_read_everything() -> None:
    news = RuleNews()
    heard = Heard(news)
    news.changed(*range(1, MAX_NAMED + 2))
    assert await heard.next() == RulesChanged(1, everything=True)


def test_nothing_is_kept_while_nobody_listens() -> None:
    news = RuleNews()
    news.changed(*range(10_000))
    news.everything()
    assert news.generation == 0 and news._due is None


async def test_a_failing_listener_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    news = RuleNews()
    news.listeners.append(lambda change: 1 / 0)  # type: ignore[func-returns-value]
    heard = Heard(news)
    news.removed(7)
    assert await heard.next() == RulesChanged(1, removed=(7,))
    assert "rule change listener failed" in caplog.text


def test_a_listener_reads_what_it_was_sent_and_distrusts_the_rest() -> None:
    sent = RulesChanged(3, (1, 2), (9,))
    plain = {k: v.value for k, v in sent.to_bus().items()}
    assert RulesChanged.from_bus(plain) == sent
    assert RulesChanged.from_bus({"generation": 4, "changed": ["x"]}).everything
    assert RulesChanged.from_bus({}).everything
    assert sent.follows(0) and sent.follows(2) and not sent.follows(3) and not sent.follows(1)
    assert sent.touches(set()) and RulesChanged(1, removed=(9,)).touches({9})
    assert not RulesChanged(1, removed=(9,)).touches({1, 2})
    assert "text" not in sent.to_bus() and "origin" not in sent.to_bus()


# -- every source of change in the firewall --------------------------------------------------


async def test_every_kind_of_change_through_snitchd_is_told(
    firewall: Firewall, clock: Clock
) -> None:
    heard = Heard(firewall.news)
    a = await firewall.add_rule(parse_rule("allow port=80"), "test")
    assert (await heard.next()).changed == (a.id,)
    await firewall.edit_rule(a.id, parse_rule("deny port=80"), None, "test")
    assert (await heard.next()).changed == (a.id,)
    await firewall.edit_rule(a.id, None, "a note", "test")
    assert (await heard.next()).changed == (a.id,)
    await firewall.set_rule_enabled(a.id, False, "test")
    assert (await heard.next()).changed == (a.id,)
    await firewall.set_rule_enabled(a.id, True, "test")
    assert (await heard.next()).changed == (a.id,)
    added, _ = await firewall.import_rules(
        [RuleLine(0, parse_rule("deny port=22")), RuleLine(0, parse_rule("deny port=23"))],
        "import",
        dry_run=False,
    )
    assert (await heard.next()).changed == tuple(r.id for r in added)
    await firewall.delete_rule(a.id, "test")
    assert (await heard.next()).removed == (a.id,)
    short = await firewall.add_rule(parse_rule("allow port=443 for=15m"), "test")
    await heard.next()
    clock.now += 15 * 60 + 1
    await firewall.expire_rules()
    assert (await heard.next()).removed == (short.id,)
    generations = [c.generation for c in heard.got]
    assert generations == list(range(1, len(heard.got) + 1))


async def test_rules_files_are_told_rule_by_rule(firewall: Firewall, rules_dir: Path) -> None:
    heard = Heard(firewall.news)
    path = rules_dir / "office.rules"
    path.write_text("allow port=80\nallow port=8080\n")
    path.chmod(0o644)
    await firewall.reload_rule_files()
    ids = tuple(sorted(r.id for r in firewall.store.rules()))
    assert (await heard.next()).changed == ids
    path.unlink()
    await firewall.reload_rule_files()
    assert (await heard.next()).removed == ids


async def test_a_rules_file_line_whose_note_alone_changed_is_told(
    firewall: Firewall, rules_dir: Path
) -> None:
    """The store took the new note of a rules.d line whose rule was unchanged, but no signal
    said so: the notifier's rule list showed the old note until something else changed."""
    heard = Heard(firewall.news)
    path = rules_dir / "office.rules"
    path.write_text("allow port=80  # the proxy\nallow port=8080\n")
    path.chmod(0o644)
    await firewall.reload_rule_files()
    await heard.next()
    ids = {str(r.rule): r.id for r in firewall.store.rules()}
    path.write_text("allow port=80  # the new proxy\nallow port=8080\n")
    await firewall.reload_rule_files()
    assert (await heard.next()).changed == (ids["allow port=80"],)
    assert {r.id: r.note for r in firewall.store.rules()}[ids["allow port=80"]] == "the new proxy"


async def test_an_outside_edit_and_a_profile_switch_say_read_everything(
    firewall: Firewall, tmp_path: Path
) -> None:
    heard = Heard(firewall.news)
    with sqlite3.connect(tmp_path / "snitch.db") as raw:
        raw.execute("INSERT INTO rules (text, created, hits) VALUES ('deny port=25', 0, 0)")
    raw.close()
    await firewall.check_outside_change(NOW)
    assert (await heard.next()).everything
    await firewall.use_profile("home")
    assert (await heard.next()).everything


async def test_a_list_that_changed_tells_the_rules_naming_it(firewall: Firewall) -> None:
    heard = Heard(firewall.news)
    naming = await firewall.add_rule(parse_rule("deny to=list:ads"), "test")
    await firewall.add_rule(parse_rule("allow port=80"), "test")
    await heard.next()
    assert firewall.lists.on_loaded is not None
    firewall.lists.on_loaded("ads")
    assert (await heard.next()).changed == (naming.id,)
