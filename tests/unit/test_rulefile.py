"""Rules as files (issue 18): the format of rules.d, export and import. A file is taken whole or
refused whole, and every bad line is reported with its number."""

from __future__ import annotations

import pytest

from snitch_common.rulefile import (
    RuleFileError,
    format_rule_line,
    parse_rules_text,
    read_rules,
)
from snitch_common.rules import parse_rule

GOOD = """\
# office policy
allow app=/usr/bin/curl port=443   # web, for the updater

deny to=203.0.113.0/24
   # an indented comment
reject port=25 during=08:00-18:00 days=mon-fri
allow app='/opt/odd #dir/x' port=80
"""


def test_a_good_file_gives_its_rules_notes_and_line_numbers() -> None:
    lines = parse_rules_text(GOOD, "office.rules")
    assert [(r.line, str(r.rule), r.note) for r in lines] == [
        (2, "allow app=/usr/bin/curl port=443", "web, for the updater"),
        (4, "deny to=203.0.113.0/24", ""),
        (6, "reject port=25 during=08:00-18:00 days=mon-fri", ""),
        (7, "allow app='/opt/odd #dir/x' port=80", ""),
    ]


def test_every_bad_line_is_reported_with_its_number_and_reason() -> None:
    text = GOOD + "allow to=300.1.1.1\nallow\nallow for=15m\nbogus port=1\n"
    rules, bad = read_rules(text)
    assert len(rules) == 5  # a bare "allow" (line 9) is a rule: allow everything
    assert [b.line for b in bad] == [8, 10, 11]
    assert "not a valid IP" in bad[0].reason
    assert "lasting rules" in bad[1].reason
    assert "start with allow, deny or reject" in bad[2].reason
    with pytest.raises(RuleFileError) as caught:
        parse_rules_text(text, "/etc/snitch/rules.d/x.rules")
    message = caught.value.message
    assert "/etc/snitch/rules.d/x.rules" in message and "line 8:" in message
    assert "line 11:" in message and "snitchctl check-rules" in message


def test_an_exported_line_reads_back_as_the_same_rule_and_note() -> None:
    rule = parse_rule("deny app='/opt/my app/bin' to=*.example.org keep-open=yes")
    line = format_rule_line(str(rule), "ask Sam # first")
    (read,), bad = read_rules(line)
    assert bad == []
    assert read.rule == rule and read.note == "ask Sam # first"


@pytest.mark.parametrize(
    "brk", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
)
def test_only_a_newline_ends_a_line(brk: str) -> None:
    """str.splitlines also breaks at these: a note "the updater\u2028allow app=/bin/bash",
    exported and imported again, became an extra allow rule. Now it stays one line, which
    is bad for its note (a note the store would refuse)."""
    rules, bad = read_rules(f"deny port=22\ndeny port=25  # the updater{brk}allow app=/bin/bash\n")
    assert [str(r.rule) for r in rules] == ["deny port=22"]
    assert [b.line for b in bad] == [2] and "not a printable character" in bad[0].reason


def test_crlf_line_ends_are_taken_and_numbered() -> None:
    rules, bad = read_rules("deny port=25  # mail\r\n\r\nallow port=80\r\nbogus\r\n")
    assert [(r.line, str(r.rule), r.note) for r in rules] == [
        (1, "deny port=25", "mail"),
        (3, "allow port=80", ""),
    ]
    assert [b.line for b in bad] == [4]


def test_an_escaped_blank_before_a_hash_is_part_of_the_path() -> None:
    """`app=/opt/a\\ #b` is the path "/opt/a #b", as shlex reads it: the `#` after an escaped
    blank started a comment, and the line was refused as "No escaped character"."""
    (read,), bad = read_rules("allow app=/opt/a\\ #b  # the a-b tool\n")
    assert bad == []
    assert (read.rule.exe, read.note) == ("/opt/a #b", "the a-b tool")


@pytest.mark.parametrize(("note", "why"), [("a\u2028b", "printable"), ("x" * 1001, "1000")])
def test_a_line_with_a_note_the_store_cannot_keep_is_bad(note: str, why: str) -> None:
    """Imported and rules.d notes are kept with their rules: one the store would refuse makes
    the line bad, reported with its number like a bad rule, not a failed import."""
    rules, bad = read_rules(f"deny port=22\nallow port=80  # {note}\n")
    assert [str(r.rule) for r in rules] == ["deny port=22"]
    assert [b.line for b in bad] == [2] and why in bad[0].reason
