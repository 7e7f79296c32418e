"""snitchctl teaches: every subcommand has a description and examples that parse, dates are
local and paste back, colour only on a terminal, and the status sentences (issue 20)."""

from __future__ import annotations

import io
import os
import pty
import re
import shlex
import time

import pytest

from snitch_common.rules import parse_rule
from snitchctl.colour import painter_for
from snitchctl.dates import delocalise_rule_text, localise_rule_text
from snitchctl.examples import EXAMPLES, subcommands
from snitchctl.main import build_parser
from snitchctl.rulecmds import rule_text_from_flags
from snitchctl.status import QueueRule, describe_offline, summary


def test_every_subcommand_has_a_description_and_examples() -> None:
    parser = build_parser()
    for name, sub in subcommands(parser).items():
        assert sub.description, f"{name} has no description"
        assert name in EXAMPLES, f"{name} has no examples (snitchctl/examples.py)"
        assert "examples:" in sub.format_help(), name


@pytest.mark.parametrize("example", [e for ex in EXAMPLES.values() for e in ex])
def test_each_example_parses(example: str) -> None:
    """An example that no longer parses teaches the wrong thing."""
    argv = shlex.split(re.split(r"[|<>]", example, maxsplit=1)[0])  # up to a pipe or redirect
    argv = argv[1:] if argv[0] == "sudo" else argv
    assert argv[0] == "snitchctl"
    build_parser().parse_args(argv[1:])


def rule_of(*argv: str) -> str:
    return rule_text_from_flags(build_parser().parse_args(["add-rule", *argv]))


def test_top_level_help_lists_exit_codes_and_examples() -> None:
    text = build_parser().format_help()
    assert "3  snitchd unreachable" in text
    assert "snitchctl log --app curl" in text


def test_until_is_shown_in_local_time_and_pastes_back() -> None:
    until = time.mktime((2026, 11, 26, 14, 5, 0, 0, 0, -1))
    text = f"allow app=/usr/bin/curl for=60m until={until!r}"
    shown = localise_rule_text(text)
    assert shown == "allow app=/usr/bin/curl for=60m until=2026-11-26T14:05"
    assert parse_rule(delocalise_rule_text(shown)) == parse_rule(text)
    # and through add-rule's words, as a person pastes it
    assert rule_of(*shown.split()) == str(parse_rule(text))


def test_colour_only_on_a_terminal_and_never_with_no_color() -> None:
    master, slave = pty.openpty()
    try:
        with open(slave, "w", closefd=False) as tty:
            assert painter_for(tty, {}).enabled
            assert not painter_for(tty, {"NO_COLOR": "1"}).enabled
            assert not painter_for(tty, {"TERM": "dumb"}).enabled
            assert painter_for(tty, {"NO_COLOR": ""}).enabled  # empty: not set (no-color.org)
    finally:
        os.close(master)
        os.close(slave)
    assert not painter_for(io.StringIO(), {}).enabled
    assert painter_for(io.StringIO(), {}).verdict("deny", 6) == "deny  "


def test_offline_sentences_say_what_the_kernel_does() -> None:
    conf = "/etc/snitch/snitchd.toml"
    open_ = describe_offline("open", QueueRule.BYPASS, conf)
    assert "pass unfiltered" in open_.meaning and "fail_mode open" in open_.meaning
    closed = describe_offline("closed", QueueRule.HOLD, conf)
    assert "held and dropped" in closed.meaning and closed.filtered
    gone = describe_offline("closed", QueueRule.ABSENT, conf)
    assert "pass unfiltered" in gone.meaning and not gone.filtered
    guessed = describe_offline("closed", QueueRule.UNKNOWN, conf)
    assert "run as root" in guessed.meaning and guessed.filtered


def test_running_summary_is_short_and_names_alerts() -> None:
    status = {
        "started": 0.0, "version": "0.1.0", "backend": "iptables", "fail_mode": "closed",
        "default_action": "deny", "rules": 3, "agents": 0, "prompts_open": 0,
        "accepted": 5, "dropped": 2, "rejected": 0, "errors": 0,
        "rules_error": "", "log_error": "disk full", "log_rows_dropped": 0,
    }  # fmt: skip
    text = summary(status, painter_for(io.StringIO(), {}))
    assert "if snitchd stops: new connections would be held and dropped" in text
    assert "alert: log: disk full" in text
    assert len(text.splitlines()) <= 8
    shared = summary(status | {"datagrams_other_socket": 2}, painter_for(io.StringIO(), {}))
    assert "alert: 2 datagrams dropped: sent by another user's socket" in shared
    limited = summary(
        status | {"flows_over_limit": 9, "dns_queries_over_limit": 4},
        painter_for(io.StringIO(), {}),
    )
    assert "alert: 9 new flows dropped: their user (or container address) was past" in limited
    assert "alert: 4 DNS queries dropped: their user (or container address) was past" in limited
