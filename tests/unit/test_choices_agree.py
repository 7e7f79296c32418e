"""What the agents offer (`snitch_common.choices`, for the popup and `snitchctl agent`) agrees
with what snitchd takes (`rule_for_answer`): every scope and duration offered for a prompt
makes a rule, and every one refused is greyed. The prompt is the one snitchd sends, built from
the flow and the process by its own `prompt_dict`. Before, containers were offered "anything
nginx connects to" and "until the app quits", both always refused, and the kernel's prompts
"until the app quits", which made a rule the store could not read back."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address

import pytest

from snitch_common.answers import DURATIONS, Action, Answer, Scope, rule_for_answer
from snitch_common.bus import PromptView, plain
from snitch_common.choices import duration_why_not, scope_options
from snitch_common.errors import PromptError
from snitch_common.records import Attribution, Container, Flow, Process, Proto, Runtime, Source
from snitch_common.rules import parse_rule
from snitchd.api.prompts import prompt_dict
from snitchd.prompts import Prompt

TCP = Flow(Proto.TCP, ip_address("192.0.2.1"), 40000, ip_address("203.0.113.7"), 443, "eth0")
ICMP = Flow(Proto.ICMP, ip_address("2001:db8::1"), 0, ip_address("2001:db8::8"), 0, "eth0")
IGMP = Flow(Proto.OTHER, ip_address("192.0.2.1"), 0, ip_address("224.0.0.22"), 0, "eth0")
CURL = Process(
    Attribution.PROCESS, pid=4242, uid=1000, exe="/usr/bin/curl", start_time=1.0,
    sha256="ab" * 32, parents=((4100, "/usr/bin/bash"),), source=Source.BPF,
)  # fmt: skip
PYTHON = Process(
    Attribution.PROCESS, pid=4243, uid=1000, exe="/usr/bin/python3.11", start_time=1.0,
    interpreted=True, script="/home/alice/sync.py", source=Source.BPF,
)  # fmt: skip
BOX = Container(Runtime.DOCKER, "web-1", "abc", pid=7, owner_uid=1000)
NGINX = Process(
    Attribution.PROCESS, pid=4000, uid=100999, exe="/usr/sbin/nginx", start_time=1.0,
    parents=((3990, "/usr/bin/containerd-shim-runc-v2"),), container=BOX, source=Source.SOCK_DIAG,
)  # fmt: skip

CASES = {
    "app, a name it resolved": (TCP, CURL, "api.example.org"),
    "app, no name": (TCP, CURL, None),
    "interpreter and its script": (TCP, PYTHON, None),
    "interpreter, script not trusted": (TCP, replace(PYTHON, script_doubts=("PYTHONPATH",)), None),
    "ping": (ICMP, CURL, None),
    "the kernel's IGMP report": (IGMP, Process.kernel(), None),
    "a sender not found": (TCP, Process.uid_only(1000), None),
    "a container": (TCP, NGINX, None),
}


def _view(flow: Flow, proc: Process, named: str | None) -> PromptView:
    prompt = Prompt(7, (), flow, proc, 0.0, 30.0, host=named, named=named)
    return PromptView.from_dict(plain(prompt_dict(prompt, "deny")))


def _taken(flow: Flow, proc: Process, named: str | None, answer: Answer) -> bool:
    try:
        rule = rule_for_answer(flow, proc, named, answer, admin=False)
    except PromptError:
        return False
    parse_rule(str(rule))  # and the store can read it back
    return True


@pytest.mark.parametrize("case", CASES)
def test_each_scope_offered_is_taken_and_each_refused_one_greyed(case: str) -> None:
    """One may be greyed though taken: a container's "any app" is its "only" again."""
    flow, proc, named = CASES[case]
    view = _view(flow, proc, named)
    greyed_but_taken = []
    for option in scope_options(view, "app"):
        taken = _taken(flow, proc, named, Answer(7, Action.ALLOW, "forever", option.scope))
        assert taken or option.why_not is not None, (case, option)
        if taken and option.why_not is not None:
            greyed_but_taken.append(option.scope)
    assert greyed_but_taken == ([Scope.ANY_APP] if proc.container else [])


@pytest.mark.parametrize("case", CASES)
def test_each_duration_offered_is_taken_and_each_greyed_one_refused(case: str) -> None:
    flow, proc, named = CASES[case]
    view = _view(flow, proc, named)
    for duration, _ in DURATIONS:
        if duration == "once":  # makes no rule: nothing to refuse
            continue
        taken = _taken(flow, proc, named, Answer(7, Action.ALLOW, duration, Scope.EXACT))
        assert taken == (duration_why_not(view, duration) is None), (case, duration)
