"""Where an answer's rule holds (issue 17): in every profile, or only in the profile that was
active when the prompt was asked. One vocabulary (`Reach`) for the popup, the terminal agent
and snitchd; the rule it makes is `profile=NAME` or has no profile."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address

import pytest

from snitch_common.answers import Action, Answer, Reach, Scope, parse_answer, rule_for_answer
from snitch_common.bus import PromptView
from snitch_common.errors import PromptError
from snitch_common.records import Attribution, Container, Flow, Process, Proto, Runtime
from snitch_common.rules import parse_rule
from snitchctl.termagent import parse_reply, render
from snitchd.prompts import Broker
from tests.support.broker import RuleKeeper, SentPrompts

FLOW = Flow(Proto.TCP, ip_address("192.0.2.1"), 40000, ip_address("203.0.113.8"), 22, "eth0")
SSH = Process(Attribution.PROCESS, pid=42, uid=1000, exe="/usr/bin/ssh", sha256="ab" * 32)


def _answer(reach: Reach, scope: Scope = Scope.EXACT) -> Answer:
    return Answer(1, Action.ALLOW, "forever", scope, reach)


def test_both_words_parse_and_everywhere_is_the_default() -> None:
    assert parse_answer(1, "allow", "forever", "host").reach is Reach.EVERYWHERE
    assert parse_answer(1, "allow", "forever", "host", "profile").reach is Reach.PROFILE
    assert parse_answer(1, "deny", "once", "exact", "everywhere").reach is Reach.EVERYWHERE


def test_another_word_is_refused_with_the_ones_to_use() -> None:
    with pytest.raises(PromptError, match="invalid answer reach 'home': use everywhere or profile"):
        parse_answer(1, "allow", "forever", "host", "home")


def test_this_profile_only_names_the_profile_active_when_asked() -> None:
    rule = rule_for_answer(FLOW, SSH, None, _answer(Reach.PROFILE), admin=False, profile="home")
    assert rule.profile == "home"
    assert parse_rule(str(rule)) == rule
    assert str(rule).endswith("profile=home")


def test_everywhere_makes_a_rule_of_no_profile_even_while_one_is_active() -> None:
    rule = rule_for_answer(FLOW, SSH, None, _answer(Reach.EVERYWHERE), admin=False, profile="home")
    assert rule.profile is None
    plain = rule_for_answer(FLOW, SSH, None, _answer(Reach.EVERYWHERE), admin=False)
    assert rule == plain


def test_this_profile_only_without_a_profile_is_refused() -> None:
    """A rule of no profile would hold in every one: more than was asked."""
    with pytest.raises(PromptError, match="none was active"):
        rule_for_answer(FLOW, SSH, None, _answer(Reach.PROFILE), admin=False)


def test_a_containers_answer_can_hold_in_one_profile() -> None:
    web = replace(SSH, uid=0, container=Container(Runtime.DOCKER, "web-1", "3f" * 32, 7))
    rule = rule_for_answer(
        FLOW, web, None, _answer(Reach.PROFILE, Scope.CONTAINER), admin=True, profile="work"
    )
    assert str(rule) == "allow container=web-1 runtime=docker profile=work"


@pytest.mark.parametrize(
    ("line", "reach"),
    [
        ("a forever host profile", Reach.PROFILE),
        ("a profile", Reach.PROFILE),
        ("d 15m everywhere", Reach.EVERYWHERE),
        ("a", Reach.EVERYWHERE),
    ],
)
def test_the_terminal_agent_reads_the_same_words(line: str, reach: Reach) -> None:
    assert parse_reply(7, line).reach is reach


def _view(profile: str) -> PromptView:
    return PromptView.from_dict(
        {"id": 3, "exe": "/usr/bin/ssh", "proto": "tcp", "dst": "203.0.113.8", "port": 22,
         "profile": profile}
    )  # fmt: skip


def test_the_prompt_says_which_profile_was_active_and_the_terminal_shows_it() -> None:
    assert _view("home").profile == "home"
    assert PromptView.from_dict({"id": 3}).profile == ""  # an older snitchd: no profile
    text = render(_view("home"), 0, 0.0)
    assert "profile   home (active when asked)" in text
    assert "only in profile home" in text
    assert "profile" not in render(_view(""), 0, 0.0).split("answer:")[0]


async def test_the_broker_keeps_the_profile_of_the_moment_it_asked() -> None:
    """The answer names the profile its person was shown, wherever snitchd is by then."""
    broker = Broker(lambda: 0.0, 30, 8, is_admin=lambda uid: False)
    fw, transport = RuleKeeper(), SentPrompts()
    broker.attach(fw)  # type: ignore[arg-type]
    broker.transport = transport
    broker.register(":1.5", "/a", 1000)
    broker.ask("pkt", FLOW, SSH, 0.0, None, None, "home")  # type: ignore[arg-type]
    broker.ask("pkt", replace(FLOW, dport=23), SSH, 0.0, None, None, None)  # type: ignore[arg-type]
    asked_home, asked_none = transport.sent
    assert (asked_home.profile, asked_none.profile) == ("home", None)
    await broker.answer(replace(_answer(Reach.PROFILE), prompt_id=asked_home.id), ":1.5")
    assert fw.rules == ["allow app=/usr/bin/ssh sha256=" + "ab" * 32 + " user=1000 "
                        "to=203.0.113.8 port=22 proto=tcp profile=home"]  # fmt: skip
    with pytest.raises(PromptError, match="none was active"):
        await broker.answer(replace(_answer(Reach.PROFILE), prompt_id=asked_none.id), ":1.5")
    assert asked_none.id in broker.open  # refused: still open, still answerable
