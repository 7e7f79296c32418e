"""The kernel rules as data (`install_lines`) and the mark layout they share with `connmark`.

The kernel reads them in tests/integration/test_connmark.py; here, what must hold whatever the
kernel: a decided flow is matched before the queue rule, a denied one is dropped, every mark is
masked, and the three verdicts cannot be mistaken for each other.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from importlib import resources

import pytest

from snitch_common.errors import BackendFailed
from snitch_common.records import SYSTEM_UID_MAX
from snitch_common.rules import Action
from snitchd.netfilter import (
    ALLOW_MARK,
    DENY_MARK,
    MARK_MASK,
    NO_FAST,
    REJECT_MARK,
    UNASKED_MARK,
    IptablesBackend,
    NetSpec,
    Plan,
    Step,
    fast_lines,
    install_lines,
    limit_script,
    socket_lines,
    verdict_mark,
)
from snitchd.socketmatch import NO_UID

TOOLS = ("iptables", "ip6tables")


def _queue_chain(tool: str, spec: NetSpec) -> list[str]:
    return [ln for ln in install_lines(tool, spec).mangle if ln.startswith("-A SNITCH_QUEUE ")]


def test_marks_are_distinct_and_inside_our_mask() -> None:
    marks = [verdict_mark(action) for action in Action]
    assert len(set(marks)) == len(Action)
    assert all(mark & ~MARK_MASK == 0 and mark != 0 for mark in marks)
    assert MARK_MASK == 0xFFFF0000, "the low 16 bits stay for other programs (documented)"
    assert (verdict_mark(Action.ALLOW), verdict_mark(Action.DENY)) == (ALLOW_MARK, DENY_MARK)
    assert verdict_mark(Action.REJECT) == REJECT_MARK


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("loopback", [False, True])
def test_decided_flows_are_matched_before_the_queue_rule(tool: str, loopback: bool) -> None:
    """Whatever their conntrack state (a one-way UDP flow stays NEW), decided flows never reach
    the NFQUEUE rule: allowed and rejected ones return, denied ones are dropped."""
    chain = _queue_chain(tool, NetSpec(4242, fail_open=True, intercept_loopback=loopback))
    mask = f"/{MARK_MASK:#x}"
    assert chain[-1].endswith("-j NFQUEUE --queue-num 4242 --queue-bypass")
    assert "--ctstate NEW" in chain[-1]
    decided = {ln.split("--mark ")[1] for ln in chain[:-1] if "-m connmark" in ln}
    assert decided == {
        f"{ALLOW_MARK:#x}{mask} -j RETURN",
        f"{DENY_MARK:#x}{mask} -j DROP",
        f"{REJECT_MARK:#x}{mask} -j RETURN",
    }
    assert ("-A SNITCH_QUEUE -o lo -j RETURN" in chain) is not loopback
    assert not any("-j ACCEPT" in ln for ln in chain), "ACCEPT would skip the admin's rules"


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("forward", [(), ("veth9",)])
def test_a_tcp_syn_is_queued_before_any_kept_verdict_but_the_allowed_one_passes(
    tool: str, forward: tuple[str, ...]
) -> None:
    """A SYN on a decided flow's ports may be another socket's (conntrack keys on the tuple):
    it is queued before the connmark rules could pass or drop it. The allowed SYN coming back
    (NF_REPEAT with the allow mark) is not queued again, and its mark is on the entry first."""
    spec = NetSpec(4242, fail_open=False, forward_from=forward)
    mangle = install_lines(tool, spec).mangle
    allow = f"{ALLOW_MARK:#x}/{MARK_MASK:#x}"
    for chain in ("SNITCH_QUEUE", "SNITCH_FORWARD") if forward else ("SNITCH_QUEUE",):
        lines = [ln for ln in mangle if ln.startswith(f"-A {chain} ")]
        syn = [i for i, ln in enumerate(lines) if "--syn" in ln]
        kept = [i for i, ln in enumerate(lines) if "-m connmark" in ln]
        assert len(syn) == 1 and syn[0] < min(kept), lines
        line = lines[syn[0]]
        assert f"-p tcp --syn -m mark ! --mark {allow}" in line
        assert line.endswith("-j NFQUEUE --queue-num 4242")
        assert ("-i veth9" in line) is (chain == "SNITCH_FORWARD")
        keep = lines.index(f"-A {chain} -m mark --mark {allow} -j CONNMARK --set-xmark {allow}")
        assert keep < syn[0]


@pytest.mark.parametrize("tool", TOOLS)
def test_rejected_flows_are_rejected_by_packet_mark_and_by_connmark(tool: str) -> None:
    """The decided packet carries the reject mark; its flow's later packets carry it on their
    conntrack entry. Both get a TCP reset or an ICMP port unreachable of the right family."""
    rules = install_lines(tool, NetSpec(1, fail_open=False)).filter
    unreach = "icmp6-port-unreachable" if tool == "ip6tables" else "icmp-port-unreachable"
    expected = []
    for match in ("-m mark", "-m connmark"):
        expected += [
            f"-A SNITCH_REJECT -p tcp {match} --mark {REJECT_MARK:#x}/{MARK_MASK:#x} "
            "-j REJECT --reject-with tcp-reset",
            f"-A SNITCH_REJECT {match} --mark {REJECT_MARK:#x}/{MARK_MASK:#x} "
            f"-j REJECT --reject-with {unreach}",
        ]
    assert [ln for ln in rules if ln.startswith("-A SNITCH_REJECT")] == expected


def test_fail_closed_queue_rule_has_no_bypass() -> None:
    assert not _queue_chain("iptables", NetSpec(7, fail_open=False))[-1].endswith("bypass")


def test_every_mark_match_is_masked() -> None:
    """A mark match without our mask would read other programs' bits as a verdict."""
    chains = install_lines("iptables", NetSpec(1, fail_open=True, dns_queue=2))
    for line in (*chains.mangle, *chains.filter):
        if "--mark" in line:
            assert line.split("--mark ")[1].split()[0].endswith(f"/{MARK_MASK:#x}"), line


