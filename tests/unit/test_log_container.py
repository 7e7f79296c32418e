"""The connection log's `container` and `runtime` columns (issue 16): a forwarded flow's row
names its container in columns of their own, not only in the reason's text, so `snitchctl log
--json`, the monitor's signal and any script can select by them."""

from __future__ import annotations

import sqlite3
from ipaddress import IPv4Address
from pathlib import Path

import sqlite_utils

from snitch_common.records import Attribution, Container, Flow, Process, Proto, Runtime
from snitch_common.rules import Action
from snitchd import store as store_module
from snitchd.queries import LogQuery
from snitchd.store import Decision, Store, decision_row

NOW = 1_700_000_000.0
WEB = Container(Runtime.DOCKER, "web-1", "3f" * 32, 7)


def _decision(box: Container | None) -> Decision:
    proc = Process(Attribution.PROCESS, pid=4242, uid=0, exe="/usr/sbin/nginx", container=box)
    flow = Flow(Proto.TCP, IPv4Address("203.0.113.130"), 40000, IPv4Address("198.51.100.7"), 443)
    return Decision(NOW, flow, proc, Action.DENY, None, "default: no agent")


def test_a_containers_row_names_it_and_a_hosts_row_does_not(tmp_path: Path) -> None:
    store = Store(tmp_path / "snitch.db")
    try:
        store.log_decisions([_decision(WEB), _decision(None)])
        boxed, host = store.connections(LogQuery())
    finally:
        store.close()
    assert (boxed["container"], boxed["runtime"]) == ("web-1", "docker")
    assert (host["container"], host["runtime"]) == (None, None)


def test_the_monitor_signal_carries_it_too() -> None:
    row = decision_row(_decision(Container(Runtime.PODMAN, "db", "a1" * 32, owner_uid=1000)))
    assert (row["container"], row["runtime"]) == ("db", "podman")


def test_a_store_of_the_schema_before_gets_the_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    """Rows logged before the columns existed read back with NULL: nobody knows any more."""
    path = tmp_path / "old.db"
    steps = store_module._MIGRATIONS
    mine = next(i for i, m in enumerate(steps) if "container or guest" in (m.__doc__ or ""))
    db = sqlite_utils.Database(str(path))
    for step in range(mine):
        steps[step](db)
    db.execute(f"PRAGMA user_version = {mine}")
    db.execute(
        "INSERT INTO connections (time, exe, uid, attribution, proto, src, sport, dst, dport, "
        "iface, action, reason) VALUES (?, '/usr/bin/curl', 1000, 'process', 'tcp', "
        "'192.0.2.1', 40000, '192.0.2.2', 80, 'veth0', 'allow', 'rule 1')",
        [NOW],
    )
    db.conn.commit()
    db.close()
    store = Store(path)
    try:
        store.log_decisions([_decision(WEB)])
        old, new = store.connections(LogQuery())
    finally:
        store.close()
    assert (old["exe"], old["container"], old["runtime"]) == ("/usr/bin/curl", None, None)
    assert (new["container"], new["runtime"]) == ("web-1", "docker")
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == store_module.SCHEMA_VERSION
    finally:
        raw.close()
