"""Reads for D-Bus callers (`snitchd.queries`) on a real store file: they run in a worker on a
read-only connection, stop at their time limit with a message that says what to do, and page
back through the log without a gap or a repeat."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from snitch_common.errors import Busy, StoreError
from snitch_common.rules import parse_rule
from snitchd.queries import LogQuery, QueryGate, Reader, read_connections, read_rule_stats
from snitchd.store import Store

NOW = 1_700_000_000.0
ROW = (NOW, 1, "/usr/bin/curl", 1000, "process", "tcp", "192.0.2.1", 40000, "192.0.2.2")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "snitch.db")
    s.log_rows(
        [
            (*ROW, port, "veth0", None, "allow", None, "default", "bpf", "ask", None, None, None)
            for port in range(1, 26)
        ]
    )
    yield s
    s.close()


@pytest.fixture
def reader(store: Store) -> Iterator[Reader]:
    r = Reader(store.path, time_limit=0.5)
    yield r
    r.close()


async def test_a_query_past_its_time_limit_is_stopped_with_advice(reader: Reader) -> None:
    """A query that would run for hours (a billion-row recursive count) ends at the limit."""
    endless = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000000000) "
        "SELECT count(*) FROM n"
    )
    with pytest.raises(Busy, match=r"query took too long: over 0.5 s \(narrow it with --since"):
        await reader.run(lambda conn: conn.execute(endless).fetchone())


async def test_the_reader_cannot_write(reader: Reader, store: Store) -> None:
    """Only the log writer writes the log: a query connection is read-only."""
    with pytest.raises(StoreError, match="cannot read rule store"):
        await reader.run(lambda conn: conn.execute("DELETE FROM connections"))
    assert len(store.connections(LogQuery(limit=100))) == 25


async def test_paging_back_with_before_sees_every_row_once(reader: Reader) -> None:
    """How `snitchctl log --limit N` gets more than one reply holds: pages of 10, older first."""
    pages: list[list[int]] = []
    before = None
    for _ in range(10):
        query = LogQuery(before=before, limit=10)
        page = await reader.run(lambda conn, q=query: read_connections(conn, q))
        if not page:
            break
        pages.append([row["dport"] for row in page])
        before = page[0]["id"]
    assert pages == [list(range(16, 26)), list(range(6, 16)), list(range(1, 6))]


async def test_rule_counters_come_from_the_store(reader: Reader, store: Store) -> None:
    first = store.add_rule(parse_rule("allow app=/usr/bin/curl"), NOW, origin="uid 0")
    store.add_rule(parse_rule("deny app=/usr/bin/wget"), NOW)
    store.record_hits({first.id: (3, NOW + 5)})
    stats = await reader.run(lambda conn: read_rule_stats(conn, [first.id, 999]))
    assert list(stats) == [first.id]
    assert (stats[first.id].hits, stats[first.id].last_hit, stats[first.id].origin) == (
        3,
        NOW + 5,
        "uid 0",
    )


def test_the_gate_holds_one_query_per_uid_and_per_connection() -> None:
    gate = QueryGate()
    with gate.enter(":1.1", 1000):
        with pytest.raises(Busy, match="uid 1000 already has a query running"):
            gate.enter(":1.2", 1000).__enter__()
        with gate.enter(":1.3", 1001):
            pass
    with gate.enter(":1.2", 1000):
        pass


async def test_an_app_is_found_by_its_name_or_its_path(store: Store, reader: Reader) -> None:
    """`log --app curl` found nothing: it needed the full path (issue 20). A name matches every
    app of that name, and only the whole last part of the path."""
    store.log_rows([(NOW, 2, "/opt/mycurl", 1000, "process", "tcp", "192.0.2.1", 40001,
                     "192.0.2.2", 80, "veth0", None, "allow", None, "default", "bpf", "ask",
                     None, None, None)])  # fmt: skip

    async def count(app: str) -> int:
        query = LogQuery(exe=app, limit=1000)
        return len(await reader.run(lambda conn: read_connections(conn, query)))

    assert await count("curl") == 25
    assert await count("/usr/bin/curl") == 25
    assert await count("mycurl") == 1
    assert await count("url") == 0