@pytest.mark.parametrize("tool", TOOLS)
def test_dns_answers_are_queued_as_asked_only_in_a_reply_flow(tool: str) -> None:
    """Issue 13: an answer counts as asked only if conntrack saw our query leave (ESTABLISHED,
    reply direction); any other UDP answer is marked unasked, rate-limited, before the queue
    sees it, so a flood of forged answers never reaches Python whole."""
    mangle = install_lines(tool, NetSpec(1, fail_open=True, dns_queue=2)).mangle
    dns = [ln for ln in mangle if ln.startswith("-A SNITCH_DNS ")]
    reply = "-m conntrack --ctstate ESTABLISHED --ctdir REPLY"
    queue = "-j NFQUEUE --queue-num 2 --queue-bypass"
    assert dns[:2] == [
        f"-A SNITCH_DNS -p udp --sport 53 {reply} {queue}",
        f"-A SNITCH_DNS -p tcp --sport 53 {reply} {queue}",
    ]
    unasked = f"{UNASKED_MARK:#x}/{MARK_MASK:#x}"
    assert dns[2].startswith("-A SNITCH_DNS -p udp --sport 53 -m limit --limit ")
    assert dns[2].endswith(f"-j MARK --set-xmark {unasked}")
    assert dns[3] == f"-A SNITCH_DNS -p udp --sport 53 -m mark --mark {unasked} {queue}"
    assert len(dns) == 4, "no other answer is queued"
    assert UNASKED_MARK & ~MARK_MASK == 0
    assert UNASKED_MARK not in (ALLOW_MARK, DENY_MARK, REJECT_MARK)


@pytest.mark.parametrize("tool", TOOLS)
def test_dns_queries_are_recorded_after_every_filter(tool: str) -> None:
    """The query recorder sits in POSTROUTING, appended: a queued packet we accept leaves its
    table at once, so in mangle OUTPUT it would skip the decision rules after it."""
    mangle = install_lines(tool, NetSpec(1, fail_open=True, dns_queue=2)).mangle
    assert "-A POSTROUTING -m comment --comment snitch -j SNITCH_DNSQ" in mangle
    assert not any("OUTPUT" in ln and "DNSQ" in ln for ln in mangle)
    queue = "-j NFQUEUE --queue-num 2 --queue-bypass"
    assert [ln for ln in mangle if ln.startswith("-A SNITCH_DNSQ ")] == [
        f"-A SNITCH_DNSQ -p udp --dport 53 {queue}",
        f"-A SNITCH_DNSQ -p tcp --dport 53 -m conntrack --ctstate ESTABLISHED {queue}",
    ]
    assert not any("DNS" in ln for ln in install_lines(tool, NetSpec(1, fail_open=True)).mangle)


