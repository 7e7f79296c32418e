"""Reads of the connection log and of the rules' counters for D-Bus callers, off the packet loop.

A query's size and duration are the caller's to choose, and any user may ask (about their own
flows), so none runs on the asyncio loop that reads the queue. Each runs in a worker thread of a
small pool of its own (not asyncio's default one, which hands the log writer its batches) on a
read-only SQLite connection opened for it, returns at most the documented number of rows, and is
interrupted after `time_limit` seconds. A caller has one query running at a time, per bus
connection and per uid, so one user cannot fill the pool. Measured before this, with a root
client connecting 50 times a second: `Log` with a huge limit on a 200k-row log froze every new
connection for 7.5-9 s; `Top` in a loop, 125 ms at the median.

It must never write: the log writer process owns every write to the log (`logwriter`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from snitch_common.errors import Busy, StoreError

__all__ = [
    "MAX_SERIES_APPS",
    "MINUTES_KEPT",
    "QUERY_TIME_LIMIT",
    "AppTotals",
    "LogQuery",
    "Period",
    "QueryGate",
    "Reader",
    "RuleStats",
    "Series",
    "TrafficReport",
    "read_apps",
    "read_connections",
    "read_rule_stats",
    "read_top",
    "read_traffic",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

QUERY_TIME_LIMIT = 5.0  # seconds; far above a capped query (tens of ms at 200k rows)
QUERY_WORKERS = 2
# SQLite calls the progress handler every this many virtual-machine steps (~1 ms here): each call
# takes the GIL from the packet loop for a moment, so not much more often than needed.
_PROGRESS_STEPS = 100_000
MINUTES_KEPT = 2 * 86400.0  # seconds of per-minute traffic rollups; the hourly ones live as the log
MAX_SERIES_APPS = 20  # apps with a series of their own in a traffic report, the busiest first


class Period(enum.Enum):
    """The periods a traffic chart shows: each reads one rollup table in buckets that keep a
    series at most 180 points long, whatever the period."""

    HOUR = "1h"
    DAY = "24h"
    WEEK = "7d"
    MONTH = "30d"

    @property
    def seconds(self) -> int:
        return {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}[self.value]

    @property
    def bucket(self) -> int:
        """Seconds per point: 60 points, 144, 168, 180."""
        return {"1h": 60, "24h": 600, "7d": 3600, "30d": 4 * 3600}[self.value]

    @property
    def table(self) -> tuple[str, str, int]:
        """The rollup table, its time column and that column's unit in seconds."""
        if self.seconds <= MINUTES_KEPT:
            return "traffic_minute", "minute", 60
        return "traffic_hour", "hour", 3600


@dataclass(frozen=True, slots=True)
class Series:
    """One app's traffic over a period: (start of the bucket, bytes out, bytes in, blocked
    attempts) per bucket with any; `uid` -1 for no user, the machine's total has app ``."""

    app: str
    uid: int
    bytes_out: int
    bytes_in: int
    points: list[tuple[float, int, int, int]]


@dataclass(frozen=True, slots=True)
class TrafficReport:
    """`Traffic`'s answer: the machine's total (as the caller may see it) and the busiest apps."""

    period: str
    start: float
    bucket: int
    total: Series
    apps: list[Series]


@dataclass(frozen=True, slots=True)
class AppTotals:
    """`Apps`'s row: an app's IP-layer bytes, attempts and blocked ones in a period."""

    app: str
    uid: int
    bytes_out: int
    bytes_in: int
    connections: int
    blocked: int
    first_seen: float | None


@dataclass(frozen=True, slots=True)
class LogQuery:
    """Filters of `snitchctl log`; `host` is a name or `*.domain`; `before` an id, to page back
    through the log (the newest `limit` rows older than that row)."""

    since: float | None = None
    exe: str | None = None
    action: str | None = None
    host: str | None = None
    uid: int | None = None
    before: int | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class RuleStats:
    """What the store learnt about a stored rule's use (the log writer counts its hits)."""

    created: float
    last_hit: float | None
    hits: int
    origin: str
    note: str = ""
    enabled: bool = True


