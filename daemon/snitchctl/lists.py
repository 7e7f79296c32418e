"""`snitchctl lists ...`: block lists and allow lists that rules name as `to=list:NAME`.

snitchd keeps the registry and the parsed copies; `snitch-lists` (an unprivileged updater run
by systemd) downloads them, because snitchd itself never speaks IP.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from snitch_common.client import Client
from snitch_common.errors import ListError

__all__ = ["add_lists_parser", "run_lists"]


def add_lists_parser(sub: Any) -> None:
    """The `lists` subcommand and its verbs."""
    lists = sub.add_parser(
        "lists",
        help="block lists: add, update, show, remove (rules name them: deny to=list:NAME)",
        description="Lists of hosts, domains or networks that rules name as to=list:NAME. "
        "Without a verb: every list, one a line.",
    )
    verbs = lists.add_subparsers(dest="lists_verb", metavar="VERB")
    add = verbs.add_parser("add", help="register a list (then: snitchctl lists update NAME)")
    add.add_argument("name", help="lowercase letters, digits, - and _ (as in to=list:NAME)")
    add.add_argument(
        "source",
        help="an https:// URL or the absolute path of a local file (plain http:// is refused: "
        "anyone on the path could rewrite the list)",
    )
    add.add_argument(
        "--format",
        choices=("hosts", "domains", "ips"),
        default="hosts",
        help="hosts: '0.0.0.0 name' lines; domains: one name a line ('*.' optional); "
        "ips: one address or CIDR a line (FireHOL). Default: hosts",
    )
    update = verbs.add_parser("update", help="download now (conditional: ETag, Last-Modified)")
    update.add_argument("name", nargs="?", default="", help="one list (default: all)")
    show = verbs.add_parser("show", help="a list's size, age, source and last update")
    show.add_argument("name")
    remove = verbs.add_parser("remove", help="forget a list (rules naming it then match nothing)")
    remove.add_argument("name")


def _age(then: float, now: float) -> str:
    if not then:
        return "never"
    seconds = max(0.0, now - then)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _line(row: dict[str, Any], now: float) -> str:
    held = (
        f"{row['domains']} domains, {row['networks']} networks"
        if "domains" in row
        else "not loaded"
    )
    state = "" if row.get("ok", True) else "  (last update failed)"
    return f"{row['name']}: {row['format']} {row['source']}  {held}{state}"


def _show(row: dict[str, Any], now: float) -> str:
    lines = [
        f"name      {row['name']}",
        f"source    {row['source']}",
        f"format    {row['format']}",
    ]
    if "domains" in row:
        lines += [
            f"size      {row['domains']} domains, {row['networks']} networks "
            f"({row['bytes'] / 1e6:.1f} MB of lookup tables)",
            f"age       downloaded {_age(row['updated'], now)}, loaded {_age(row['loaded'], now)}",
        ]
    else:
        lines.append("size      not loaded yet (snitchctl lists update " + row["name"] + ")")
    if "ok" in row:
        tried = _age(row["checked"], now)
        lines.append(
            f"update    {tried}: ok" if row["ok"] else f"update    {tried}: FAILED: {row['error']}"
        )
    return "\n".join(lines)


async def run_lists(client: Client, args: argparse.Namespace) -> int:
    now = time.time()
    verb = args.lists_verb
    if verb == "add":
        row = await client.add_list(args.name, args.source, args.format)
        text = f"list {row['name']} added; download it with: snitchctl lists update {row['name']}"
    elif verb == "remove":
        row = await client.remove_list(args.name)
        text = f"list {row['name']} removed"
    elif verb == "update":
        await client.update_lists(args.name)
        row = {"started": True}
        text = "updater started (snitch-lists); see: snitchctl lists show " + (args.name or "NAME")
    elif verb == "show":
        found = [r for r in await client.lists() if r["name"] == args.name]
        if not found:
            raise ListError(f"no such list {args.name!r} (see: snitchctl lists)")
        row = found[0]
        text = _show(row, now)
    else:
        rows = await client.lists()
        print(
            json.dumps(rows, indent=2, sort_keys=True)
            if args.json
            else "\n".join(_line(r, now) for r in rows) or "(no lists)"
        )
        return 0
    print(json.dumps(row, indent=2, sort_keys=True) if args.json else text)
    return 0
