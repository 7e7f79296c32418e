"""Stand-ins for what a prompt `Broker` talks to, for unit tests: the bus side (`SentPrompts`
keeps the prompts it was asked to send) and the firewall side (`RuleKeeper` keeps the rules an
answer made, applies nothing, and gives deny by default)."""

from __future__ import annotations

from typing import Any

from snitch_common.rules import Action, Rule, RuleRecord
from snitchd.decide import Verdict
from snitchd.events import Alert
from snitchd.prompts import Agent, Prompt

__all__ = ["RuleKeeper", "SentPrompts"]


class SentPrompts:
    """The broker's `Transport`: prompts sent, in order; cancels and alerts go nowhere."""

    def __init__(self) -> None:
        self.sent: list[Prompt] = []

    def send_prompt(self, agent: Agent, prompt: Prompt) -> None:
        self.sent.append(prompt)

    def send_cancel(self, agent: Agent, prompt: Prompt, reason: str) -> None:
        pass

    def send_alert(self, agent: Agent, alert: Alert) -> None:
        pass


class RuleKeeper:
    """The broker's `Applier`: the rules answers made (as text); verdicts are not given."""

    def __init__(self) -> None:
        self.rules: list[str] = []

    def apply(self, *_: Any, **__: Any) -> None:
        pass

    def default_verdict(self, reason: str) -> Verdict:
        return Verdict(Action.DENY, None, reason)

    async def add_rule(self, rule: Rule, origin: str) -> RuleRecord:
        self.rules.append(str(rule))
        return RuleRecord(len(self.rules), rule, 0.0, None, 0, origin)
