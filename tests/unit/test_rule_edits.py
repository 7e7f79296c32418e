"""Rules edited in place, switched off, deduplicated, imported and loaded from rules.d files
(issue 18), on a real store file and the daemon's rule management (`Firewall`), no kernel."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

import pytest

from snitch_common.errors import RuleError
from snitch_common.records import Attribution, Flow, Process, Proto
from snitch_common.rulefile import RuleLine, format_rule_line, read_rules
from snitch_common.rules import parse_rule
from snitchd.config import Config
from snitchd.firewall import Firewall
from snitchd.flowcut import CutResult, decode_entries, encode_delete
from snitchd.netfilter import ALLOW_MARK, MARK_MASK
from snitchd.prompts import Broker
from snitchd.store import Decision, RuleFromFile, Store

NOW = 1_700_000_000.0


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "rules.d"
    folder.mkdir(mode=0o755)
    return folder


@pytest.fixture
def firewall(tmp_path: Path, rules_dir: Path) -> Iterator[Firewall]:
    store = Store(tmp_path / "snitch.db")
    broker = Broker(clock=lambda: NOW, timeout=5, max_open=10, is_admin=lambda uid: uid == 0)
    config = Config(database=str(tmp_path / "snitch.db"), rules_dir=str(rules_dir))
    fw = Firewall(config, store, None, None, broker, clock=lambda: NOW)  # type: ignore[arg-type]
    broker.attach(fw)
    try:
        yield fw
    finally:
        store.close()


def _flow(port: int) -> Flow:
    return Flow(Proto.TCP, ip_address("192.0.2.1"), 40000, ip_address("192.0.2.2"), port)


def _action(fw: Firewall, port: int) -> str | None:
    proc = Process(Attribution.PROCESS, pid=1, uid=1000, exe="/usr/bin/curl")
    hit = fw.rules.match(_flow(port), proc, frozenset(), NOW)
    return None if hit is None else hit[1].action.value


async def test_adding_an_identical_rule_returns_the_existing_one(firewall: Firewall) -> None:
    first, added = await firewall.add_new_rule(parse_rule("allow port=443"), "t", dedup=True)
    again, added_again = await firewall.add_new_rule(parse_rule("allow  port=443"), "t", dedup=True)
    assert added and not added_again and again.id == first.id
    assert len(firewall.store.rules()) == 1
    kept, _ = await firewall.add_new_rule(parse_rule("allow port=80 for=restart"), "t", dedup=True)
    twin, new = await firewall.add_new_rule(
        parse_rule("allow port=80 for=restart"), "t", dedup=True
    )
    assert twin.id == kept.id and not new


async def test_edit_keeps_id_and_note_and_changes_the_verdict(firewall: Firewall) -> None:
    record, _ = await firewall.add_new_rule(parse_rule("allow port=443"), "t", "the updater")
    assert _action(firewall, 443) == "allow"
    edited = await firewall.edit_rule(record.id, parse_rule("reject port=443"), None, "t")
    assert (edited.id, edited.note) == (record.id, "the updater")
    assert _action(firewall, 443) == "reject"
    noted = await firewall.edit_rule(record.id, None, "changed", "t")
    assert str(noted.rule) == "reject port=443" and noted.note == "changed"
    assert [(r.id, str(r.rule), r.note) for r in firewall.store.rules()] == [
        (record.id, "reject port=443", "changed")
    ]
    with pytest.raises(RuleError, match="at most 1000 characters on one line"):
        await firewall.edit_rule(record.id, None, "two\nlines", "t")


@pytest.mark.parametrize("brk", ["\u2028", "\x85", "\x0b", "\t", "\x1b"])
async def test_a_note_with_a_character_that_is_not_printable_is_refused(
    firewall: Firewall, brk: str
) -> None:
    """A note goes after `#` on its rule's line in an exported file: "the updater\u2028allow
    app=/bin/bash" read back as a second rule, an allow. Escape codes garble a terminal."""
    with pytest.raises(RuleError, match=re.escape(f"{brk!r} is not a printable character")):
        await firewall.add_new_rule(parse_rule("deny port=25"), "t", f"the updater{brk}allow x")
    record, _ = await firewall.add_new_rule(parse_rule("deny port=25"), "t", "ça, «ok»")
    with pytest.raises(RuleError, match="not a printable character"):
        await firewall.edit_rule(record.id, None, f"a{brk}b", "t")


