"""What the Network Monitor shows, as records: parsed once from snitchd's answers, no Qt.

snitchd sends `Apps`, `Traffic`, `Log` and the `Rates` signal as JSON text (bounded by the
daemon: at most 1,000 apps, 180 points a series, 200 apps a rates window). This module turns
them into frozen records and keeps the one piece of state the window needs beyond them: the
last ten minutes of rates, per second, for the live chart (a bounded ring per app).
"""

from __future__ import annotations

import enum
import os
import pwd
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LIVE_SECONDS",
    "SPARK_SECONDS",
    "AppKey",
    "AppTraffic",
    "HostTraffic",
    "LiveHistory",
    "Point",
    "Range",
    "RateFrame",
    "Spark",
    "TrafficChart",
    "app_totals",
    "group_hosts",
    "group_hosts_by_app",
    "human",
    "log_app_key",
    "parse_chart",
    "parse_rates",
    "user_name",
]

LIVE_SECONDS = 600  # the live chart: the last ten minutes at 1 s
SPARK_SECONDS = 60  # an app's sparkline: its last minute at 1 s
_MAX_LIVE_APPS = 500  # apps with a live ring; the least recently active go first


# An app's last minute of rates, (up, down) bytes per second, one pair a second.
Spark = tuple[tuple[float, float], ...]


class Range(enum.Enum):
    """The time ranges the window offers: the live ten minutes (from the `Rates` signal) or a
    period of snitchd's rollups (`Traffic`/`Apps`)."""

    LIVE = "10m"
    HOUR = "1h"
    DAY = "24h"
    WEEK = "7d"
    MONTH = "30d"

    @property
    def label(self) -> str:
        return {
            "10m": "Live (10 min)",
            "1h": "1 hour",
            "24h": "24 hours",
            "7d": "7 days",
            "30d": "30 days",
        }[self.value]

    @property
    def refresh_seconds(self) -> float:
        """How often the totals and chart are read again: a longer range changes less in a
        second and costs snitchd more to sum (bench/monitorquery.py)."""
        return {"10m": 3.0, "1h": 3.0, "24h": 15.0, "7d": 60.0, "30d": 60.0}[self.value]

    @property
    def period(self) -> str:
        """The rollup period whose totals the app list shows (live: the last hour's)."""
        return "1h" if self is Range.LIVE else self.value


@dataclass(frozen=True, slots=True)
class AppKey:
    """An app as snitchd counts it: the executable (or `kernel`, `uid N`) and its user."""

    app: str
    uid: int


@dataclass(frozen=True, slots=True)
class AppTraffic:
    """One row of the app list: totals of the period and, when it moves, its live rates."""

    key: AppKey
    bytes_out: int = 0
    bytes_in: int = 0
    connections: int = 0
    blocked: int = 0
    first_seen: float | None = None
    rate_out: float = 0.0
    rate_in: float = 0.0
    flows: int = 0

    @property
    def name(self) -> str:
        return os.path.basename(self.key.app) or self.key.app


@dataclass(frozen=True, slots=True)
class Point:
    time: float
    bytes_out: float
    bytes_in: float
    blocked: int


@dataclass(frozen=True, slots=True)
class TrafficChart:
    """A chart's series: bytes (or bytes per second, live) per bucket of `bucket` seconds.

    A bucket with no point moved nothing, from `known_from` on; before it (a live window
    opened a moment ago) nothing is known and nothing is drawn."""

    title: str
    start: float
    end: float
    bucket: int
    points: tuple[Point, ...]
    known_from: float = 0.0


@dataclass(frozen=True, slots=True)
class RateFrame:
    """One `Rates` signal: each moving app's bytes per second over the last window."""

    time: float
    apps: tuple[AppTraffic, ...]


