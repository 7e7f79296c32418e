"""What the Network Monitor's queries cost on a big store (issue 19): `Apps`, `Traffic` and an
app's `Log` rows, as snitchd runs them (a `queries.Reader` worker: a fresh read-only
connection per query, then the JSON it sends), on a store with

- per-minute rollups for 200 apps over 7 days (2,016,000 rows; snitchd keeps two days, so
  this is more than a real store holds),
- per-hour rollups for 200 apps over 30 days (144,000 rows), and the day and per-user rollups
  of both (as `Store.add_traffic` keeps them),
- 1,000,000 connection log rows (5,000 per app, over 30 days).

Every app moves something every minute: the worst case for the scans. Prints figures, asserts
nothing:

    .venv/bin/python -m bench.monitorquery [--apps 200] [--days 7] [--log-rows 1000000]

The store is built in a temp dir (about 250 MB at the defaults, ~1 min) and removed after.
"""

import argparse
import dataclasses
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from snitch_common.bus import MAX_TOP_APPS
from snitchd.queries import (
    LogQuery,
    Period,
    Reader,
    read_apps,
    read_connections,
    read_traffic,
)
from snitchd.store import Store

REPEAT = 7


def build(path: Path, apps: int, days: int, hour_days: int, log_rows: int, now: float) -> None:
    store = Store(path)
    conn = store.db.conn
    rng = random.Random(19)
    names = [f"/usr/bin/app{i:03d}" for i in range(apps)]
    uids = [1000 + (i % 4) for i in range(apps)]  # four users; 1000 asks as a non-admin
    first_minute = int((now - days * 86400) // 60)
    last_minute = int(now // 60)
    with conn:
        for minute in range(first_minute, last_minute + 1):
            conn.executemany(
                "INSERT INTO traffic_minute VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (minute, a, u, rng.randint(0, 10**6), rng.randint(0, 10**7), 3, minute % 2)
                    for a, u in zip(names, uids, strict=True)
                ],
            )
        first_hour = int((now - hour_days * 86400) // 3600)
        for hour in range(first_hour, int(now // 3600) + 1):
            conn.executemany(
                "INSERT INTO traffic_hour VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (hour, a, u, rng.randint(0, 6 * 10**7), rng.randint(0, 6 * 10**8), 180, 30)
                    for a, u in zip(names, uids, strict=True)
                ],
            )
        _summarise(conn)
        conn.executemany(
            "INSERT INTO apps (exe, first_seen, sha256) VALUES (?, ?, ?)",
            [(a, now - hour_days * 86400, "") for a in names],
        )
        batch = []
        start = now - hour_days * 86400
        step = (now - start) / max(1, log_rows)
        for k in range(log_rows):
            i = k % apps
            batch.append(
                (
                    start + k * step,
                    4000 + i,
                    names[i],
                    uids[i],
                    "tcp",
                    "192.0.2.1",
                    40000 + k % 20000,
                    f"203.0.113.{k % 250}",
                    443,
                    "allow" if k % 10 else "deny",
                    rng.randint(0, 10**6),
                    rng.randint(0, 10**7),
                )
            )
            if len(batch) == 50_000:
                _log(conn, batch)
                batch = []
        _log(conn, batch)
    conn.execute("ANALYZE")
    store.db.conn.close()


def _summarise(conn) -> None:
    """The day and per-user rollups of the rows written above, as the log writer would have
    kept them (`Store.add_traffic`)."""
    sums = "sum(bytes_out), sum(bytes_in), sum(connections), sum(blocked)"
    conn.execute(
        f"INSERT INTO traffic_day SELECT hour / 24, app, uid, {sums} FROM traffic_hour "
        "GROUP BY hour / 24, app, uid"
    )
    for unit in ("minute", "hour"):
        conn.execute(
            f"INSERT INTO traffic_user_{unit} SELECT {unit}, uid, {sums} FROM traffic_{unit} "
            f"GROUP BY {unit}, uid"
        )


def _log(conn, rows) -> None:
    conn.executemany(
        "INSERT INTO connections (time, pid, exe, uid, proto, src, sport, dst, dport, action, "
        "bytes_out, bytes_in) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


def timed(reader: Reader, read) -> tuple[float, float, int]:
    """Median and worst ms of REPEAT runs, and the answer's JSON size."""
    samples = []
    size = 0
    for _ in range(REPEAT):
        t = time.perf_counter()
        size = len(reader._run(read))
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples), max(samples), size


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--apps", type=int, default=200)
    ap.add_argument("--days", type=int, default=7, help="days of per-minute rollups")
    ap.add_argument("--hour-days", type=int, default=30, help="days of per-hour rollups")
    ap.add_argument("--log-rows", type=int, default=1_000_000)
    args = ap.parse_args()
    now = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="snitch-monitorquery-"))
    try:
        path = tmp / "snitch.db"
        t = time.perf_counter()
        build(path, args.apps, args.days, args.hour_days, args.log_rows, now)
        size_mb = path.stat().st_size / 1e6
        print(
            f"store: {args.apps} apps, {args.days} d of minute rollups, {args.hour_days} d of "
            f"hour rollups, {args.log_rows:,} log rows: {size_mb:.0f} MB, built in "
            f"{time.perf_counter() - t:.0f} s"
        )
        reader = Reader(str(path))
        app = "/usr/bin/app004"  # a uid-1000 app: the non-admin Log asks for its own

        def apps(period, uid):
            return lambda c: json.dumps(
                [dataclasses.asdict(a) for a in read_apps(c, period, now, uid, MAX_TOP_APPS)]
            )

        def traffic(period, uid, one):
            return lambda c: json.dumps(dataclasses.asdict(read_traffic(c, period, now, uid, one)))

        def log(uid):
            return lambda c: json.dumps(read_connections(c, LogQuery(exe=app, uid=uid, limit=1000)))

        print(f"{'query':44s} {'median':>9s} {'worst':>9s} {'answer':>9s}")
        rows = []
        for period in Period:
            for who, uid in (("admin", None), ("uid 1000", 1000)):
                rows.append((f"Apps {period.value} ({who})", apps(period, uid)))
            rows.append((f"Traffic {period.value} all apps (admin)", traffic(period, None, None)))
            rows.append((f"Traffic {period.value} one app (admin)", traffic(period, None, app)))
        rows.append(("Log: one app's newest 1000 rows (admin)", log(None)))
        rows.append(("Log: one app's newest 1000 rows (uid 1000)", log(1000)))
        for label, read in rows:
            med, worst, size = timed(reader, read)
            print(f"{label:44s} {med:7.1f}ms {worst:7.1f}ms {size / 1000:7.1f}kB")
        print(
            f"(each: a fresh read-only connection, the query, the JSON; median of {REPEAT}; "
            "snitchd adds D-Bus marshalling)"
        )
    finally:
        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
