"""A traffic series has one point per bucket of its period (issue 19: "at most 180 points a
series"), however many minutes of rollups the bucket holds.

Regression: the slot of a minute was computed as `(minute * 60 - start) / 600` with `start` a
float, so SQLite divided as floats and every minute of a 24-hour chart became a point of its
own: 1,440 points a series, not 144 (bench/monitorquery.py: a 1 MB answer, 2 s, for 20 apps).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from snitchd.queries import Period, read_apps, read_traffic
from snitchd.store import Store, TrafficMinute

NOW = 1_700_000_123.4  # not on a bucket boundary, as time.time() never is


def test_every_period_has_one_point_per_bucket_with_a_full_day_of_minutes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "snitch.db"
    store = Store(path)
    try:
        last = int(NOW // 60)
        store.add_traffic(
            [TrafficMinute(last - i, "/usr/bin/busy", 1000, 100, 10, 1, 0) for i in range(1440)]
        )
    finally:
        store.close()
    conn = sqlite3.connect(path)
    for period in Period:
        report = read_traffic(conn, period, NOW, None)
        series = report.apps[0]
        buckets = {p[0] for p in series.points}
        assert len(series.points) == len(buckets), f"{period}: one point per bucket"
        assert len(series.points) <= period.seconds // period.bucket + 1, period
        assert all(t % period.bucket == 0 for t in buckets), f"{period}: bucket starts"
        assert series.bytes_out == sum(p[1] for p in series.points)
    day = read_traffic(conn, Period.DAY, NOW, None).apps[0]
    assert len(day.points) in (144, 145)
    assert day.bytes_out == 1440 * 100


def test_a_days_totals_from_hours_and_edge_minutes_equal_the_sum_of_its_minutes(
    tmp_path: Path,
) -> None:
    """Apps 24h sums whole hours and the minutes of the first partial hour: exactly what the
    minutes of the last 24 hours add up to, no minute counted twice or left out."""
    path = tmp_path / "snitch.db"
    store = Store(path)
    try:
        last = int(NOW // 60)
        store.add_traffic(
            [
                TrafficMinute(last - i, app, uid, i + 1, 2 * i, 1, i % 2)
                for i in range(1440 + 180)  # 27 hours: the edges matter
                for app, uid in (("/usr/bin/a", 1000), ("/usr/bin/b", 2000))
            ]
        )
    finally:
        store.close()
    conn = sqlite3.connect(path)
    first = int((NOW - 86400) // 60)
    for uid in (None, 2000):
        expected = {
            (app, u): (o, i, c, b)
            for app, u, o, i, c, b in conn.execute(
                "SELECT app, uid, sum(bytes_out), sum(bytes_in), sum(connections), "
                "sum(blocked) FROM traffic_minute WHERE minute >= ? AND (? IS NULL OR uid = ?) "
                "GROUP BY app, uid",
                [first, uid, uid],
            )
        }
        got = {
            (a.app, a.uid): (a.bytes_out, a.bytes_in, a.connections, a.blocked)
            for a in read_apps(conn, Period.DAY, NOW, uid, 10)
        }
        assert got == expected
