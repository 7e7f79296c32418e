"""`snitchctl explain --container NAME [--runtime R]` (issue 16): a flow judged as forwarded from
that container gets the verdict the packet path gives a container's flow (`Firewall._decide` on
the same held rules); without a runtime, an answer only when every runtime agrees.

The firewall and its held rules are the real ones; the packets and the event log are recorders
(below the kernel and the log writer), as in test_explain_live.py."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from ipaddress import ip_address
from pathlib import Path

import pytest

from snitch_common.errors import RuleError
from snitch_common.records import Attribution, Container, Flow, Process, Proto, Runtime
from snitch_common.rules import Action, parse_rule
from snitchd.config import Config
from snitchd.explain import ExplainQuery, explain_flow
from snitchd.firewall import Firewall
from snitchd.prompts import Broker
from snitchd.store import Store
from tests.support.firewall import EventRecorder, Packet

NOW = 1_700_000_000.0
DST = "198.51.100.7"


class _Lab:
    def __init__(self, fw: Firewall, log: EventRecorder) -> None:
        self.fw, self.log = fw, log

    async def rules(self, *texts: str) -> list[int]:
        return [(await self.fw.add_rule(parse_rule(t), "test")).id for t in texts]

    def live(self, name: str, runtime: Runtime, port: int, owner: int | None = None) -> object:
        """What the packet path gives a flow of container `name`: (action, rule id)."""
        box = Container(runtime, name, "3f" * 32, 7, owner)
        proc = Process(Attribution.PROCESS, pid=4242, uid=100000, exe="/usr/sbin/nginx",
                       container=box)  # fmt: skip
        flow = Flow(Proto.TCP, ip_address("203.0.113.130"), 40000, ip_address(DST), port, "br0")
        self.fw._decide(Packet(), flow, proc)  # type: ignore[arg-type]
        row = self.log.rows[-1]
        return (row.action, row.rule_id)

    async def explain(
        self, name: str, runtime: Runtime | None, port: int, uid: int | None = None, **kw: object
    ) -> tuple[object, str]:
        query = ExplainQuery(DST, port, Proto.TCP, uid=uid, container=name, runtime=runtime, **kw)  # type: ignore[arg-type]
        got = await explain_flow(self.fw, query)
        winner = got.explanation.winner
        assert (winner[0] if winner else None) == (got.verdict.rule_id if got.verdict else None)
        verdict = got.verdict
        said = (verdict.action, verdict.rule_id) if verdict else (Action.DENY, None)
        return said, got.note


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[_Lab]:
    store = Store(tmp_path / "snitch.db")
    clock = itertools.repeat(NOW).__next__
    broker = Broker(clock=clock, timeout=5, max_open=10, is_admin=lambda uid: False)
    config = Config(database=store.path, default_action=Action.DENY, retry_window=0)
    log = EventRecorder()
    fw = Firewall(config, store, None, log, broker, clock=clock)  # type: ignore[arg-type]
    broker.attach(fw)
    try:
        yield _Lab(fw, log)
    finally:
        store.close()


async def test_a_container_is_judged_by_its_rules_as_the_packet_path_judges_it(lab: _Lab) -> None:
    web, podman, _app = await lab.rules(
        "allow container=web-1 runtime=docker port=443",
        "reject runtime=podman",
        "allow app=/usr/sbin/nginx",  # an app rule: never a container's
    )
    for runtime, port, want in (
        (Runtime.DOCKER, 443, (Action.ALLOW, web)),
        (Runtime.DOCKER, 80, (Action.DENY, None)),  # no rule: the default (no agent)
        (Runtime.PODMAN, 443, (Action.REJECT, podman)),
        (Runtime.LXC, 443, (Action.DENY, None)),
    ):
        said, note = await lab.explain("web-1", runtime, port, exe="/usr/sbin/nginx")
        assert said == lab.live("web-1", runtime, port) == want, (runtime, port)
        assert note.startswith(f"as forwarded from container web-1 ({runtime.value}), a system")
    query = ExplainQuery(DST, 443, exe="/usr/sbin/nginx", container="web-1", runtime=Runtime.DOCKER)
    matches = (await explain_flow(lab.fw, query)).explanation.matches
    assert [rule_id for rule_id, _ in matches] == [web]  # not the app's rule


async def test_without_a_runtime_it_answers_only_when_every_runtime_agrees(lab: _Lab) -> None:
    (db,) = await lab.rules("deny container=db port=5432")
    said, note = await lab.explain("db", None, 5432)
    assert said == (Action.DENY, db)
    assert "(any runtime: the same verdict)" in note
    web, podman = await lab.rules("allow container=web-1 runtime=docker", "reject runtime=podman")
    with pytest.raises(RuleError) as told:
        await lab.explain("web-1", None, 443)
    assert str(told.value) == (
        "explain: container web-1: the verdict depends on its runtime (docker: allow by rule "
        f"{web}; podman: reject by rule {podman}; nspawn: no rule; libvirt: no rule; lxc: no "
        "rule); give --runtime"
    )


async def test_the_owner_is_the_uid_a_user_rule_names(lab: _Lab) -> None:
    """A rootless container's flow is its owner's: `user=` matches `--uid`, as it matches the
    owner of the live flow (the process's own uid is a subordinate one)."""
    (mine,) = await lab.rules("allow container=db user=1000")
    said, note = await lab.explain("db", Runtime.PODMAN, 5432, uid=1000)
    assert said == lab.live("db", Runtime.PODMAN, 5432, owner=1000) == (Action.ALLOW, mine)
    assert "owned by uid 1000" in note
    assert (await lab.explain("db", Runtime.PODMAN, 5432))[0] == (Action.DENY, None)
    assert lab.live("db", Runtime.PODMAN, 5432) == (Action.DENY, None)


@pytest.mark.parametrize("name", ["", "web\n1", "x" * 129])
async def test_a_bad_container_name_is_refused(lab: _Lab, name: str) -> None:
    with pytest.raises(RuleError, match="invalid container name"):
        await lab.explain(name, Runtime.DOCKER, 443)