@pytest.mark.parametrize("tool", TOOLS)
def test_a_forwarded_dns_query_is_limited_per_source_before_the_dns_queue(tool: str) -> None:
    """A container's query has no socket here, so the nft limit of a user's queries does not
    count it: queries without a socket go through a chain of their own first, limited per
    source address and all together, and only then to the DNS queue."""
    spec = NetSpec(1, fail_open=True, dns_queue=2, dns_per_user=200)
    mangle = install_lines(tool, spec).mangle
    queue = "-j NFQUEUE --queue-num 2 --queue-bypass"
    assert [ln for ln in mangle if ln.startswith("-A SNITCH_DNSQ ")] == [
        "-A SNITCH_DNSQ -p udp --dport 53 -m owner ! --socket-exists -j SNITCH_DNSFQ",
        "-A SNITCH_DNSQ -p tcp --dport 53 -m conntrack --ctstate ESTABLISHED "
        "-m owner ! --socket-exists -j SNITCH_DNSFQ",
        f"-A SNITCH_DNSQ -p udp --dport 53 {queue}",
        f"-A SNITCH_DNSQ -p tcp --dport 53 -m conntrack --ctstate ESTABLISHED {queue}",
    ]
    assert mangle.index(":SNITCH_DNSFQ - [0:0]") < mangle.index(
        "-A SNITCH_DNSQ -p udp --dport 53 -m owner ! --socket-exists -j SNITCH_DNSFQ"
    )
    assert [ln for ln in mangle if ln.startswith("-A SNITCH_DNSFQ ")] == [
        "-A SNITCH_DNSFQ -m hashlimit --hashlimit-above 200/sec --hashlimit-burst 200 "
        "--hashlimit-mode srcip --hashlimit-name sndnsq200 -j DROP",
        f"-A SNITCH_DNSFQ -m limit --limit 800/sec --limit-burst 800 {queue}",
        "-A SNITCH_DNSFQ -j DROP",
    ]


@pytest.mark.parametrize("fail_open", [True, False])
def test_several_readers_share_new_flows_by_cpu_and_keep_the_fail_mode(fail_open: bool) -> None:
    """Queue readers (issue 21): the queue rule spans queue … queue + readers - 1, chosen by
    the sending CPU; bypass (fail open) is per queue, so a dead reader's queue passes."""
    rule = _queue_chain("iptables", NetSpec(7, fail_open=fail_open, queues=4))[-1]
    assert "-j NFQUEUE --queue-balance 7:10 --queue-cpu-fanout" in rule
    assert "--queue-num" not in rule
    assert rule.endswith("--queue-bypass") is fail_open


def test_one_reader_keeps_one_queue() -> None:
    rule = _queue_chain("iptables", NetSpec(7, fail_open=True))[-1]
    assert rule.endswith("-j NFQUEUE --queue-num 7 --queue-bypass")


def test_the_per_user_limit_spares_the_system_s_uids_and_goes_with_0() -> None:
    """The nft script first empties an earlier run's table (`table` then `delete` works
    whether it exists or not); with a rate, it counts per socket uid above the system's what
    our rules queue: a SYN, whatever its entry says, and other packets of flows not decided yet
    (a one-way UDP flow stays NEW: its later datagrams carry their verdict); 0 leaves no table."""
    empty = ["table inet snitch_limit", "delete table inet snitch_limit"]
    assert limit_script(0).splitlines() == empty
    script = limit_script(500)
    assert script.splitlines()[:2] == empty
    output = script.split("chain output {")[1].split("}")[0].strip().splitlines()
    assert [ln.strip() for ln in output] == [
        "type filter hook output priority mangle - 10; policy accept;",
        "meta skuid <= 999 return",
        "ct state != new return",
        "tcp flags & (fin | syn | rst | ack) == syn jump count",
        f"ct mark and {MARK_MASK:#x} != 0 return",
        "jump count",
    ]
    (count,) = [ln.strip() for ln in script.splitlines() if " drop" in ln]
    assert count == (
        "update @users { meta skuid limit rate over 500/second burst 500 packets } counter drop"
    )


