"""snitchctl's arguments: rule text quoted or not means the same rule (issue 20)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from snitch_common.errors import RuleError
from snitchctl.dates import localise_rule_text
from snitchctl.main import _build_parser, main
from snitchctl.rulecmds import import_plan_text, rule_text_for_edit, rule_text_from_flags
from snitchctl.traffic import since


def rule_of(*argv: str) -> str:
    return rule_text_from_flags(_build_parser().parse_args(["add-rule", *argv]))


def test_unquoted_rule_words_are_the_rule() -> None:
    """`snitchctl add-rule allow port=443` said "unrecognized arguments"."""
    assert rule_of("allow", "port=443") == rule_of("allow port=443") == "allow port=443"


def test_a_word_with_a_space_keeps_it() -> None:
    """The shell already split the words: one with a space is quoted again for the parser."""
    quoted = rule_of("allow 'app=/opt/my app/bin/x'")
    assert rule_of("allow", "app=/opt/my app/bin/x") == quoted


def test_text_and_flags_together_are_refused() -> None:
    with pytest.raises(RuleError, match="not both"):
        rule_of("allow", "port=443", "--action", "deny")


def test_text_and_duration_together_are_refused() -> None:
    """`add-rule allow app=/usr/bin/curl --duration 15m` made a permanent rule."""
    with pytest.raises(RuleError, match="not both"):
        rule_of("allow app=/usr/bin/curl", "--duration", "15m")
    assert rule_of("allow app=/usr/bin/curl for=15m") == "allow app=/usr/bin/curl for=15m"


def test_window_and_keep_open_flags_add_their_words() -> None:
    """Issue 18: --during, --days and --keep-open, with the rule's text or with flags."""
    assert (
        rule_of("deny port=22", "--during", "22:00-06:00", "--days", "sat,sun", "--keep-open")
        == "deny port=22 during=22:00-06:00 days=sat,sun keep-open=yes"
    )
    assert (
        rule_of("--any-app", "--port", "25", "--action", "reject", "--days", "mon-fri")
        == "reject port=25 days=mon-fri"
    )
    with pytest.raises(RuleError, match="keep-open= belongs to deny and reject"):
        rule_of("allow port=22", "--keep-open")


def test_add_rule_warns_that_an_app_path_is_a_link_here(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process runs the file a link points to, and rules match that real path: a rule for
    the link matches nothing here. Only a warning (the rule may be for another machine)."""
    tmp_path = tmp_path.resolve()
    real = tmp_path / "python3.11"
    real.touch()
    (tmp_path / "python3").symlink_to(real)
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    assert main(["add-rule", f"allow app={tmp_path}/python3"]) == 3  # no daemon: still warned
    err = capsys.readouterr().err
    assert f"snitchctl: warning: {tmp_path}/python3 is a link to {real}: rules match" in err
    assert main(["add-rule", f"allow app={real}"]) == 3
    assert "warning" not in capsys.readouterr().err


def test_edit_rule_takes_until_as_list_rules_shows_it() -> None:
    """list-rules prints `until=` as local YYYY-MM-DDTHH:MM and add-rule takes it back;
    edit-rule refused it as "not a number"."""
    shown = localise_rule_text("allow app=/usr/bin/curl for=15m until=1795701900.0")
    assert "until=20" in shown
    args = _build_parser().parse_args(["edit-rule", "7", *shown.split()])
    assert rule_text_for_edit(args) == "allow app=/usr/bin/curl for=15m until=1795701900.0"
    assert rule_text_for_edit(_build_parser().parse_args(["edit-rule", "7", "--note", "x"])) == ""
    with pytest.raises(RuleError, match="--note"):
        rule_text_for_edit(_build_parser().parse_args(["edit-rule", "7"]))


@pytest.mark.parametrize(
    "text", ["²m", "\u0661\u0665m", "+5m", "1_0m", " 5m", "5", "m", "12345678901d"]
)
def test_since_takes_ascii_digits_and_a_unit_only(text: str) -> None:
    """`--since ²m` passed str.isdigit() and crashed in int() with a traceback."""
    with pytest.raises(RuleError, match="invalid --since"):
        since(text)


def test_since_is_that_long_ago() -> None:
    assert 3590 < time.time() - since("1h") < 3610


@pytest.mark.parametrize("value", [str(2**63), "-1", "²", "1e3"])
def test_log_limit_out_of_range_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --limit over 2**63-1 failed inside dbus-fast's marshalling, with a traceback."""
    with pytest.raises(SystemExit) as info:
        _build_parser().parse_args(["log", "--limit", value])
    assert info.value.code == 2
    assert f"invalid count {value!r}" in capsys.readouterr().err
    assert _build_parser().parse_args(["log", "--limit", str(2**63 - 1)]).limit == 2**63 - 1


def test_import_says_when_a_rule_there_keeps_its_note_over_the_files() -> None:
    """`snitchctl import` printed "duplicate of 7" and dropped the file's note silently."""
    plan = {
        "added": [],
        "duplicates": [
            {"id": 7, "text": "allow port=80", "note": "web, for Sam", "dropped_note": "web"},
            {"id": 0, "text": "deny port=22", "note": "", "dropped_note": "ssh"},
            {"id": 7, "text": "allow port=80", "note": "web, for Sam", "dropped_note": ""},
        ],
        "invalid": [],
        "applied": True,
    }
    assert import_plan_text(plan).splitlines() == [
        "duplicate of 7: allow port=80; note kept: 'web, for Sam', not imported: 'web' "
        "(to change it: snitchctl edit-rule 7 --note TEXT)",
        "duplicate in the file: deny port=22; note kept: none, not imported: 'ssh'",
        "duplicate of 7: allow port=80",
        "0 to add, 3 duplicates, 0 invalid: applied",
    ]
