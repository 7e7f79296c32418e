"""`snitchctl explain` says what the packet path does (issue 15): over generated rules, names
learnt from DNS and flows, the verdict and winning rule of `explain_flow` equal those the
firewall's packet path (`Firewall._decide`) gives the same flow of the same process, whether the
destination is given as its address or as the name that process resolved.

The firewall, its held rules and its name cache are the real ones; the packets and the event
log are recorders (below the kernel and the log writer)."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from ipaddress import ip_address
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snitch_common.records import Attribution, Flow, Process, Proto
from snitch_common.rules import Action, parse_rule
from snitchd.config import Config
from snitchd.dnssnoop import Resolution
from snitchd.explain import ExplainQuery, explain_flow
from snitchd.firewall import Firewall
from snitchd.names import SHARED, Owner
from snitchd.prompts import Broker
from snitchd.store import Store
from tests.support.firewall import EventRecorder, Packet

NOW = 1_700_000_000.0
# Paths that exist nowhere: neither side knows a digest, as for an executable not hashed.
EXES = ["/opt/t/curl", "/opt/t/ssh"]
# name chains (queried name first) and the address each resolves to: one address per chain
DNS = [
    (("api.example.org",), "203.0.113.7"),
    (("www.example.org", "cdn.example.net"), "203.0.113.8"),
    (("v6.example.org",), "2001:db8:1::2"),
]
ADDRESSES = ["203.0.113.7", "203.0.113.8", "203.0.113.9", "2001:db8:1::2"]
DESTS = [
    "203.0.113.7",
    "203.0.113.0/24",
    "203.0.113.8",
    "2001:db8::/32",
    "api.example.org",
    "www.example.org",
    "cdn.example.net",
    "*.example.org",
    "*.example.net",
    "v6.example.org",
]


@st.composite
def rule_texts(draw: st.DrawFn) -> str:
    words = [draw(st.sampled_from(["allow", "deny", "reject"]))]
    if draw(st.booleans()):
        words.append(f"app={draw(st.sampled_from(EXES))}")
    if draw(st.booleans()):
        words.append(f"user={draw(st.sampled_from([1000, 1001]))}")
    if draw(st.integers(0, 3)):
        words.append(f"to={draw(st.sampled_from(DESTS))}")
    if draw(st.booleans()):
        words.append(f"port={draw(st.sampled_from(['443', '22', '1-1024']))}")
    if draw(st.booleans()):
        words.append(f"proto={draw(st.sampled_from(['tcp', 'udp']))}")
    return " ".join(words)


# who learnt a chain: the flow's own process (pid 7 of uid 1000), another process of its user,
# its user with no process, another user, everyone
OWNERS = [Owner(1000, 7), Owner(1000, 8), Owner(1000), Owner(1001, 9), SHARED]


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[str], list[tuple[int, Owner | None]], Flow, Process]:
    rules = draw(st.lists(rule_texts(), max_size=12))
    learnt = draw(
        st.lists(st.tuples(st.integers(0, len(DNS) - 1), st.sampled_from(OWNERS)), max_size=6)
    )
    dst = ip_address(draw(st.sampled_from(ADDRESSES)))
    src = ip_address("192.0.2.1" if dst.version == 4 else "2001:db8:1::1")
    proto = draw(st.sampled_from([Proto.TCP, Proto.UDP]))
    flow = Flow(proto, src, 40000, dst, draw(st.sampled_from([22, 80, 443])), "eth0")
    proc = Process(Attribution.PROCESS, pid=7, uid=1000, exe=draw(st.sampled_from(EXES)))
    return rules, learnt, flow, proc


def live_and_explained(
    rules: list[str], learnt: list[tuple[int, Owner | None]], flow: Flow, proc: Process
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "snitch.db")
        try:
            asyncio.run(_compare(store, rules, learnt, flow, proc))
        finally:
            store.close()


async def _compare(
    store: Store,
    rules: list[str],
    learnt: list[tuple[int, Owner | None]],
    flow: Flow,
    proc: Process,
) -> None:
    clock = itertools.repeat(NOW).__next__
    broker = Broker(clock=clock, timeout=5, max_open=10, is_admin=lambda uid: False)
    config = Config(database=store.path, default_action=Action.DENY, retry_window=0)
    log = EventRecorder()
    fw = Firewall(config, store, None, log, broker, clock=clock)  # type: ignore[arg-type]
    broker.attach(fw)
    for text in rules:
        await fw.add_rule(parse_rule(text), "test")
    for chain, owner in learnt:
        names, address = DNS[chain]
        fw.dns.names.learn([Resolution(names, ip_address(address), 300)], NOW - 1, owner)
    fw._decide(Packet(), flow, proc)  # type: ignore[arg-type]
    (row,) = log.rows
    live = (row.action, row.rule_id)
    query = ExplainQuery(str(flow.dst), flow.dport, flow.proto, proc.exe, proc.uid, proc.pid)
    by_address = await explain_flow(fw, query)
    assert by_address.names == fw.dns.names_for(flow.dst, proc, NOW)[0]
    explained = (
        by_address.verdict.action if by_address.verdict else Action.DENY,
        by_address.verdict.rule_id if by_address.verdict else None,
    )
    assert explained == live
    winner = by_address.explanation.winner
    assert (winner[0] if winner else None) == live[1]
    # By the name this very process resolved the address from, when it did.
    own = fw.dns.names.own(flow.dst, NOW, proc)
    if own is not None:
        by_name = await explain_flow(
            fw, ExplainQuery(own, flow.dport, flow.proto, proc.exe, proc.uid, proc.pid)
        )
        assert by_name.dst == flow.dst
        assert (by_name.verdict.rule_id if by_name.verdict else None) == live[1]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(cases())
def test_explain_equals_the_live_verdict(
    case: tuple[list[str], list[tuple[int, Owner | None]], Flow, Process],
) -> None:
    live_and_explained(*case)


def test_a_host_rule_is_explained_as_the_log_showed_it() -> None:
    """The case of issue 15: the log showed the flow allowed by a host rule; explain said "no
    matching rule"."""
    flow = Flow(Proto.TCP, ip_address("192.0.2.1"), 40000, ip_address("203.0.113.7"), 443)
    proc = Process(Attribution.PROCESS, pid=7, uid=1000, exe=EXES[0])
    live_and_explained(["allow to=api.example.org port=443"], [(0, Owner(1000, 7))], flow, proc)