def test_dns_queries_are_limited_per_user_apart_and_before_the_new_flow_rules() -> None:
    """Every query goes to the DNS queue, a decided flow's too: a user's are counted in a set
    of their own, before the new-flow rules would return for a decided flow (a query that
    starts a flow counts in both); the system's uids are spared."""
    queries = limit_script(0, 200)
    output = queries.split("chain output {")[1].split("\n  }")[0].strip().splitlines()
    assert [ln.strip() for ln in output][1:] == [
        "meta skuid <= 999 return",
        "meta l4proto { tcp, udp } th dport 53 jump query",
    ]
    (drop,) = [ln.strip() for ln in queries.splitlines() if " drop" in ln]
    assert drop == (
        "update @queriers { meta skuid limit rate over 200/second burst 200 packets } counter drop"
    )
    both = [ln.strip() for ln in limit_script(500, 200).splitlines()]
    assert both.index("meta l4proto { tcp, udp } th dport 53 jump query") == (
        both.index("ct state != new return") - 1
    )
    assert len([ln for ln in both if ln.endswith(" drop")]) == 2


@pytest.mark.parametrize("tool", TOOLS)
def test_forwarded_new_flows_are_limited_per_source_and_together_before_the_queue(
    tool: str,
) -> None:
    """A forwarded packet has no socket here, so no uid for the nft limit: both queue rules of
    the forward chain go through a chain that drops what one source address starts past the
    per-user rate, then what all start past four times it (a forged source each packet), and
    queues the rest. Without a per-user rate, they queue as before."""
    spec = NetSpec(5, fail_open=False, forward_from=("veth9",), per_user=3000)
    mangle = install_lines(tool, spec).mangle
    forward = [ln for ln in mangle if ln.startswith("-A SNITCH_FORWARD ") and "-i veth9" in ln]
    assert len(forward) == 2 and all(ln.endswith("-j SNITCH_FWDQ") for ln in forward)
    assert mangle.index(":SNITCH_FWDQ - [0:0]") < mangle.index(":SNITCH_FORWARD - [0:0]")
    assert [ln for ln in mangle if ln.startswith("-A SNITCH_FWDQ ")] == [
        "-A SNITCH_FWDQ -m hashlimit --hashlimit-above 3000/sec --hashlimit-burst 3000 "
        "--hashlimit-mode srcip --hashlimit-name snfwd3000 -j DROP",
        "-A SNITCH_FWDQ -m limit --limit 10000/sec --limit-burst 10000 -j NFQUEUE --queue-num 5",
        "-A SNITCH_FWDQ -j DROP",
    ]
    unlimited = install_lines(tool, replace(spec, per_user=0)).mangle
    assert not any("SNITCH_FWDQ" in ln for ln in unlimited)


