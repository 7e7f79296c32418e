"""The prompt broker without a bus or a kernel: routing, joining, limits, answers, rules.

The applier and transport here are fakes of the broker's own protocols (below the bus line);
packets are plain objects the fake applier records, as the kernel would receive verdicts.
"""

from __future__ import annotations

import asyncio
import logging
from ipaddress import ip_address

import pytest

from snitch_common.answers import Answer
from snitch_common.errors import NotAuthorized
from snitch_common.records import Attribution, Flow, Process, Proto
from snitch_common.rules import Action, Rule, RuleRecord
from snitchd.decide import Verdict
from snitchd.events import Alert
from snitchd.prompts import Agent, Broker, Prompt, Quotas

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

    async def add_rule(self, rule: Rule, origin: str) -> RuleRecord:
        self.rules.append(rule)
        return RuleRecord(len(self.rules), rule, 0.0, None, 0, origin)


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


class Pkt:
    """A queued packet as the broker sees it: it may be dropped outright (past a share)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dropped = False

    def drop(self) -> None:
        self.dropped = True


def proc(uid: int = ALICE, exe: str = "/usr/bin/curl", pid: int = 4242) -> Process:
    return Process(Attribution.PROCESS, pid=pid, uid=uid, exe=exe, start_time=100.0)


def flow(dst: str = "203.0.113.7", dport: int = 443, sport: int = 40000) -> Flow:
    return Flow(Proto.TCP, ip_address("192.0.2.1"), sport, ip_address(dst), dport, "eth0")


def make(
    timeout: float = 30,
    max_open: int = 8,
    quotas: Quotas | None = None,
    active: frozenset[str] = frozenset(),
) -> tuple[Broker, FakeFirewall, FakeTransport]:
    broker = Broker(
        lambda: 0.0,
        timeout,
        max_open,
        is_admin=lambda uid: uid == 0,
        quotas=quotas,
        session_active=active.__contains__,
    )
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
    broker, fw, transport = make(quotas=Quotas(packets=20))
    broker.register(":1.5", "/a", ALICE)
    for i in range(20):
        broker.ask(f"pkt{i}", flow(sport=40000 + i), proc(), 0.0)
    assert len(transport.prompts) == 1 and fw.verdicts == []
    (prompt_id,) = broker.open
    await broker.answer(Answer(prompt_id, Action.ALLOW, "once"), ":1.5")
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
        await broker.answer(Answer(prompt_id, Action.ALLOW), ":1.5")
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
    why = f"default: too many prompts of uid {ALICE}"
    assert fw.verdicts == [("pkt3", Verdict(Action.DENY, None, why), None)]


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
    assert transport.prompts[-1][0] == ":1.5"
    broker.unregister(":1.5")
    assert transport.prompts[-1][0] == ":1.8" and fw.verdicts == []
    broker.unregister(":1.8")
    assert fw.verdicts[0][1].reason == "default: agent left"


async def test_answers_of_a_user_make_rules_for_that_user_only() -> None:
    broker, fw, _ = make()
    broker.register(":1.5", "/a", ALICE)
    broker.ask("pkt", flow(), proc(), 0.0)
    (prompt_id,) = broker.open
    rule_id = await broker.answer(Answer(prompt_id, Action.ALLOW), ":1.5")
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


async def test_prompts_go_to_the_oldest_agent_not_the_newest() -> None:
    """Issue 13: the newest agent took a user's prompts, and malware can always register last.
    The oldest is asked; an agent in the active graphical session goes before it."""
    broker, _, transport = make(active=frozenset({"7"}))
    broker.register(":1.5", "/a", ALICE, pid=10)
    broker.register(":1.6", "/a", ALICE, pid=11)
    broker.ask("pkt", flow(), proc(), 0.0)
    broker.register(":1.7", "/a", ALICE, pid=12, session="7")
    broker.ask("pkt2", flow(dport=80), proc(), 0.0)
    assert [name for name, _ in transport.prompts] == [":1.5", ":1.7"]


async def test_a_second_agent_is_told_to_the_first() -> None:
    broker, _, transport = make()
    broker.register(":1.5", "/a", ALICE, pid=10)
    assert transport.alerts == []
    broker.register(":1.6", "/a", ALICE, pid=11, program="/opt/snitch/venv/bin/snitchctl")
    broker.refused(ALICE, "an agent of uid 1000 was refused: ...")
    assert transport.alerts == [
        (":1.5", "agent-registered"),
        (":1.5", "agent-refused"),
        (":1.6", "agent-refused"),
    ]


async def test_refused_agents_are_told_once_a_minute_per_user(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A user calling RegisterAgent in a loop made a journal line and an alert per refusal
    (10k in 8 s), enough for journald's rate limit to drop every line of snitchd's. Now the
    first refusal of a user is told, then one a minute with how many were kept quiet; another
    user's first refusal is told at once."""
    now = [100.0]
    broker = Broker(lambda: now[0], 30, 8, is_admin=lambda uid: uid == 0)
    transport = FakeTransport()
    broker.attach(FakeFirewall())
    broker.transport = transport
    broker.register(":1.5", "/a", ALICE, pid=10)
    with caplog.at_level(logging.WARNING, logger="snitchd.prompts"):
        for _ in range(1000):
            broker.refused(ALICE, "an agent of uid 1000 was refused: impostor")
        broker.refused(BOB, "an agent of uid 1001 was refused: impostor")
        now[0] += 59.0
        broker.refused(ALICE, "an agent of uid 1000 was refused: impostor")
        now[0] += 1.0
        broker.refused(ALICE, "an agent of uid 1000 was refused: impostor")
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "alert agent-refused: an agent of uid 1000 was refused: impostor",
        "alert agent-refused: an agent of uid 1001 was refused: impostor",
        "alert agent-refused: an agent of uid 1000 was refused: impostor (1000 more refused "
        "since the last alert)",
    ]
    assert transport.alerts == [(":1.5", "agent-refused")] * 2


async def test_a_user_s_full_quota_leaves_others_their_prompts() -> None:
    """Issue 13: one user's unanswered prompts used up the one limit for everyone."""
    broker, fw, transport = make(max_open=2, quotas=Quotas(total=10))
    broker.register(":1.5", "/a", ALICE)
    broker.register(":1.6", "/a", BOB)
    for port in (1, 2, 3):
        broker.ask(f"pkt{port}", flow(dport=port), proc(), 0.0)
    broker.ask("bob", flow(dport=1), proc(uid=BOB), 0.0)
    assert [name for name, _ in transport.prompts] == [":1.5", ":1.5", ":1.6"]
    assert [reason for _, v, _ in fw.verdicts for reason in [v.reason]] == [
        f"default: too many prompts of uid {ALICE}"
    ]
    assert broker.over_quota == 1


async def test_packets_joining_a_prompt_past_its_share_are_dropped() -> None:
    """Issue 13: 6,000 datagrams joined one prompt and filled the kernel queue. A prompt holds
    `packets`, a user a quarter of `held`; the rest are dropped, counted, never held."""
    broker, fw, _ = make(quotas=Quotas(packets=4, held=12))
    broker.register(":1.5", "/a", ALICE)
    pkts = [Pkt(f"p{i}") for i in range(6)]
    for pkt in pkts:
        broker.ask(pkt, flow(), proc(), 0.0)
    assert [p.dropped for p in pkts] == [False, False, False, True, True, True]
    assert broker.held == 3 and broker.packets_dropped == 3
    (prompt_id,) = broker.open
    await broker.answer(Answer(prompt_id, Action.ALLOW, "once"), ":1.5")
    assert len(fw.verdicts) == 3 and broker.held == 0
