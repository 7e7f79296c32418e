"""snitchctl's arguments: rule text quoted or not means the same rule (issue 20)."""

from __future__ import annotations

import pytest

from snitch_common.errors import RuleError
from snitchctl.main import _build_parser
from snitchctl.rulecmds import rule_text_from_flags


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
