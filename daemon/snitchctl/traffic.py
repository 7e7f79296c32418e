"""snitchctl's reads of what happened: the connection log, per-app traffic, the live monitor."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from dbus_fast import Variant

from snitch_common.bus import disconnected
from snitch_common.client import Client
from snitch_common.errors import RuleError, SnitchError
from snitchctl.colour import Colour, painter_for
from snitchctl.dates import local_time
from snitchctl.output import out

__all__ = [
    "add_traffic_parsers",
    "log_line",
    "show_log",
    "show_monitor",
    "show_top",
    "since",
    "size",
]


def add_traffic_parsers(sub: Any) -> None:
    """log, top, monitor."""
    lg = sub.add_parser("log", help="the connection log: every decision")
    lg.add_argument("--app", metavar="NAME|PATH", help="an app by its path, or every app of a name")
    lg.add_argument("--host", metavar="NAME|*.DOMAIN", help="only flows to this host or domain")
    lg.add_argument("--verdict", choices=("allow", "deny", "reject"))
    lg.add_argument("--since", metavar="N[smhd]", help="e.g. 10m, 1h, 2d")
    lg.add_argument("--limit", type=_count, default=50, metavar="N", help="at most N rows")

    top = sub.add_parser("top", help="per-app connections and bytes, most traffic first")
    top.add_argument("--since", metavar="N[smhd]", help="e.g. 10m, 1h, 2d (default: all)")
    top.add_argument(
        "--live",
        action="store_true",
        help="full screen, live rates per app (keys: s sort, / filter, enter hosts, q quit)",
    )
    sub.add_parser("monitor", help="live: every decision as it happens (--json: JSON lines)")


# ASCII digits: str.isdigit() is true for "²", which int() refuses. Ten digits of days are
# more than 27 million years; more would overflow the float of a point in time.
_SINCE = re.compile(r"([0-9]{1,10})([smhd])")
_MAX_INT64 = 2**63 - 1  # D-Bus "x": a larger --limit failed inside the marshalling


def _count(text: str) -> int:
    """An argparse type: a count that goes over D-Bus as an int64."""
    if not re.fullmatch(r"[0-9]{1,19}", text) or int(text) > _MAX_INT64:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: use a number, 0 or more")
    return int(text)


def since(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    m = _SINCE.fullmatch(text)
    if m is None:
        raise RuleError(f"invalid --since {text!r}: use N followed by s, m, h or d (e.g. 1h)")
    return time.time() - int(m.group(1)) * units[m.group(2)]


async def show_log(client: Client, args: argparse.Namespace) -> int:
    query: dict[str, Variant] = {"limit": Variant("x", args.limit)}
    if args.app:
        query["exe"] = Variant("s", args.app)
    if args.verdict:
        query["action"] = Variant("s", args.verdict)
    if args.host:
        query["host"] = Variant("s", args.host)
    if args.since:
        query["since"] = Variant("d", since(args.since))
    rows = await client.log(query)
    if args.app and "/" not in args.app:  # by name: say which apps of that name answered
        found = sorted({str(r["exe"]) for r in rows if r.get("exe")})
        if len(found) > 1:
            print(f"note: --app {args.app} matches {len(found)} apps: {', '.join(found)} "
                  "(give a path for one)", file=sys.stderr)  # fmt: skip

    paint = painter_for(sys.stdout)

    def text() -> str:
        return "\n".join(log_line(r, paint.verdict) for r in rows) or "(no connections logged)"

    out(args, rows, text)
    return 0


def log_line(r: dict[str, Any], verdict: Callable[[str, int], str] | None = None) -> str:
    """One decision as a person reads it: when (local time), verdict, who, where, why."""
    when = local_time(r["time"])
    who = r.get("exe") or (f"uid {r['uid']}" if "uid" in r else "kernel")
    port = f":{r['dport']}" if r["proto"] in ("tcp", "udp") else ""
    where = f"{r['host']} ({r['dst']}{port})" if r.get("host") else f"{r['dst']}{port}"
    why = f"rule {r['rule_id']}" if "rule_id" in r else r["reason"]
    traffic = ""
    if "bytes_out" in r:
        traffic = f" {size(r['bytes_out'])} out, {size(r['bytes_in'])} in"
    found = f", {r['source']}" if r.get("source") else ""  # how the owner was found
    retries = f" (retried {r['retries']}x)" if r.get("retries") else ""  # issue 15
    action = verdict(r["action"], 6) if verdict else r["action"].ljust(6)
    return (
        f"{when} {action} {who} (pid {r.get('pid', '-')}{found}) -> {r['proto']} {where} "
        f"[{why}]{traffic}{retries}"
    )


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


async def show_top(client: Client, args: argparse.Namespace) -> int:
    query = {"since": Variant("d", since(args.since) if args.since else 0.0)}
    # By the app's total bytes (snitchd sorts so too; this keeps the table's promise).
    rows = sorted(await client.top(query), key=lambda r: -(r["bytes_out"] + r["bytes_in"]))

    def text() -> str:
        head = f"{'SENT':>10} {'RECEIVED':>10} {'CONNS':>6} {'BLOCKED':>7}  APP"
        head = painter_for(sys.stdout)(head, Colour.BOLD)
        lines = [
            f"{size(r['bytes_out']):>10} {size(r['bytes_in']):>10} {r['connections']:>6} "
            f"{r['blocked']:>7}  {r['app']}"
            for r in rows
        ]
        return "\n".join([head, *lines])

    out(args, rows, text)
    return 0


async def show_monitor(client: Client, args: argparse.Namespace) -> int:
    """Follows snitchd's decisions, through its restarts: a subscription lives in the snitchd
    that took it, so a new one on the bus is asked again (as `journalctl -f` follows a
    rotation); the screen says when snitchd left and came back. Ends when the bus does."""
    paint = painter_for(sys.stdout)

    def show(row: dict[str, Any]) -> None:
        line = json.dumps(row, sort_keys=True) if args.json else log_line(row, paint.verdict)
        print(line, flush=True)

    def say(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr, flush=True)

    owners: asyncio.Queue[str] = asyncio.Queue()
    await client.watch_daemon(owners.put_nowait)
    await client.monitor(show)
    say("monitoring new connections (Ctrl-C to stop)")
    gone = disconnected(client.bus)
    while True:
        owner = asyncio.ensure_future(owners.get())
        waiters: set[asyncio.Future[Any]] = {owner, gone}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not owner.done():
            owner.cancel()
            say(f"lost the system bus: {gone.exception() or 'closed'}")
            return 1
        if not owner.result():
            say("snitchd stopped: waiting for it")
            continue
        try:
            await client.monitor(show)
        except SnitchError as exc:  # it stopped again at once: its successor comes next
            say(f"snitchd restarted, but: {exc.message}")
            continue
        say("snitchd restarted: monitoring new connections again")
