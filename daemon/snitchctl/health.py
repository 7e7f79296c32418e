"""snitchctl's view of snitchd itself: status (and what the kernel does while snitchd is
down), metrics, and the database doctor.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from snitch_common.client import Client
from snitch_common.errors import DaemonUnreachable
from snitch_common.metrics import render_metrics
from snitchctl.colour import Colour, painter_for
from snitchctl.dates import local_time
from snitchctl.output import out
from snitchctl.status import offline_status, summary, verbose_counters

__all__ = [
    "add_doctor_parser",
    "add_health_parsers",
    "run_doctor",
    "show_metrics",
    "show_status",
    "status_offline",
]


def add_health_parsers(sub: Any) -> None:
    """status, metrics (doctor: `add_doctor_parser`)."""
    st = sub.add_parser(
        "status",
        help="is snitchd running, and what is it doing",
        description="Is snitchd running, and what is it doing: a short summary, or every "
        "counter with --verbose (--json always has them all). When snitchd does not answer, "
        "say what the kernel does meanwhile with new connections (fail open or closed), from "
        "the installed config and, as root, the kernel's rules; the exit status is then 3.",
    )
    st.add_argument("-v", "--verbose", action="store_true", help="every counter as well")
    st.add_argument("--config", metavar="PATH", help="snitchd's config, read when snitchd is down")
    sub.add_parser(
        "metrics",
        help="snitchd's counters in Prometheus text format",
        description="Print snitchd's counters and gauges in the Prometheus text exposition "
        "format: the same text snitchd writes to metrics_file for node_exporter's textfile "
        "collector when that is set.",
    )


def add_doctor_parser(sub: Any) -> None:
    """doctor."""
    doc = sub.add_parser(
        "doctor",
        help="check snitch's database (as root; works while snitchd is stopped)",
        description="Check the database: PRAGMA quick_check and integrity_check, the schema "
        "version, and that every rule parses; say what to do. Exit 1 if something is wrong.",
    )
    doc.add_argument("--config", metavar="PATH", help="snitchd's config (for its database)")
    doc.add_argument("--database", metavar="PATH", help="check this database instead")


async def show_status(client: Client, args: argparse.Namespace) -> int:
    status = await client.status()

    def text() -> str:
        head = summary(status, painter_for(sys.stdout))
        extra = []
        if status.get("mode"):  # issue 17
            line = f"mode: {status['mode']}"
            if status.get("mode_until"):
                line += f" until {local_time(status['mode_until'])}"
            if status.get("profile"):
                line += f"   profile: {status['profile']}"
            extra.append(line)
        routing = status.get("routing") or []
        extra.append("routing:" + "".join(f"\n  {line}" for line in routing) if routing else
                     "routing: no agent of yours")  # fmt: skip
        head = "\n".join([head, *extra])
        return f"{head}\ncounters:\n{verbose_counters(status)}" if args.verbose else head

    out(args, status, text)
    return 0


def status_offline(args: argparse.Namespace) -> int:
    """snitchd does not answer: say so, and what the kernel does meanwhile. Exit 3."""
    off = offline_status(args.config)
    if args.json:
        record = {
            "running": False,
            "fail_mode": off.fail_mode,
            "config": off.config,
            "queue_rule": off.queue_rule.value,
            "filtered": off.filtered,
            "meaning": off.meaning,
        }
        print(json.dumps(record, indent=2, sort_keys=True))
    else:
        paint = painter_for(sys.stdout)
        print(f"snitchd: {paint('not running', Colour.BAD)}: {off.meaning}")
        print("start it with: systemctl start snitchd (or run: snitchd)")
    return DaemonUnreachable.exit_status


async def show_metrics(client: Client) -> int:
    print(render_metrics(await client.status()), end="")
    return 0


def run_doctor(args: argparse.Namespace) -> int:
    """The checks are snitchd's (it owns the schema): run in a process of their own, so that
    this CLI never loads SQLite or the daemon."""
    argv = [sys.executable, "-m", "snitchd.doctor"]
    argv += ["--config", args.config] if args.config else []
    argv += ["--database", args.database] if args.database else []
    argv += ["--json"] if args.json else []
    return subprocess.run(argv, check=False).returncode
