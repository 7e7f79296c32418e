"""Issue 15: a prompt the person put aside keeps its flow held up to `hold_max`, only its own
agent may defer it, and a prompt that timed out can still be turned into a rule.

The broker runs on a hand-moved clock; its timers are the loop's, so deadlines are checked
by the state they leave (the deadline, the timer's when), never by sleeping.
"""

from __future__ import annotations

import asyncio

import pytest

from snitch_common.answers import Answer, Scope
from snitch_common.errors import NotAuthorized, RuleError
from snitch_common.rules import Action
from snitchd.prompts import Broker
from tests.support.firewall import NOW, Clock
from tests.unit.test_broker import ALICE, BOB, FakeFirewall, FakeTransport, flow, proc


def make(clock: Clock, hold_max: float = 600) -> tuple[Broker, FakeFirewall, FakeTransport]:
    broker = Broker(clock, 30, 8, is_admin=lambda uid: uid == 0, hold_max=hold_max)
    fw, transport = FakeFirewall(), FakeTransport()
    broker.attach(fw)
    broker.transport = transport
    return broker, fw, transport


async def test_deferring_holds_the_flow_up_to_hold_max_after_it_was_asked() -> None:
    clock = Clock()
    broker, fw, _ = make(clock)
    broker.register(":1.5", "/a", ALICE)
    broker.ask("pkt", flow(), proc(), clock.now)
    (prompt,) = broker.open.values()
    assert prompt.deadline == clock.now + 30
    clock.now += 20
    assert broker.defer(prompt.id, ":1.5") == 580
    assert prompt.deadline == NOW + 600 and fw.verdicts == []
    assert prompt.timer is not None
    loop = asyncio.get_running_loop()
    assert prompt.timer.when() == pytest.approx(loop.time() + 580, abs=1)
    clock.now += 100
    assert broker.defer(prompt.id, ":1.5") == 480, "a second deferral does not extend it"
    await broker.answer(Answer(prompt.id, Action.ALLOW, "once"), ":1.5")
    assert [v.action for _, v, _ in fw.verdicts] == [Action.ALLOW]


async def test_only_the_agent_asked_may_defer() -> None:
    """Another user's agent (or a second agent of the same user) cannot hold a flow it was
    not asked about, nor learn whether such a prompt exists."""
    clock = Clock()
    broker, _, _ = make(clock)
    broker.register(":1.5", "/a", ALICE)
    broker.register(":1.6", "/a", BOB)
    broker.ask("pkt", flow(), proc(), clock.now)
    (prompt,) = broker.open.values()
    for name in (":1.6", ":1.99"):
        with pytest.raises(NotAuthorized, match=f"no open prompt {prompt.id} for this agent"):
            broker.defer(prompt.id, name)
    with pytest.raises(NotAuthorized):
        broker.defer(prompt.id + 1, ":1.5")
    assert prompt.deadline == clock.now + 30


async def test_a_deferred_prompt_gets_the_default_at_hold_max() -> None:
    clock = Clock()
    broker, fw, transport = make(clock, hold_max=0.05)
    broker.reconfigure(0.01, 8, hold_max=0.2)
    broker.register(":1.5", "/a", ALICE)
    broker.ask("pkt", flow(), proc(), clock.now)
    (prompt,) = broker.open.values()
    broker.defer(prompt.id, ":1.5")
    await asyncio.wait_for(_until(lambda: not broker.open), 5)
    assert fw.verdicts[0][1].reason == "default: timed out"
    assert transport.cancels == [(":1.5", prompt.id, "default: timed out")]


async def test_a_timed_out_prompt_can_be_turned_into_a_rule_by_its_agent() -> None:
    """The trace of an expired prompt ("expired: denied by default") offers to make a rule:
    the late answer makes it, with the same checks as a live answer, and only once."""
    clock = Clock()
    broker, fw, _ = make(clock)
    broker.reconfigure(0.01, 8)
    broker.register(":1.5", "/a", ALICE)
    broker.register(":1.6", "/a", BOB)
    broker.ask("pkt", flow(), proc(), clock.now)
    (prompt_id,) = broker.open
    await asyncio.wait_for(_until(lambda: not broker.open), 5)
    assert [v.reason for _, v, _ in fw.verdicts] == ["default: timed out"]
    with pytest.raises(RuleError, match="timed out"):
        await broker.answer(Answer(prompt_id, Action.ALLOW, "once"), ":1.5")
    with pytest.raises(NotAuthorized):
        await broker.answer(Answer(prompt_id, Action.ALLOW, "forever"), ":1.6")
    rule_id = await broker.answer(Answer(prompt_id, Action.ALLOW, "forever", Scope.HOST), ":1.5")
    assert rule_id == 1 and len(fw.verdicts) == 1, "no packet is decided twice"
    assert "user=1000" in str(fw.rules[0]) and "to=203.0.113.7" in str(fw.rules[0])
    with pytest.raises(NotAuthorized):
        await broker.answer(Answer(prompt_id, Action.ALLOW, "forever"), ":1.5")


async def _until(predicate) -> None:  # type: ignore[no-untyped-def]
    while not predicate():
        await asyncio.sleep(0.01)
