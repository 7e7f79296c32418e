"""The prompt broker without a bus or a kernel: routing, joining, limits, answers, rules.

The applier and transport here are fakes of the broker's own protocols (below the bus line);
packets are plain objects the fake applier records, as the kernel would receive verdicts.
"""

from __future__ import annotations

import asyncio
from ipaddress import ip_address

import pytest

from snitch_common.answers import Answer
from snitch_common.errors import NotAuthorized
from snitch_common.records import Attribution, Flow, Process, Proto
from snitch_common.rules import Action, Rule
from snitchd.decide import Verdict
from snitchd.events import Alert
from snitchd.prompts import Agent, Broker, Prompt

ALICE = 1000
BOB = 1001


class FakeFirewall:
    def __init__(self) -> None:
        self.verdicts: list[tuple[object, Verdict, str | None]] = []
        self.rules: list[Rule] = []

    def apply(self, pkt, verdict, flow, proc, now, host=None) -> None:  # type: ignore[no-untyped-def]
        self.verdicts.append((pkt, verdict, host))

    def default_verdict(self, reason: str) -> Verdict:
        return Verdict(Action.DENY, None, reason)

    def add_answer_rule(self, rule: Rule, origin: str) -> int:
        self.rules.append(rule)
        return len(self.rules)


class FakeTransport:
    def __init__(self) -> None:
        self.prompts: list[tuple[str, int]] = []
        self.cancels: list[tuple[str, int, str]] = []
        self.alerts: list[tuple[str, str]] = []

    def send_prompt(self, agent: Agent, prompt: Prompt) -> None:
        self.prompts.append((agent.name, prompt.id))

    def send_cancel(self, agent: Agent, prompt: Prompt, reason: str) -> None:
        self.cancels.append((agent.name, prompt.id, reason))

    def send_alert(self, agent: Agent, alert: Alert) -> None:
        self.alerts.append((agent.name, alert.kind))


def proc(uid: int = ALICE, exe: str = "/usr/bin/curl", pid: int = 4242) -> Process:
    return Process(Attribution.PROCESS, pid=pid, uid=uid, exe=exe, start_time=100.0)


def flow(dst: str = "203.0.113.7", dport: int = 443, sport: int = 40000) -> Flow:
    return Flow(Proto.TCP, ip_address("192.0.2.1"), sport, ip_address(dst), dport, "eth0")


def make(timeout: float = 30, max_open: int = 8) -> tuple[Broker, FakeFirewall, FakeTransport]:
    broker = Broker(lambda: 0.0, timeout, max_open, is_admin=lambda uid: uid == 0)
    fw, transport = FakeFirewall(), FakeTransport()
    broker.attach(fw)
    broker.transport = transport
    return broker, fw, transport


async def test_no_agent_means_the_default_at_once() -> None:
    broker, fw, _ = make()
    broker.ask("pkt", flow(), proc(), 0.0)
    assert fw.verdicts == [("pkt", Verdict(Action.DENY, None, "default: no agent"), None)]


async def test_same_app_and_destination_join_one_prompt() -> None:
    """Twenty SYNs of one app to one place: one prompt, twenty verdicts from one answer."""
    broker, fw, transport = make()
    broker.register(":1.5", "/a", ALICE)
    for i in range(20):
        broker.ask(f"pkt{i}", flow(sport=40000 + i), proc(), 0.0)
    assert len(transport.prompts) == 1 and fw.verdicts == []
    (prompt_id,) = broker.open
    broker.answer(Answer(prompt_id, Action.ALLOW, "once"), ":1.5")
    assert [v.action for _, v, _ in fw.verdicts] == [Action.ALLOW] * 20
    assert fw.rules == [] and broker.open == {}


async def test_a_prompt_goes_to_the_socket_owners_agent_only() -> None:
    broker, _, transport = make()
    broker.register(":1.5", "/a", ALICE)
    broker.register(":1.6", "/a", BOB)
    broker.ask("pkt", flow(), proc(uid=BOB), 0.0)
    assert [name for name, _ in transport.prompts] == [":1.6"]
    (prompt_id,) = broker.open
    with pytest.raises(NotAuthorized):
        broker.answer(Answer(prompt_id, Action.ALLOW), ":1.5")
    assert broker.visible_to(":1.5") == [] and len(broker.visible_to(":1.6")) == 1


async def test_system_flows_go_to_an_admin_agent() -> None:
    broker, fw, transport = make()
    broker.register(":1.5", "/a", ALICE)
    broker.ask("pkt", flow(), proc(uid=0), 0.0)
    assert transport.prompts == [] and fw.verdicts[0][1].reason == "default: no agent"
    broker.register(":1.7", "/a", 0)
    broker.ask("pkt2", flow(dport=80), proc(uid=0), 0.0)
    assert [name for name, _ in transport.prompts] == [":1.7"]


async def test_too_many_open_prompts_get_the_default() -> None:
    broker, fw, _ = make(max_open=2)
    broker.register(":1.5", "/a", ALICE)
    for port in (1, 2, 3):
        broker.ask(f"pkt{port}", flow(dport=port), proc(), 0.0)
    assert len(broker.open) == 2
    assert fw.verdicts == [("pkt3", Verdict(Action.DENY, None, "default: too many prompts"), None)]


async def test_timeout_applies_the_default_and_tells_the_agent() -> None:
    broker, fw, transport = make(timeout=0.05)
    broker.register(":1.5", "/a", ALICE)
    broker.ask("pkt", flow(), proc(), 0.0, host="api.example.org")
    await asyncio.sleep(0.2)
    assert fw.verdicts == [
        ("pkt", Verdict(Action.DENY, None, "default: timed out"), "api.example.org")
    ]
    assert transport.cancels == [(":1.5", 1, "default: timed out")]
    assert broker.timed_out == 1


async def test_an_agent_leaving_hands_its_prompts_on_or_to_the_default() -> None:
    broker, fw, transport = make()
    broker.register(":1.5", "/a", ALICE)
    broker.register(":1.8", "/b", ALICE)
    broker.ask("pkt", flow(), proc(), 0.0)
    assert transport.prompts[-1][0] == ":1.8"
    broker.unregister(":1.8")
    assert transport.prompts[-1][0] == ":1.5" and fw.verdicts == []
    broker.unregister(":1.5")
    assert fw.verdicts[0][1].reason == "default: agent left"


async def test_answers_of_a_user_make_rules_for_that_user_only() -> None:
    broker, fw, _ = make()
    broker.register(":1.5", "/a", ALICE)
    broker.ask("pkt", flow(), proc(), 0.0)
    (prompt_id,) = broker.open
    rule_id = broker.answer(Answer(prompt_id, Action.ALLOW), ":1.5")
    assert rule_id == 1
    assert str(fw.rules[0]) == (
        f"allow app=/usr/bin/curl user={ALICE} to=203.0.113.7 port=443 proto=tcp"
    )


async def test_alerts_reach_the_users_agents_or_the_admins() -> None:
    broker, _, transport = make()
    broker.register(":1.5", "/a", ALICE)
    broker.register(":1.6", "/a", BOB)
    broker.register(":1.7", "/a", 0)
    broker.alert(Alert("new-app", "x", 0.0, ALICE, "/usr/bin/curl"))
    broker.alert(Alert("rules-changed", "y", 0.0))
    assert transport.alerts == [(":1.5", "new-app"), (":1.7", "rules-changed")]
