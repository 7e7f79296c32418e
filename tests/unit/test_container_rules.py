"""Containers (issue 16) without a kernel: cgroup paths → runtime and name, the `container=` and
`runtime=` rule words, how decide treats a container's process, the answers for it, and the
FORWARD rules as data."""

from __future__ import annotations

import argparse
import shlex
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from test_broker import make

from snitch_common.answers import Answer, Scope, rule_for_answer
from snitch_common.errors import PromptError, RuleError
from snitch_common.records import Attribution, Container, Flow, Process, Proto, Runtime
from snitch_common.rules import Action, container_matches, parse_rule
from snitchctl.rulecmds import check_rules
from snitchd.containers import Names, conmon_args, container_from, parse_cgroup, pid_inside
from snitchd.decide import RuleSet, _key, decide, specificity
from snitchd.netfilter import NetSpec, install_lines
from tests.support.dockerapi import DockerApi

DOCKER_ID = "3f" * 32
PODMAN_ID = "a1" * 32
WEB = Container(Runtime.DOCKER, "web-1", DOCKER_ID, 7)
ROOTLESS = Container(Runtime.PODMAN, "db", PODMAN_ID, 1, owner_uid=1000)
FLOW = Flow(Proto.TCP, IPv4Address("203.0.113.130"), 40000, IPv4Address("198.51.100.7"), 443)
PYTHON = "/usr/bin/python3.11"


def boxed(box: Container | None = WEB, uid: int = 0) -> Process:
    return Process(Attribution.PROCESS, pid=4242, uid=uid, exe=PYTHON, container=box)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (f"0::/system.slice/docker-{DOCKER_ID}.scope\n", (Runtime.DOCKER, DOCKER_ID[:12], None)),
        (f"12:memory:/docker/{DOCKER_ID}\n0::/\n", (Runtime.DOCKER, DOCKER_ID[:12], None)),
        (
            f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{PODMAN_ID}"
            ".scope/container\n",
            (Runtime.PODMAN, PODMAN_ID[:12], 1000),
        ),
        (f"0::/machine.slice/libpod-{PODMAN_ID}.scope\n", (Runtime.PODMAN, PODMAN_ID[:12], None)),
        (
            "0::/machine.slice/machine-debian\\x2dtest.scope/payload\n",
            (Runtime.NSPAWN, "debian-test", None),
        ),
        (
            "0::/machine.slice/machine-qemu\\x2d3\\x2dwin11.scope/libvirt/emulator\n",
            (Runtime.LIBVIRT, "win11", None),
        ),
        ("0::/lxc.payload.alpine/init.scope\n", (Runtime.LXC, "alpine", None)),
        ("9:name=systemd:/lxc/old-box\n0::/\n", (Runtime.LXC, "old-box", None)),
    ],
)
def test_cgroup_names_runtime_name_and_owner(text: str, want: tuple[object, ...]) -> None:
    found = parse_cgroup(text)
    assert found is not None
    assert (found.runtime, found.name, found.owner_uid) == want


@pytest.mark.parametrize(
    "text",
    [
        "0::/user.slice/user-1000.slice/session-2.scope\n",
        "0::/system.slice/docker.service\n",  # dockerd itself, not a container
        f"0::/machine.slice/libpod-conmon-{PODMAN_ID}.scope\n",  # podman's monitor
        "0::/\n",
    ],
)
def test_host_processes_are_in_no_container(text: str) -> None:
    assert parse_cgroup(text) is None


def test_pid_inside_is_the_innermost_namespace_pid() -> None:
    assert pid_inside("Name:\tnginx\nNSpid:\t81234\t7\n") == 7
    assert pid_inside("Name:\tbash\nNSpid:\t99\n") == 99