def read_connections(conn: sqlite3.Connection, query: LogQuery) -> list[dict[str, Any]]:
    """The newest `query.limit` rows that pass the filters, oldest first."""
    where: list[str] = []
    args: list[object] = []
    by_name = query.exe is not None and "/" not in query.exe
    if query.exe is not None and by_name:
        # A name, not a path: every app of that name (`log --app curl`, issue 20).
        where.append("(exe = ? OR substr(exe, -?) = ?)")
        args += [query.exe, len(query.exe) + 1, "/" + query.exe]
    for condition, value in (
        ("time >= ?", query.since),
        ("exe = ?", None if by_name else query.exe),
        ("action = ?", query.action),
        ("uid = ?", query.uid),
        ("id < ?", query.before),
    ):
        if value is not None:
            where.append(condition)
            args.append(value)
    if query.host is not None:
        if query.host.startswith("*."):
            where.append("(host = ? OR host LIKE ?)")
            args += [query.host[2:], "%." + query.host[2:]]
        else:
            where.append("host = ?")
            args.append(query.host)
    sql = "SELECT * FROM connections"
    if where:
        sql += " WHERE " + " AND ".join(where)
    cursor = conn.execute(sql + " ORDER BY id DESC LIMIT ?", [*args, query.limit])
    columns = [d[0] for d in cursor.description]
    rows = [dict(zip(columns, row, strict=True)) for row in cursor]
    rows.reverse()
    return rows


def read_top(
    conn: sqlite3.Connection, since: float | None, uid: int | None, limit: int
) -> list[dict[str, Any]]:
    """Per app: connections, blocked ones, and bytes of the flows that have ended; the `limit`
    apps with the most traffic."""
    mine = "" if uid is None else " AND uid = ?"
    sql = (
        "SELECT coalesce(exe, CASE WHEN uid IS NULL THEN 'kernel' ELSE 'uid ' || uid END) "
        "AS app, count(*) AS connections, sum(action != 'allow') AS blocked, "
        "coalesce(sum(bytes_out), 0) AS bytes_out, coalesce(sum(bytes_in), 0) AS bytes_in, "
        f"max(time) AS last FROM connections WHERE time >= ?{mine} GROUP BY app "
        # By the app's total: `bytes_out + bytes_in` alone names the table's columns, so
        # SQLite sorted by one row's bytes (issue 19).
        "ORDER BY coalesce(sum(bytes_out), 0) + coalesce(sum(bytes_in), 0) DESC, "
        "connections DESC, app LIMIT ?"
    )
    args: list[object] = [since or 0.0]
    if uid is not None:
        args.append(uid)
    cursor = conn.execute(sql, [*args, limit])
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor]