@dataclass(frozen=True, slots=True)
class HostTraffic:
    """Where an app went: one destination (name or address, port, protocol) of its log rows.

    Bytes come with a row when conntrack forgets its flow; `open` counts the allowed attempts
    whose bytes are not known yet (still open, or ended less than a TCP TIME_WAIT ago)."""

    host: str
    address: str
    port: int | None
    proto: str
    connections: int
    blocked: int
    bytes_out: int
    bytes_in: int
    last: float
    last_action: str
    open: int = 0
    first: float = 0.0  # its oldest attempt among the rows read
    actions: frozenset[str] = frozenset()  # the verdicts its attempts got: allow, deny, reject
    last_reason: str = ""  # why its newest attempt got its verdict: `rule 3`, `default: …`


def human(n: float, per_second: bool = False) -> str:
    unit = "/s" if per_second else ""
    for size in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or size == "TB":
            return f"{n:.0f} {size}{unit}" if size == "B" else f"{n:.1f} {size}{unit}"
        n /= 1000
    return ""


def user_name(uid: int) -> str:
    if uid < 0:
        return "kernel"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def app_totals(rows: Iterable[Mapping[str, Any]]) -> list[AppTraffic]:
    """`Apps`'s answer as records."""
    return [
        AppTraffic(
            AppKey(str(r["app"]), int(r["uid"])),
            bytes_out=int(r["bytes_out"] or 0),
            bytes_in=int(r["bytes_in"] or 0),
            connections=int(r["connections"] or 0),
            blocked=int(r["blocked"] or 0),
            first_seen=r.get("first_seen"),
        )
        for r in rows
    ]


def parse_rates(signal: Mapping[str, Any]) -> RateFrame:
    apps = tuple(
        AppTraffic(
            AppKey(str(a["app"]), int(a["uid"])),
            rate_out=float(a["rate_out"]),
            rate_in=float(a["rate_in"]),
            flows=int(a["flows"]),
            blocked=int(a.get("blocked", 0)),
            connections=int(a.get("attempts", 0)),
        )
        for a in signal["apps"]
    )
    return RateFrame(float(signal["time"]), apps)


def parse_chart(report: Mapping[str, Any], app: AppKey | None, now: float) -> TrafficChart:
    """`Traffic`'s answer as one chart: the app's series when `app` is given (empty when it
    moved nothing in the period; an admin gets one series per user of an executable), else
    the total."""
    series: Mapping[str, Any] = report["total"]
    if app is not None:
        mine = (s for s in report["apps"] if (s["app"], s["uid"]) == (app.app, app.uid))
        series = next(mine, {"points": []})
    points = tuple(Point(float(t), float(o), float(i), int(b)) for t, o, i, b in series["points"])
    title = os.path.basename(app.app) if app else "all apps"
    return TrafficChart(title, float(report["start"]), now, int(report["bucket"]), points)


def group_hosts(rows: Iterable[Mapping[str, Any]]) -> list[HostTraffic]:
    """An app's log rows by destination, the most bytes first (then the most attempts)."""
    acc: dict[tuple[str, str, int | None, str], list[Any]] = {}
    for row in rows:
        address = str(row.get("dst") or "")
        key = (str(row.get("host") or ""), address, row.get("dport"), str(row.get("proto", "")))
        entry = acc.setdefault(key, [0, 0, 0, 0, 0.0, "", 0, float("inf"), set(), ""])
        action = str(row.get("action", ""))
        allowed = action == "allow"
        when = float(row.get("time", 0.0))
        entry[0] += 1
        entry[1] += not allowed
        entry[2] += row.get("bytes_out") or 0
        entry[3] += row.get("bytes_in") or 0
        if when >= entry[4]:
            entry[4], entry[5], entry[9] = when, action, _reason(row)
        entry[6] += allowed and row.get("bytes_out") is None and row.get("bytes_in") is None
        entry[7] = min(entry[7], when)
        entry[8].add(action)
    hosts = [
        HostTraffic(
            host or address,
            address,
            port,
            proto,
            connections=v[0],
            blocked=v[1],
            bytes_out=v[2],
            bytes_in=v[3],
            last=v[4],
            last_action=v[5],
            open=v[6],
            first=v[7],
            actions=frozenset(v[8]),
            last_reason=v[9],
        )
        for (host, address, port, proto), v in acc.items()
    ]
    hosts.sort(key=lambda h: (-(h.bytes_out + h.bytes_in), -h.connections, h.host))
    return hosts