def test_container_words_round_trip() -> None:
    for text in (
        "allow container=web-1 runtime=docker",
        "deny container='web *' port=25",
        "allow runtime=podman user=1000 to=198.51.100.0/24",
    ):
        rule = parse_rule(text)
        assert parse_rule(str(rule)) == rule


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("allow runtime=kubernetes", "runtime"),
        ("allow container=web app=/usr/bin/curl", "container="),
        ("allow runtime=docker parent=/usr/bin/containerd-shim", "runtime="),
        ("allow container=" + "x" * 129, "container"),
        ("deny container=[z-a]", "invalid container '\\[z-a\\]'"),
        ("deny container=web[a--b]", "invalid container 'web\\[a--b\\]'"),
    ],
)
def test_bad_container_words_are_refused(text: str, word: str) -> None:
    with pytest.raises(RuleError, match=word):
        parse_rule(text)


def test_container_glob() -> None:
    assert container_matches("web-*", "web-1")
    assert container_matches("web-?", "web-1") and not container_matches("web-?", "web-12")
    assert container_matches("[!d]*", "web") and not container_matches("[!d]*", "db")
    assert container_matches("a.b", "a.b") and not container_matches("a.b", "axb")
    assert not container_matches("web", "web-1")


def test_an_empty_class_is_literal() -> None:
    """`[!]` compiled to the regex `[^]`, which raised at every match: decide failed on every
    container flow and the fail mode (open) let them through a `deny runtime=docker`."""
    assert container_matches("x[!]", "x[!]") and not container_matches("x[!]", "xa")
    rules = RuleSet(
        [(1, parse_rule("allow container=[!]")), (2, parse_rule("deny runtime=docker"))]
    )
    assert decide(FLOW, boxed(), rules, 0.0).rule_id == 2  # type: ignore[union-attr]


@given(st.text("[]!-^\\*?az.]~&|", max_size=8), st.text("[]!-az", max_size=6))
@example("[!]", "web")
def test_a_parsed_container_glob_never_raises_when_matched(pattern: str, name: str) -> None:
    """Matching runs per packet, where a raise is a verdict by the fail mode: every glob the
    parser lets through must compile, so a bad one is refused when the rule is added."""
    try:
        rule = parse_rule(f"deny container={shlex.quote(pattern)}")
    except RuleError:
        return
    assert rule.container is not None
    container_matches(rule.container, name)


