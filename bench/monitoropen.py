"""How long the Network Monitor takes to open against a full store (issue 19: "opens in under
1 s with 1,000,000 log rows and 30 days of rollups"): a real snitchd (in a network namespace
of its own, on a private bus) serving bench/monitorquery.py's store, and the window in a
fresh process (bench/monitorload.py) per range, timed from the interpreter's start and from
the window's creation to the first totals it shows. Prints figures, asserts nothing:

    sudo .venv/bin/python -m bench.monitoropen [--apps 200] [--days 7] [--log-rows 1000000]
"""

import argparse
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.monitorload import Monitor
from bench.monitorquery import build
from tests.support.lab import Bus, run, stop_process

VENV_BIN = Path(sys.executable).parent
RANGES = ("10m", "24h", "30d")
TRIES = 3


def open_once(env, shown):
    monitor = Monitor(env, shown)
    try:
        return monitor.ready()
    finally:
        monitor.finish()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--apps", type=int, default=200)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--hour-days", type=int, default=30)
    ap.add_argument("--log-rows", type=int, default=1_000_000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("monitoropen: needs root (a network namespace for snitchd)")
    tmp = Path(tempfile.mkdtemp(prefix="snitch-monitoropen-"))
    ns = f"snb-mon-{secrets.token_hex(3)}"
    bus = daemon = None
    try:
        db = tmp / "snitch.db"
        build(db, args.apps, args.days, args.hour_days, args.log_rows, time.time())
        print(
            f"store: {args.apps} apps, {args.days} d of minutes, {args.hour_days} d of hours, "
            f"{args.log_rows:,} log rows ({db.stat().st_size / 1e6:.0f} MB)"
        )
        conf = tmp / "snitchd.toml"
        conf.write_text(
            f'database = "{db}"\ndefault_action = "allow"\nqueue = 4242\n'
            'attribution = "proc"\nlog_level = "info"\n'
        )
        run("ip", "netns", "add", ns)
        bus = Bus()
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus.address}
        notify_path = tmp / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.settimeout(120)
        with open(tmp / "snitchd.log", "w") as err:
            daemon = subprocess.Popen(
                ["ip", "netns", "exec", ns, str(VENV_BIN / "snitchd"), "--config", str(conf)],
                env=env | {"NOTIFY_SOCKET": str(notify_path)},
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        try:
            while "READY=1" not in notify.recv(4096).decode():
                pass
        except TimeoutError:
            raise SystemExit(
                "snitchd did not start:\n" + (tmp / "snitchd.log").read_text()[-3000:]
            ) from None
        finally:
            notify.close()
        print(f"{'range':6s} {'from start':>11s} {'from window':>12s}   (median of {TRIES})")
        for shown in RANGES:
            times = [open_once(env, shown) for _ in range(TRIES)]
            start = statistics.median(t[0] for t in times)
            window = statistics.median(t[1] for t in times)
            print(f"{shown:6s} {start:9.2f} s {window:10.2f} s")
        print(
            "(from start: interpreter, Qt and the window included; from window: its creation "
            "to the first totals shown, through D-Bus)"
        )
    finally:
        if daemon is not None:
            stop_process(daemon)
        if bus is not None:
            bus.stop()
        run("ip", "netns", "del", ns, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