def _reason(row: Mapping[str, Any]) -> str:
    rule = row.get("rule_id")
    return f"rule {rule}" if rule is not None else str(row.get("reason") or "")


def group_hosts_by_app(rows: Iterable[Mapping[str, Any]]) -> dict[AppKey, list[HostTraffic]]:
    """Log rows of many apps, each app's by destination (`group_hosts`); an app is keyed as
    `Apps` keys it: its executable, else `kernel` or `uid N`, and its uid (-1 for none)."""
    by_app: dict[AppKey, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_app.setdefault(log_app_key(row), []).append(row)
    return {key: group_hosts(mine) for key, mine in by_app.items()}


def log_app_key(row: Mapping[str, Any]) -> AppKey:
    """The app of a log row, as the rollups name it (`kernel`, `uid N` without a path)."""
    uid = row.get("uid")
    exe = row.get("exe")
    if exe:
        return AppKey(str(exe), -1 if uid is None else int(uid))
    if uid is None:
        return AppKey("kernel", -1)
    return AppKey(f"uid {uid}", int(uid))


class LiveHistory:
    """The last LIVE_SECONDS of rates, per app and in total, one point a second.

    Rates windows are about a second long; each becomes one point at its time (whole
    second). Bounded: LIVE_SECONDS points per ring, at most _MAX_LIVE_APPS rings."""

    def __init__(self) -> None:
        self.total: deque[Point] = deque(maxlen=LIVE_SECONDS)
        self.apps: dict[AppKey, deque[Point]] = {}
        self.last = 0.0

    def add(self, frame: RateFrame) -> None:
        second = float(int(frame.time))
        self.last = second
        out = sum(a.rate_out for a in frame.apps)
        into = sum(a.rate_in for a in frame.apps)
        blocked = sum(a.blocked for a in frame.apps)
        self.total.append(Point(second, out, into, blocked))
        for a in frame.apps:
            ring = self.apps.pop(a.key, None) or deque(maxlen=LIVE_SECONDS)
            ring.append(Point(second, a.rate_out, a.rate_in, a.blocked))
            self.apps[a.key] = ring  # re-inserted: the dict's order is least recent first
        while len(self.apps) > _MAX_LIVE_APPS:
            del self.apps[next(iter(self.apps))]

    def spark(self, key: AppKey, now: float, seconds: int = SPARK_SECONDS) -> Spark:
        """The app's rates up and down in each of the last `seconds` seconds up to `now`,
        oldest first (0 for a second it did not move), for its sparkline."""
        ring = self.apps.get(key)
        if not ring:
            return ()
        first = float(int(now)) - seconds + 1
        rates = {p.time: (p.bytes_out, p.bytes_in) for p in ring if p.time >= first}
        if not rates:
            return ()
        return tuple(rates.get(first + i, (0.0, 0.0)) for i in range(seconds))

    def chart(self, key: AppKey | None, now: float) -> TrafficChart:
        ring = self.total if key is None else self.apps.get(key, deque())
        # A window open for less than ten minutes shows what it has seen (at least a minute),
        # so the first minutes are not squeezed into the right edge.
        first = self.total[0].time if self.total else now
        start = max(now - LIVE_SECONDS, min(first, now - 60))
        points = tuple(p for p in ring if p.time >= start)
        title = "all apps" if key is None else os.path.basename(key.app)
        return TrafficChart(title, start, now, 1, points, known_from=first)