async def test_a_disabled_rule_never_matches_is_still_listed_and_survives_restart(
    firewall: Firewall, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record = await firewall.add_rule(parse_rule("reject port=443"), "t")
    off = await firewall.set_rule_enabled(record.id, False, "t")
    assert not off.enabled and _action(firewall, 443) is None
    assert record.id in {i for i, _ in await firewall.rule_entries()}
    with caplog.at_level(logging.INFO):
        await firewall.check_outside_change(NOW)  # its own change: not news
    assert "rules reloaded" not in caplog.text
    firewall.reload_rules()  # as at the next start
    assert _action(firewall, 443) is None and record.id in firewall.disabled
    await firewall.set_rule_enabled(record.id, True, "t")
    assert _action(firewall, 443) == "reject" and not firewall.disabled
    # Switched off behind snitchd's back (sqlite3 by hand): followed, and alerted.
    with sqlite3.connect(tmp_path / "snitch.db") as raw:
        raw.execute("UPDATE rules SET disabled = 1")
    raw.close()
    await firewall.check_outside_change(NOW)
    assert _action(firewall, 443) is None


async def test_import_is_all_or_nothing_and_skips_twins(firewall: Firewall) -> None:
    await firewall.add_rule(parse_rule("allow port=80"), "t")
    rules = [RuleLine(0, parse_rule(t)) for t in ("allow port=80", "deny port=22", "deny port=22")]
    planned, twins = await firewall.import_rules(rules, "import", dry_run=True)
    assert [str(r.rule) for r in planned] == ["deny port=22"]
    assert [(str(t.rule), t.id) for t in twins] == [("allow port=80", 1), ("deny port=22", 0)]
    assert [str(r.rule) for r in firewall.store.rules()] == ["allow port=80"]
    added, _ = await firewall.import_rules(rules, "import", dry_run=False)
    assert [str(r.rule) for r in firewall.store.rules()] == ["allow port=80", "deny port=22"]
    assert _action(firewall, 22) == "deny" and added[0].origin == "import"


async def test_export_then_import_keeps_the_notes(firewall: Firewall) -> None:
    """README calls export and import a backup; import parsed each line's note and dropped it."""
    exported = "\n".join(
        [
            format_rule_line("deny port=22", "no ssh out, ask Sam # first"),
            format_rule_line("allow app=/usr/bin/curl port=443"),
            format_rule_line("reject port=25", "spam"),
        ]
    )
    lines, bad = read_rules(exported, lasting_only=False)
    assert bad == []
    planned, _ = await firewall.import_rules(lines, "import", dry_run=True)
    assert [r.note for r in planned] == ["no ssh out, ask Sam # first", "", "spam"]
    await firewall.import_rules(lines, "import", dry_run=False)
    assert [(str(r.rule), r.note) for r in firewall.store.rules()] == [
        ("deny port=22", "no ssh out, ask Sam # first"),
        ("allow app=/usr/bin/curl port=443", ""),
        ("reject port=25", "spam"),
    ]


async def test_import_says_which_note_a_rule_already_there_keeps(firewall: Firewall) -> None:
    """A line whose rule was there already kept the stored rule's note and dropped its own
    without a word; the plan now says, for each twin, the note kept and the one not taken."""
    stored, _ = await firewall.add_new_rule(parse_rule("allow port=80"), "t", "web, for Sam")
    lines, bad = read_rules(
        "allow port=80  # web\n"  # a stored twin with another note: dropped, said
        "allow port=80\n"  # no note of its own: nothing dropped
        "deny port=22  # ssh, first\n"
        "deny port=22  # ssh, second\n"  # a twin earlier in the file: its note is kept
        "deny port=22  # ssh, first\n",  # the same note: nothing dropped
        lasting_only=False,
    )
    assert bad == []
    for dry_run in (True, False):
        _, twins = await firewall.import_rules(lines, "import", dry_run=dry_run)
        assert [(str(t.rule), t.id, t.note, t.dropped_note) for t in twins] == [
            ("allow port=80", stored.id, "web, for Sam", "web"),
            ("allow port=80", stored.id, "web, for Sam", ""),
            ("deny port=22", 0, "ssh, first", "ssh, second"),
            ("deny port=22", 0, "ssh, first", ""),
        ]
    assert {str(r.rule): r.note for r in firewall.store.rules()} == {
        "allow port=80": "web, for Sam",
        "deny port=22": "ssh, first",
    }


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    os.chmod(path, mode)


async def test_rule_files_load_whole_keep_ids_and_cannot_be_changed_through_the_api(
    firewall: Firewall, rules_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write(rules_dir / "a.rules", "allow port=80\nreject port=443  # no https\n")
    _write(rules_dir / "notes.txt", "not a rules file\n")
    firewall.load_rule_files_now()
    first = {str(r.rule): r for r in firewall.store.rules()}
    assert set(first) == {"allow port=80", "reject port=443"}
    assert {r.origin for r in first.values()} == {"file:a.rules"}
    rule_id = first["allow port=80"].id
    for change in (
        firewall.delete_rule(rule_id, "t"),
        firewall.edit_rule(rule_id, parse_rule("deny port=80"), None, "t"),
        firewall.set_rule_enabled(rule_id, False, "t"),
    ):
        with pytest.raises(RuleFromFile, match=r"comes from the rules file a\.rules"):
            await change

    # A bad line: the whole file is refused, its rules stay, the error names file and line.
    _write(rules_dir / "a.rules", "allow port=80\nallow port=8080\nallow port=0\n")
    with caplog.at_level(logging.ERROR):
        await firewall.reload_rule_files()
    assert f"{rules_dir / 'a.rules'}: line 3: invalid port '0'" in caplog.text
    assert {str(r.rule) for r in firewall.store.rules()} == set(first)
    assert _action(firewall, 443) == "reject" and _action(firewall, 8080) is None

    _write(rules_dir / "a.rules", "allow port=80\nallow port=8080\n")
    await firewall.reload_rule_files()
    now = {str(r.rule): r.id for r in firewall.store.rules()}
    assert now == {"allow port=80": rule_id, "allow port=8080": now["allow port=8080"]}
    assert _action(firewall, 443) is None and _action(firewall, 8080) == "allow"

    (rules_dir / "a.rules").unlink()
    await firewall.reload_rule_files()
    assert firewall.store.rules() == [] and len(firewall.rules) == 0


async def test_rule_files_keep_their_notes_and_a_new_note_keeps_the_id(
    firewall: Firewall, rules_dir: Path
) -> None:
    """A rules.d line's note was parsed and dropped; list-rules shows it now, and changing
    only the note keeps the rule's id and counters, as an unchanged line does."""
    _write(rules_dir / "a.rules", "allow port=80  # the proxy\nreject port=443\n")
    firewall.load_rule_files_now()
    first = {str(r.rule): (r.id, r.note) for r in firewall.store.rules()}
    assert first == {
        "allow port=80": (first["allow port=80"][0], "the proxy"),
        "reject port=443": (first["reject port=443"][0], ""),
    }
    _write(rules_dir / "a.rules", "allow port=80  # the new proxy\nreject port=443  # no https\n")
    await firewall.reload_rule_files()
    assert {str(r.rule): (r.id, r.note) for r in firewall.store.rules()} == {
        "allow port=80": (first["allow port=80"][0], "the new proxy"),
        "reject port=443": (first["reject port=443"][0], "no https"),
    }


async def test_a_rules_file_others_can_write_is_refused(
    firewall: Firewall, rules_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Threat model: a file the desktop user can write would let them allow anything."""
    if os.geteuid() != 0:
        pytest.skip("needs root to own the files as root")
    _write(rules_dir / "open.rules", "allow\n", mode=0o666)
    with caplog.at_level(logging.ERROR):
        await firewall.reload_rule_files()
    assert "writable by others than root" in caplog.text
    assert firewall.store.rules() == []
    os.chmod(rules_dir / "open.rules", 0o644)
    os.chown(rules_dir / "open.rules", 65534, 65534)
    await firewall.reload_rule_files()
    assert "owned by uid 65534, not root" in caplog.text
    assert firewall.store.rules() == []


def test_a_conntrack_tuple_reads_back_as_its_flow() -> None:
    """The dump decoder reads the CTA_TUPLE_ORIG nest the delete request writes."""
    for flow in (
        _flow(443),
        replace(_flow(53), proto=Proto.UDP),
        Flow(Proto.TCP, ip_address("2001:db8::1"), 5000, ip_address("2001:db8::2"), 80),
    ):
        message = encode_delete(7, flow)
        assert decode_entries(message) == ([flow], False)
        # No mark of ours on it (a local server's inbound flow has none): never a candidate.
        assert decode_entries(message, ALLOW_MARK, MARK_MASK) == ([], False)


class _Kernel:
    """The conntrack table and sockets `FlowCutter` reads and cuts (below the kernel line):
    the open flows snitch allowed, and which of them were cut."""

    def __init__(self, flows: list[Flow]) -> None:
        self.flows = flows
        self.cut_flows: list[Flow] = []

    def allowed_flows(self, mark: int, mask: int) -> list[Flow]:
        return list(self.flows)

    def cut(self, flows: list[Flow]) -> list[CutResult]:
        self.cut_flows += flows
        return [CutResult(f, f.proto is Proto.TCP, True) for f in flows]


class _Owners:
    """Who holds each open flow, by source port (what sock_diag and /proc would say)."""

    def __init__(self, owners: dict[int, str]) -> None:
        self.owners = owners

    def begin(self, flow: Flow, limits: object) -> Process:
        return Process(Attribution.PROCESS, pid=flow.sport, uid=1000, exe=self.owners[flow.sport])


class _Events:
    def __init__(self) -> None:
        self.rows: list[Decision] = []

    def record(self, decision: Decision) -> None:
        self.rows.append(decision)


async def test_a_new_deny_cuts_only_the_open_flows_it_now_wins_for(firewall: Firewall) -> None:
    """The flows a deny rule cuts are those the held rules now decide by it: a more specific
    allow keeps its flow open, a flow elsewhere is not touched, keep-open cuts nothing."""
    curl, wget = "/usr/bin/curl", "/usr/bin/wget"
    flows = [
        Flow(Proto.TCP, ip_address("192.0.2.1"), 1001, ip_address("192.0.2.2"), 80),
        Flow(Proto.TCP, ip_address("192.0.2.1"), 1002, ip_address("192.0.2.2"), 80),
        Flow(Proto.UDP, ip_address("192.0.2.1"), 1003, ip_address("198.51.100.2"), 53),
    ]
    kernel = _Kernel(flows)
    firewall.cutter = kernel  # type: ignore[assignment]
    firewall.attributor = _Owners({1001: curl, 1002: wget, 1003: wget})  # type: ignore[assignment]
    firewall.events = _Events()  # type: ignore[assignment]
    await firewall.add_rule(parse_rule("allow port=80"), "t")
    await firewall.add_rule(parse_rule(f"allow app={curl} to=192.0.2.2"), "t")
    gentle = await firewall.add_rule(parse_rule("deny to=192.0.2.2 keep-open=yes"), "t")
    assert await firewall.cut_flows([gentle.id], "t") == []
    deny = await firewall.add_rule(parse_rule("reject to=192.0.2.2 port=80"), "t")
    cut = await firewall.cut_flows([deny.id], "t")
    assert [(c.flow.sport, c.proc.exe, c.rule_id, c.action.value) for c in cut] == [
        (1002, wget, deny.id, "reject")
    ]
    assert kernel.cut_flows == [flows[1]]
    rows = firewall.events.rows  # type: ignore[attr-defined]
    assert [r.reason for r in rows] == [f"cut: rule {deny.id} now rejects this open flow"]
    assert firewall.counters.cut == 1