def test_a_failed_limit_step_warns_and_the_firewall_still_starts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A kernel without nf_tables (iptables-legacy machines) cannot take the nft table: the
    limit is not needed to filter, so its failure is a warning; a failed iptables step still
    stops the start."""
    backend = IptablesBackend(("iptables",))
    with caplog.at_level(logging.WARNING, logger="snitchd.netfilter"):
        backend.apply(Plan((Step(("false",), "", "the limit is off"),)))
    assert [r.getMessage() for r in caplog.records] == ["the limit is off: false failed: 1"]
    with pytest.raises(BackendFailed, match="false failed"):
        backend.apply(Plan((Step(("false",), ""),)))


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("forward", [(), ("veth9",)])
def test_every_verdict_coming_back_is_acted_on_before_anything_queues_it(
    tool: str, forward: tuple[str, ...]
) -> None:
    """Every verdict is a repeat with its mark (`firewall._give`), so the repeated packet must
    be kept, dropped or passed on by its mark before a queue rule could take it again: a SYN
    carrying any verdict is not queued, and the deny and reject marks are acted on first."""
    mangle = install_lines(tool, NetSpec(4242, fail_open=False, forward_from=forward)).mangle
    for chain in ("SNITCH_QUEUE", "SNITCH_FORWARD") if forward else ("SNITCH_QUEUE",):
        lines = [ln for ln in mangle if ln.startswith(f"-A {chain} ")]
        syn = next(ln for ln in lines if "--syn" in ln)
        for mark in (ALLOW_MARK, DENY_MARK, REJECT_MARK):
            assert f"-m mark ! --mark {mark:#x}/{MARK_MASK:#x}" in syn
        denied = lines.index(f"-A {chain} -m mark --mark {DENY_MARK:#x}/{MARK_MASK:#x} -j DROP")
        rejected = lines.index(
            f"-A {chain} -m mark --mark {REJECT_MARK:#x}/{MARK_MASK:#x} -j RETURN"
        )
        later = [i for i, ln in enumerate(lines) if "NFQUEUE" in ln and "--syn" not in ln]
        assert max(denied, rejected) < min(later), lines


@pytest.mark.parametrize("tool", TOOLS)
def test_datagrams_of_decided_flows_meet_the_socket_match_while_the_allow_mark_is_on(
    tool: str,
) -> None:
    """The socket match learns a decided socket from its packet coming back with the verdict's
    mark: the jump to it comes before the allow mark is taken off, and before the connmark
    rules that would pass the packet of an undecided socket. Only from OUTPUT: a forwarded
    packet has no socket here. Its chain is declared before the chain jumping to it. A packet
    whose socket was given the entry's verdict returns at once; one whose socket was given
    another sets the entry to it, after the queue rule (so only a decided socket's can)."""
    spec = NetSpec(4242, fail_open=True, forward_from=("veth9",), sockets="/sys/fs/bpf/x")
    mangle = install_lines(tool, spec).mangle
    jump = "-A SNITCH_QUEUE ! -p tcp -j SNITCH_SOCKETS"
    lines = [ln for ln in mangle if ln.startswith("-A SNITCH_QUEUE ")]
    unmark = next(i for i, ln in enumerate(lines) if "-j MARK --set-xmark 0/" in ln)
    kept = min(i for i, ln in enumerate(lines) if "-m connmark" in ln)
    first_mark = next(i for i, ln in enumerate(lines) if "-j CONNMARK" in ln)
    assert lines.index(jump) < min(unmark, kept, first_mark)
    assert not any("SNITCH_SOCKETS" in ln for ln in mangle if ln.startswith("-A SNITCH_FORWARD"))
    assert mangle.index(":SNITCH_SOCKETS - [0:0]") < mangle.index(":SNITCH_QUEUE - [0:0]")
    assert not any("SNITCH_SOCKETS" in ln for ln in install_lines(tool, NetSpec(1, True)).mangle)
    none, pinned = f"0/{MARK_MASK:#x}", "-m bpf --object-pinned /sys/fs/bpf/x"
    decided = f"-m mark --mark {none} -m connmark ! --mark {none}"
    verdicts = [(ALLOW_MARK, "allowed"), (DENY_MARK, "denied"), (REJECT_MARK, "rejected")]
    assert socket_lines(spec) == [
        ":SNITCH_SOCKETS - [0:0]",
        f"-A SNITCH_SOCKETS -m mark ! --mark {none} {pinned}/other-socket -j DROP",
        f"-A SNITCH_SOCKETS -m mark ! --mark {none} {pinned}/undecided -j RETURN",
        *(
            f"-A SNITCH_SOCKETS -m mark --mark {none} -m connmark --mark {mark:#x}/{MARK_MASK:#x}"
            f" {pinned}/{name} -j RETURN"
            for mark, name in verdicts
        ),
        f"-A SNITCH_SOCKETS {decided} {pinned}/over-limit -j DROP",
        f"-A SNITCH_SOCKETS {decided} {pinned}/undecided "
        "-j NFQUEUE --queue-num 4242 --queue-bypass",
        *(
            f"-A SNITCH_SOCKETS {decided} {pinned}/{name} "
            f"-j CONNMARK --set-xmark {mark:#x}/{MARK_MASK:#x}"
            for mark, name in verdicts
        ),
        f"-A SNITCH_SOCKETS -m mark --mark {none} -m connmark --mark {none} "
        f"-m conntrack --ctstate NEW {pinned}/note-sender -j RETURN",
    ]


def test_the_socket_match_is_a_step_snitchd_can_run_without(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kernel without xt_bpf refuses the bpf rule: its chain is filled by a step of its own,
    whose failure warns and leaves the chain empty, and the firewall filters by tuple. With
    iptables-legacy the match is not set at all."""
    backend = IptablesBackend(("iptables",))
    monkeypatch.setattr(backend, "_remove_lines", lambda tool, keep: {"mangle": [], "filter": []})
    monkeypatch.setattr(backend, "_limit_table", lambda: False)
    plan = backend.plan_install(NetSpec(7, fail_open=False, sockets="/p"))
    assert [s.without != "" for s in plan.steps] == [False, True] and plan.lost == ()
    assert "--object-pinned /p" in plan.steps[1].stdin and "xt_bpf" in plan.steps[1].without
    assert "bpf" not in plan.steps[0].stdin and "-j SNITCH_SOCKETS" in plan.steps[0].stdin
    # iptables-legacy would fail every later change of mangle: no match, and said so.
    backend.legacy = True
    plan = backend.plan_install(NetSpec(7, fail_open=False, sockets="/p"))
    assert len(plan.steps) == 1 and "SNITCH_SOCKETS" not in plan.steps[0].stdin
    assert [text.split(": ")[-1] for text in plan.lost] == [
        "not with iptables-legacy (use iptables-nft)"
    ]


def test_the_socket_program_reads_the_marks_and_users_of_the_python_side() -> None:
    """sockets.bpf.c spells the mark layout, the first user's uid and "no uid named" out in C:
    they must be these."""
    source = resources.files("snitchd").joinpath("bpf", "sockets.bpf.c").read_text()
    defined = dict(
        re.findall(r"#define (\w+_MA(?:RK|SK)|SYSTEM_UID_MAX|NO_UID) (0x[0-9A-F]+u|\d+)", source)
    )
    assert {name: int(value.rstrip("u"), 0) for name, value in defined.items()} == {
        "MARK_MASK": MARK_MASK, "ALLOW_MARK": ALLOW_MARK,
        "DENY_MARK": DENY_MARK, "REJECT_MARK": REJECT_MARK, "SYSTEM_UID_MAX": SYSTEM_UID_MAX,
        "NO_UID": NO_UID,
    }  # fmt: skip


@pytest.mark.parametrize("tool", TOOLS)
def test_a_syn_meets_the_fast_path_before_the_allow_mark_is_kept_and_the_queue_rule(
    tool: str,
) -> None:
    """The fast path's chain may put the allow mark on a SYN: its jump comes before the rule
    that keeps that mark on the conntrack entry and before the SYN's queue rule, and only for a
    SYN carrying no verdict yet (a verdict's repeat is never re-marked). Its one rule is a step
    of its own, as the socket match's."""
    spec = NetSpec(4242, fail_open=True, sockets="/sys/fs/bpf/x", fast="/sys/fs/bpf/x/fast")
    mangle = install_lines(tool, spec).mangle
    lines = [ln for ln in mangle if ln.startswith("-A SNITCH_QUEUE ")]
    jump = next(i for i, ln in enumerate(lines) if ln.endswith("-j SNITCH_FAST"))
    undecided = " ".join(
        f"-m mark ! --mark {m:#x}/{MARK_MASK:#x}" for m in (ALLOW_MARK, DENY_MARK, REJECT_MARK)
    )
    assert lines[jump] == f"-A SNITCH_QUEUE -p tcp --syn {undecided} -j SNITCH_FAST"
    keep = next(i for i, ln in enumerate(lines) if "-j CONNMARK --set-xmark" in ln)
    queue = next(i for i, ln in enumerate(lines) if "--syn" in ln and "NFQUEUE" in ln)
    assert jump < min(keep, queue)
    assert mangle.index(":SNITCH_FAST - [0:0]") < mangle.index(":SNITCH_QUEUE - [0:0]")
    assert fast_lines(spec) == [
        ":SNITCH_FAST - [0:0]",
        "-A SNITCH_FAST -m bpf --object-pinned /sys/fs/bpf/x/fast "
        f"-j MARK --set-xmark {ALLOW_MARK:#x}/{MARK_MASK:#x}",
    ]
    assert not any("SNITCH_FAST" in ln for ln in install_lines(tool, NetSpec(1, True)).mangle)


def test_the_fast_path_is_a_step_snitchd_can_run_without(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without xt_bpf the fast path's step fails alone (every flow is then queued, as before);
    with iptables-legacy it is not set at all."""
    backend = IptablesBackend(("iptables",))
    monkeypatch.setattr(backend, "_remove_lines", lambda tool, keep: {"mangle": [], "filter": []})
    monkeypatch.setattr(backend, "_limit_table", lambda: False)
    plan = backend.plan_install(NetSpec(7, fail_open=False, sockets="/p", fast="/p/fast"))
    assert [s.without != "" for s in plan.steps] == [False, True, True]
    assert "--object-pinned /p/fast" in plan.steps[2].stdin
    assert plan.steps[2].without.startswith(NO_FAST) and "xt_bpf" in plan.steps[2].without
    assert "bpf" not in plan.steps[0].stdin and "-j SNITCH_FAST" in plan.steps[0].stdin
    backend.legacy = True
    plan = backend.plan_install(NetSpec(7, fail_open=False, sockets="/p", fast="/p/fast"))
    assert len(plan.steps) == 1 and "SNITCH_FAST" not in plan.steps[0].stdin
    assert any(text.startswith(NO_FAST) for text in plan.lost)
