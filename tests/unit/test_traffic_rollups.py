"""The day and per-user rollups (issue 19: "a 30-day chart query answers in under 100 ms")
give the same numbers as the hours and minutes they summarise.

`Apps` for 7 and 30 days sums whole days and the hours of the first, partial day; `Traffic`
for every app draws the total from the per-user rollups and reads series only for the busiest
apps. Each must equal what the per-app hours (or minutes) add up to, for an admin and for one
user, and a store from before these tables must have them filled when it is opened.
"""

from __future__ import annotations

import inspect
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from snitchd.queries import Period, read_apps, read_traffic
from snitchd.store import _MIGRATIONS, Store, TrafficMinute

NOW = 1_700_000_123.4  # not on a bucket boundary, as time.time() never is
APPS = [(f"/usr/bin/app{i:02d}", 1000 + i % 3) for i in range(25)]  # more than a report's 20


def _fill(path: Path, hours: int) -> None:
    """`hours` of traffic, one minute in every ten, for APPS (each a different amount)."""
    store = Store(path)
    try:
        last = int(NOW // 60)
        store.add_traffic(
            [
                TrafficMinute(last - m, app, uid, (k + 1) * (m + 1), k + m, 1, (m + k) % 2)
                for m in range(0, hours * 60, 10)
                for k, (app, uid) in enumerate(APPS)
            ]
        )
    finally:
        store.close()


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 days of traffic: longer than the month, so the first, partial day matters."""
    path = tmp_path_factory.mktemp("rollups") / "snitch.db"
    _fill(path, 40 * 24)
    return path


def _sums(
    conn: sqlite3.Connection, table: str, unit: str, first: int, uid: int | None
) -> dict[Any, Any]:
    return {
        (app, u): (o, i, c, b)
        for app, u, o, i, c, b in conn.execute(
            "SELECT app, uid, sum(bytes_out), sum(bytes_in), sum(connections), sum(blocked) "
            f"FROM {table} WHERE {unit} >= ? AND (? IS NULL OR uid = ?) GROUP BY app, uid",
            [first, uid, uid],
        )
    }


@pytest.mark.parametrize("period", [Period.WEEK, Period.MONTH])
@pytest.mark.parametrize("uid", [None, 1001])
def test_long_totals_from_days_and_edge_hours_equal_the_sum_of_the_hours(
    month: Path, period: Period, uid: int | None
) -> None:
    conn = sqlite3.connect(month)
    expected = _sums(conn, "traffic_hour", "hour", int((NOW - period.seconds) // 3600), uid)
    got = {
        (a.app, a.uid): (a.bytes_out, a.bytes_in, a.connections, a.blocked)
        for a in read_apps(conn, period, NOW, uid, 100)
    }
    assert got == expected
    assert len(got) == (25 if uid is None else 8)


@pytest.mark.parametrize("period", list(Period))
@pytest.mark.parametrize("uid", [None, 1002])
def test_the_total_series_is_every_apps_sum_and_the_series_are_the_busiest(
    month: Path, period: Period, uid: int | None
) -> None:
    """The total counts the apps that have no series of their own too."""
    conn = sqlite3.connect(month)
    report = read_traffic(conn, period, NOW, uid)
    table, unit, size = period.table
    every = _sums(conn, table, unit, int(report.start // size), uid)
    assert report.total.bytes_out == sum(v[0] for v in every.values())
    assert report.total.bytes_in == sum(v[1] for v in every.values())
    assert sum(p[3] for p in report.total.points) == sum(v[3] for v in every.values())
    shown = [(s.app, s.uid) for s in report.apps]
    busiest = sorted(every, key=lambda k: (-(every[k][0] + every[k][1]), k[0]))
    assert shown == busiest[: len(shown)]
    assert len(shown) == min(20, len(every))
    for s in report.apps:
        assert s.bytes_out == every[(s.app, s.uid)][0], s.app
    one = read_traffic(conn, period, NOW, uid, APPS[1][0])
    mine = [s for s in one.apps if s.app == APPS[1][0]]
    assert one.total.bytes_out == sum(s.bytes_out for s in mine)


def _rollup_migration() -> Callable[[sqlite_utils.Database], None]:
    """The migration that made these tables, wherever the list numbers it."""
    return next(m for m in _MIGRATIONS if "CREATE TABLE traffic_day" in inspect.getsource(m))


def test_the_migration_fills_the_new_rollups_from_the_kept_ones(tmp_path: Path) -> None:
    """A store from before these tables has hours and minutes: the migration sums them."""
    path = tmp_path / "snitch.db"
    _fill(path, 3 * 24)
    db = sqlite_utils.Database(path)
    with db.conn:
        for table in ("traffic_day", "traffic_user_minute", "traffic_user_hour"):
            db.execute(f"DROP TABLE {table}")
        _rollup_migration()(db)
    conn = db.conn
    assert _sums(conn, "traffic_day", "day", 0, None) == _sums(
        conn, "traffic_hour", "hour", 0, None
    )
    for unit in ("minute", "hour"):
        (by_user,) = conn.execute(f"SELECT sum(bytes_out) FROM traffic_user_{unit}").fetchone()
        (by_app,) = conn.execute(f"SELECT sum(bytes_out) FROM traffic_{unit}").fetchone()
        assert by_user == by_app > 0
    db.close()
