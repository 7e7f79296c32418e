"""The bridge without a bus: requests fail with a message people read, never silently."""

from __future__ import annotations

from snitch_common.answers import Action, Answer
from snitch_notifier.bridge import AgentBridge, LogRow, RuleRow


def test_requests_before_start_fail_with_a_reason(qtbot) -> None:
    bridge = AgentBridge()
    with qtbot.waitSignal(bridge.failed) as failed:
        bridge.answer(Answer(1, Action.ALLOW))
    assert failed.args == ["answer", "the notifier is not connected to the system bus"]
    with qtbot.waitSignal(bridge.failed) as failed:
        bridge.list_rules()
    assert failed.args[0] == "rules"


def test_rows_are_parsed_from_snitchctl_json_keys() -> None:
    """The keys are the stable ones `snitchctl --json` documents; missing ones are optional."""
    rule = {"id": 3, "text": "allow port=53 proto=udp", "hits": 2, "origin": "uid 0"}
    assert RuleRow.from_dict(rule) == RuleRow(3, "allow port=53 proto=udp", 2, None, "uid 0")
    row = {"time": 1.5, "proto": "icmp", "dst": "203.0.113.7", "action": "deny", "reason": "r"}
    assert LogRow.from_dict(row) == LogRow(
        1.5, None, None, "icmp", "203.0.113.7", None, "deny", "r"
    )
