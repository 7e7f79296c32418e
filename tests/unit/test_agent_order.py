"""Which of a user's agents gets the prompts (issue 15): the desktop's, where a person sits, before
a forgotten `snitchctl agent` in an SSH session; the terminal agent when no desktop agent is
active or when it was started with --take-over; never simply the newest."""

from __future__ import annotations

from ipaddress import ip_address

from snitch_common.records import Attribution, Flow, Process, Proto
from snitch_common.rules import Action, Rule, RuleRecord
from snitchd.decide import Verdict
from snitchd.events import Alert
from snitchd.prompts import Agent, Broker, Prompt

ALICE = 1000
DESKTOP, SSH, GONE = "/session/2", "/session/5", "/session/9"  # active+seat, remote, switched away


class Recorder:
    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.alerts: list[tuple[str, str]] = []

    def send_prompt(self, agent: Agent, prompt: Prompt) -> None:
        self.prompts.append(agent.name)

    def send_cancel(self, agent: Agent, prompt: Prompt, reason: str) -> None:
        pass

    def send_alert(self, agent: Agent, alert: Alert) -> None:
        self.alerts.append((agent.name, alert.message))


class Applier:
    def apply(self, pkt, verdict, flow, proc, now, host=None) -> None:  # type: ignore[no-untyped-def]
        pass

    def default_verdict(self, reason: str) -> Verdict:
        return Verdict(Action.DENY, None, reason)

    async def add_rule(self, rule: Rule, origin: str) -> RuleRecord:
        return RuleRecord(1, rule, 0.0, None, 0, origin)


def make(active: set[str], known: set[str]) -> tuple[Broker, Recorder]:
    broker = Broker(lambda: 0.0, 30, 8, is_admin=lambda uid: False)
    broker.use_sessions(active.__contains__, known.__contains__)
    broker.attach(Applier())
    recorder = Recorder()
    broker.transport = recorder
    return broker, recorder


def ask(broker: Broker, port: int) -> None:
    flow = Flow(Proto.TCP, ip_address("192.0.2.1"), 4000, ip_address("203.0.113.7"), port)
    proc = Process(Attribution.PROCESS, pid=7, uid=ALICE, exe="/usr/bin/curl")
    broker.ask("pkt", flow, proc, 0.0)


async def test_the_desktop_agent_where_a_person_sits_beats_an_older_terminal_agent() -> None:
    broker, sent = make({DESKTOP}, {DESKTOP, SSH})
    broker.register(":1.3", "/a", ALICE, pid=30, session=SSH, terminal=True)  # the older
    broker.register(":1.4", "/a", ALICE, pid=40, session=DESKTOP)
    ask(broker, 1)
    assert sent.prompts == [":1.4"]
    order = [a.name for a in broker.routes()[0][1]]
    assert order == [":1.4", ":1.3"]


async def test_a_terminal_agent_is_asked_when_no_desktop_agent_is_active() -> None:
    broker, sent = make(set(), {GONE, SSH})
    broker.register(":1.4", "/a", ALICE, pid=40, session=GONE)  # switched away
    broker.register(":1.3", "/a", ALICE, pid=30, session=SSH, terminal=True)
    ask(broker, 1)
    assert sent.prompts == [":1.3"]


async def test_a_desktop_agent_logind_knows_nothing_of_beats_a_terminal_agent() -> None:
    """A notifier started by a user unit, no logind: nothing says no one sits at it."""
    broker, sent = make(set(), set())
    broker.register(":1.3", "/a", ALICE, pid=30, terminal=True)
    broker.register(":1.4", "/a", ALICE, pid=40)
    ask(broker, 1)
    assert sent.prompts == [":1.4"]


async def test_take_over_gets_the_prompts_and_the_desktop_hears_of_it() -> None:
    broker, sent = make({DESKTOP}, {DESKTOP, SSH})
    broker.register(":1.4", "/a", ALICE, pid=40, session=DESKTOP)
    broker.register(":1.3", "/a", ALICE, pid=30, session=SSH, terminal=True, take_over=True)
    ask(broker, 1)
    assert sent.prompts == [":1.3"]
    assert any(name == ":1.4" and "take-over" in text for name, text in sent.alerts)


async def test_the_newest_desktop_agent_does_not_win_by_being_newest() -> None:
    broker, sent = make({DESKTOP}, {DESKTOP})
    broker.register(":1.4", "/a", ALICE, pid=40, session=DESKTOP)
    broker.register(":1.9", "/a", ALICE, pid=90, session=DESKTOP)
    ask(broker, 1)
    assert sent.prompts == [":1.4"]