def read_traffic(
    conn: sqlite3.Connection,
    period: Period,
    now: float,
    uid: int | None,
    app: str | None = None,
    most: int = MAX_SERIES_APPS,
) -> TrafficReport:
    """Traffic per bucket of `period` up to `now`: the total, and the `most` apps with the
    most bytes (only `app` when given); `uid` narrows to one user's flows.

    For every app, the total comes from the per-user rollups and only the busiest apps' series
    from the per-app ones: summing every app's minutes or hours to draw the total, then
    dropping all but 20 series, took 795 ms for 24 h and 400 ms for 30 days (200 apps,
    bench/monitorquery.py)."""
    table, unit, size = period.table
    bucket = period.bucket
    # An int: SQLite divides integers as integers, so a slot is a whole bucket; with a float
    # start every minute of a 24-hour chart was a point of its own (1,440, not 144).
    start = int((now - period.seconds) // bucket * bucket)
    slot = f"({unit} * {size} - ?) / {bucket}"
    where, args = _traffic_where(unit, size, start, uid, app)
    wanted: set[tuple[str, int]] | None = None
    if app is None:
        busiest = _busiest(conn, period, now, uid, most)
        wanted = set(busiest)
        names = sorted({name for name, _ in busiest}) or [""]
        where += f" AND app IN ({', '.join('?' * len(names))})"
        args += names
    sql = (
        f"SELECT app, uid, {slot} AS slot, sum(bytes_out), sum(bytes_in), sum(blocked) "
        f"FROM {table} WHERE {where} GROUP BY app, uid, slot"
    )
    by_app: dict[tuple[str, int], list[tuple[float, int, int, int]]] = {}
    total: dict[int, list[int]] = {}
    for name, who, k, out, into, blocked in conn.execute(sql, [start, *args]):
        if wanted is not None and (name, who) not in wanted:
            continue  # another user's run of a busy app's executable
        by_app.setdefault((name, who), []).append((start + k * bucket, out, into, blocked))
        if app is not None:
            _add_point(total, k, out, into, blocked)
    if app is None:
        mine, mine_args = _traffic_where(unit, size, start, uid, None)
        for k, out, into, blocked in conn.execute(
            f"SELECT {slot} AS slot, sum(bytes_out), sum(bytes_in), sum(blocked) "
            f"FROM traffic_user_{unit} WHERE {mine} GROUP BY slot",
            [start, *mine_args],
        ):
            _add_point(total, k, out, into, blocked)
    series = [_series(name, who, points) for (name, who), points in by_app.items()]
    series.sort(key=lambda s: (-(s.bytes_out + s.bytes_in), s.app))
    whole = [(float(start + k * bucket), v[0], v[1], v[2]) for k, v in total.items()]
    return TrafficReport(
        period.value, start, bucket, _series("", -1 if uid is None else uid, whole), series[:most]
    )


def _add_point(total: dict[int, list[int]], slot: int, out: int, into: int, blocked: int) -> None:
    acc = total.setdefault(slot, [0, 0, 0])
    acc[0] += out
    acc[1] += into
    acc[2] += blocked


def _busiest(
    conn: sqlite3.Connection, period: Period, now: float, uid: int | None, most: int
) -> list[tuple[str, int]]:
    """The `most` (app, uid) with the most bytes in `period`, then the most attempts."""
    source, args = _totals_source(period, now, uid)
    sql = (
        f"SELECT app, uid FROM {source} GROUP BY app, uid "
        "ORDER BY sum(bytes_out) + sum(bytes_in) DESC, sum(connections) DESC, app LIMIT ?"
    )
    return [(str(a), int(u)) for a, u in conn.execute(sql, [*args, most])]


def read_apps(
    conn: sqlite3.Connection, period: Period, now: float, uid: int | None, limit: int
) -> list[AppTotals]:
    """Per app in `period`: bytes, attempts, blocked ones and when snitch first saw it; the
    `limit` apps with the most bytes, then the most attempts."""
    source, args = _totals_source(period, now, uid)
    sql = (
        "SELECT app, uid, sum(bytes_out) AS o, sum(bytes_in) AS i, sum(connections) AS c, "
        f"sum(blocked) FROM {source} GROUP BY app, uid "
        "ORDER BY o + i DESC, c DESC, app LIMIT ?"
    )
    rows = conn.execute(sql, [*args, limit]).fetchall()
    names = sorted({row[0] for row in rows})
    seen: dict[str, float] = {}
    for chunk in range(0, len(names), 500):
        part = names[chunk : chunk + 500]
        marks = ", ".join("?" * len(part))
        for exe, first in conn.execute(
            f"SELECT exe, first_seen FROM apps WHERE exe IN ({marks})", part
        ):
            seen[exe] = first
    return [AppTotals(a, u, o, i, c, b, seen.get(a)) for a, u, o, i, c, b in rows]


_COUNTS = "app, uid, bytes_out, bytes_in, connections, blocked"


def _totals_source(period: Period, now: float, uid: int | None) -> tuple[str, list[object]]:
    """The rollup rows whose sums are `period`'s totals: the whole coarse units, and the fine
    ones of the first, partial coarse unit. For 24 h, hours and the minutes of the first hour:
    ~25 rows an app instead of 1,440 (bench/monitorquery.py, 200 apps: Apps 24h took 2.1 s
    reading the minutes alone); for 7 and 30 days, days and the hours of the first day: at most
    53 rows an app instead of 720 (Apps 30d: 368 ms from the hours, issue 19)."""
    start = now - period.seconds
    table, unit, size = period.table
    if period.seconds <= 3600:
        where, args = _traffic_where(unit, size, start, uid, None)
        return f"{table} WHERE {where}", args
    if table == "traffic_minute":
        coarse, fine = ("traffic_hour", "hour", 3600), ("traffic_minute", "minute", 60)
    else:
        coarse, fine = ("traffic_day", "day", 86400), ("traffic_hour", "hour", 3600)
    first = int(-(-start // coarse[2]))  # the first coarse unit wholly inside the period
    whole, whole_args = _traffic_where(coarse[1], coarse[2], first * coarse[2], uid, None)
    edge, edge_args = _traffic_where(fine[1], fine[2], start, uid, None)
    source = (
        f"(SELECT {_COUNTS} FROM {coarse[0]} WHERE {whole} UNION ALL "
        f"SELECT {_COUNTS} FROM {fine[0]} WHERE {edge} AND {fine[1]} < ?)"
    )
    return source, [*whole_args, *edge_args, first * coarse[2] // fine[2]]


def _traffic_where(
    unit: str, size: int, start: float, uid: int | None, app: str | None
) -> tuple[str, list[object]]:
    where: list[str] = [f"{unit} >= ?"]
    args: list[object] = [int(start // size)]
    if uid is not None:
        where.append("uid = ?")
        args.append(uid)
    if app is not None:
        where.append("app = ?")
        args.append(app)
    return " AND ".join(where), args


def _series(app: str, uid: int, points: list[tuple[float, int, int, int]]) -> Series:
    points.sort()
    return Series(app, uid, sum(p[1] for p in points), sum(p[2] for p in points), points)


def read_rule_stats(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, RuleStats]:
    """The counters of these stored rules (a page of them: the caller bounds `ids`)."""
    if not ids:
        return {}
    marks = ", ".join("?" * len(ids))
    cursor = conn.execute(
        f"SELECT id, created, last_hit, hits, origin, note, disabled FROM rules "
        f"WHERE id IN ({marks})",
        list(ids),
    )
    return {
        row[0]: RuleStats(
            row[1] or 0.0, row[2], row[3] or 0, row[4] or "", row[5] or "", not row[6]
        )
        for row in cursor
    }


class QueryGate:
    """At most one query in flight per bus connection and per uid: a second one is refused at
    once rather than queued, so a user looping over many connections holds one worker, not all."""

    def __init__(self) -> None:
        self._names: set[str] = set()
        self._uids: set[int] = set()

    @contextmanager
    def enter(self, name: str, uid: int) -> Iterator[None]:
        if name in self._names or uid in self._uids:
            raise Busy(
                f"query refused: uid {uid} already has a query running in snitchd "
                "(wait for it to finish, then ask again)"
            )
        self._names.add(name)
        self._uids.add(uid)
        try:
            yield
        finally:
            self._names.discard(name)
            self._uids.discard(uid)


class Reader:
    """Runs `read(connection)` in a worker thread on a read-only connection to the store, with
    a time limit; what `read` returns should be ready to send (the loop only marshals it)."""

    def __init__(
        self, path: str, time_limit: float = QUERY_TIME_LIMIT, workers: int = QUERY_WORKERS
    ) -> None:
        self.path = path
        self.time_limit = time_limit
        self._uri = Path(path).resolve().as_uri() + "?mode=ro"
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="snitch-query")

    async def run(self, read: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, read)

    def _run(self, read: Callable[[sqlite3.Connection], T]) -> T:
        deadline = time.monotonic() + self.time_limit
        try:
            # The busy timeout bounds a wait for a lock by the same limit as the query.
            conn = sqlite3.connect(self._uri, uri=True, timeout=self.time_limit)
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot read rule store {self.path}: {exc} (see the daemon log)"
            ) from exc
        try:
            conn.execute("PRAGMA query_only = 1")
            conn.set_progress_handler(lambda: time.monotonic() > deadline, _PROGRESS_STEPS)
            return read(conn)
        except sqlite3.OperationalError as exc:
            if "interrupted" not in str(exc):
                raise StoreError(f"cannot read rule store {self.path}: {exc}") from exc
            raise Busy(
                f"query took too long: over {self.time_limit:g} s (narrow it with --since/--app)"
            ) from None
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read rule store {self.path}: {exc}") from exc
        finally:
            conn.close()

    def close(self) -> None:
        """Queries not yet started are dropped; running ones end by their time limit."""
        self._executor.shutdown(wait=False, cancel_futures=True)