def test_check_rules_reports_a_container_glob_that_cannot_match(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "boxes.rules"
    path.write_text("deny runtime=docker\nallow container=[z-a]\n")
    assert check_rules(argparse.Namespace(file=str(path), json=False)) == 1
    assert f"{path}:2: invalid container '[z-a]'" in capsys.readouterr().err


def test_container_rules_match_containers_only() -> None:
    rules = RuleSet([(1, parse_rule("allow container=web-*")), (2, parse_rule("deny"))])
    assert decide(FLOW, boxed(), rules, 0.0).rule_id == 1  # type: ignore[union-attr]
    assert decide(FLOW, boxed(None), rules, 0.0).rule_id == 2  # type: ignore[union-attr]
    runtime = RuleSet([(1, parse_rule("allow runtime=podman"))])
    assert decide(FLOW, boxed(), runtime, 0.0).__class__.__name__ == "Ask"


def test_an_app_rule_never_matches_a_containers_process() -> None:
    """The container's /usr/bin/python3.11 is the container's file, not this machine's."""
    rules = RuleSet([(1, parse_rule(f"allow app={PYTHON}"))])
    assert decide(FLOW, boxed(), rules, 0.0).__class__.__name__ == "Ask"
    assert decide(FLOW, boxed(None), rules, 0.0).rule_id == 1  # type: ignore[union-attr]


def test_user_names_the_containers_owner_and_rules_for_everyone_still_hold() -> None:
    """A rootful container's root process is not root of this machine (`user=0` misses it);
    a rootless one's flows are its user's; rules naming nobody hold for containers too."""
    rules = RuleSet([(1, parse_rule("allow user=0")), (2, parse_rule("deny port=443"))])
    assert decide(FLOW, boxed(uid=0), rules, 0.0).rule_id == 2  # type: ignore[union-attr]
    mine = RuleSet([(1, parse_rule("allow user=1000 runtime=podman"))])
    assert decide(FLOW, boxed(ROOTLESS, uid=100000), mine, 0.0).rule_id == 1  # type: ignore[union-attr]


def test_a_container_rule_beats_a_rule_for_everyone() -> None:
    rules = RuleSet(
        [(1, parse_rule("allow container=web-1")), (2, parse_rule("deny to=198.51.100.7"))]
    )
    assert decide(FLOW, boxed(), rules, 0.0).rule_id == 1  # type: ignore[union-attr]


def test_this_container_answer_names_the_container() -> None:
    answer = Answer(1, Action.ALLOW, "forever", Scope.CONTAINER)
    rule = rule_for_answer(FLOW, boxed(), None, answer, admin=True)
    assert str(rule) == "allow container=web-1 runtime=docker"
    exact = rule_for_answer(FLOW, boxed(), "api.example.org", Answer(1, Action.DENY), admin=True)
    assert str(exact) == "deny container=web-1 runtime=docker to=api.example.org port=443 proto=tcp"
    owner = rule_for_answer(FLOW, boxed(ROOTLESS, 100000), None, answer, admin=False)
    assert str(owner) == "allow container=db runtime=podman user=1000"
    globbed = Container(Runtime.LXC, "we*rd[1]", "we*rd[1]")
    odd = rule_for_answer(FLOW, boxed(globbed), None, answer, admin=True)
    assert odd.container is not None and container_matches(odd.container, "we*rd[1]")
    assert not container_matches(odd.container, "weXrd1")


@pytest.mark.parametrize("scope", [Scope.APP, Scope.SCRIPT, Scope.PARENT])
def test_app_scopes_are_refused_for_a_container(scope: Scope) -> None:
    with pytest.raises(PromptError, match="container"):
        rule_for_answer(FLOW, boxed(), None, Answer(1, Action.ALLOW, "forever", scope), admin=True)


def test_this_container_needs_a_container() -> None:
    with pytest.raises(PromptError, match="container"):
        rule_for_answer(
            FLOW, boxed(None), None, Answer(1, Action.ALLOW, "forever", Scope.CONTAINER), admin=True
        )


def test_describe_says_container_runtime_process_and_pid_inside() -> None:
    assert boxed().describe() == "container web-1 (docker), process python3.11 (pid in container 7)"


def test_forward_rules_queue_new_flows_from_the_listed_interfaces_only() -> None:
    spec = NetSpec(4242, fail_open=False, forward_from=("docker0", "br-+"))
    chains = install_lines("iptables", spec)
    forward = [ln for ln in chains.mangle if ln.startswith("-A SNITCH_FORWARD ")]
    queued = [ln for ln in forward if "NFQUEUE" in ln and "--syn" not in ln]
    assert [ln.split()[3] for ln in queued] == ["docker0", "br-+"]
    assert all("--ctstate NEW --ctdir ORIGINAL" in ln and "--queue-num 4242" in ln for ln in queued)
    # Decided flows (and every verdict's repeat) are handled before anything is queued, by the
    # same rules as on OUTPUT; a SYN is queued before them, from the same interfaces.
    output = [
        ln
        for ln in chains.mangle
        if ln.startswith("-A SNITCH_QUEUE ") and "mark" in ln and "--syn" not in ln
    ]
    decided = [ln.replace("SNITCH_QUEUE", "SNITCH_FORWARD") for ln in output]
    before = forward[: forward.index(queued[0])]
    assert [ln for ln in before if "--syn" not in ln] == decided and len(decided) == 7
    syns = [ln for ln in before if "--syn" in ln]
    assert [ln.split(" -i ")[1].split()[0] for ln in syns] == ["docker0", "br-+"]
    assert "-I FORWARD 1 -m comment --comment snitch -j SNITCH_FORWARD" in chains.mangle
    assert "-I FORWARD 1 -m comment --comment snitch -j SNITCH_REJECT" in chains.filter
    none = install_lines("iptables", NetSpec(4242, fail_open=False))
    assert not any("FORWARD" in ln for ln in none.mangle + none.filter)


async def test_a_rootless_containers_prompt_goes_to_its_owner_and_the_rule_is_theirs() -> None:
    """Rootless Podman: the socket's uid is a subordinate uid (100000), the container is
    uid 1000's (its cgroup is under user@1000.service): uid 1000's agent is asked, and that
    user's answer names the container and its owner, never uid 100000."""
    broker, fw, transport = make()
    broker.register(":1.5", "/a", 1000)
    broker.ask("pkt", FLOW, boxed(ROOTLESS, uid=100000), 0.0)
    assert [name for name, _ in transport.prompts] == [":1.5"]
    (prompt_id,) = broker.open
    await broker.answer(Answer(prompt_id, Action.ALLOW, "forever", Scope.CONTAINER), ":1.5")
    assert [str(r) for r in fw.rules] == ["allow container=db runtime=podman user=1000"]


async def test_a_system_containers_prompt_never_goes_to_the_user_of_its_uid() -> None:
    """Rootful Docker: a process running as uid 1000 *inside* the container is not user
    1000's: its prompt goes to an admin's agent, and with none, the default applies."""
    broker, fw, transport = make()
    broker.register(":1.5", "/a", 1000)
    broker.ask("pkt", FLOW, boxed(WEB, uid=1000), 0.0)
    assert transport.prompts == [] and fw.verdicts[0][1].reason == "default: no agent"
    broker.register(":1.7", "/a", 0)
    broker.ask("pkt2", FLOW, boxed(WEB, uid=1000), 0.0)
    assert [name for name, _ in transport.prompts] == [":1.7"]


def test_a_users_fake_docker_scope_does_not_borrow_a_system_containers_name(
    tmp_path: Path,
) -> None:
    """A user may create `docker-<id>.scope` under their own systemd manager with the id of
    root's container: the API is not asked for it, so it keeps its short id, not "web-1"."""
    api = DockerApi(tmp_path / "docker.sock", {DOCKER_ID: "web-1"})
    try:
        names = Names({Runtime.DOCKER: str(api.path)})
        user = (
            f"0::/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{DOCKER_ID}.scope"
        )
        got = container_from(user + "\n", "NSpid:\t5\n", names)
        assert got is not None and (got.name, got.owner_uid, api.asked) == (DOCKER_ID[:12], 1000, 0)
        system = container_from(f"0::/system.slice/docker-{DOCKER_ID}.scope\n", "", names)
        assert system is not None and (system.name, api.asked) == ("web-1", 1)
    finally:
        api.close()


def test_the_index_orders_container_rules_as_the_precedence_sentence() -> None:
    """The packed rank the index sorts by keeps `specificity`'s order for the new words too."""
    texts = [
        "allow app=/usr/bin/curl",
        "allow container=web runtime=docker user=0",
        "allow container=web runtime=docker",
        "allow container=web",
        "allow runtime=docker user=0",
        "allow runtime=docker",
        "allow user=0",
        "allow",
    ]
    rules = [parse_rule(t) for t in texts]
    assert sorted(rules, key=specificity, reverse=True) == rules
    assert sorted(rules, key=lambda r: _key(r, 0)) == rules


def test_conmon_args_give_the_id_and_name_podman_started_it_with() -> None:
    """Podman's monitor names its container on its command line (`-c ID ... -n NAME`): the name
    of a system Podman container when no API socket runs (the usual case: Podman has no daemon)."""
    line = b"/usr/bin/conmon\0--api-version\0001\0-c\0" + PODMAN_ID.encode()
    line += b"\0-u\0x\0-n\0web-1\0--exit-dir\0/run/x\0"
    assert conmon_args(line) == (PODMAN_ID, "web-1")
    assert conmon_args(b"conmon\0--cid=abc\0--name=db\0") == ("abc", "db")
    assert conmon_args(b"/usr/bin/sleep\0-c\0abc\0-n\0web-1\0") == (None, None)
