"""snitchctl's modes, proposals and profiles (issue 17)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from snitch_common.client import Client
from snitch_common.errors import ModeError, ProfileError
from snitch_common.modes import parse_for, parse_mode
from snitchctl.output import out

__all__ = [
    "add_mode_parsers",
    "check_mode_args",
    "decide_proposals",
    "run_profile",
    "show_or_set_mode",
    "show_proposals",
]


def add_mode_parsers(sub: Any) -> None:
    """Modes, proposals and profiles (issue 17)."""
    mode = sub.add_parser(
        "mode",
        help="show the mode, or switch it (admins): ask, silent-allow, silent-deny, learn",
        description="What happens to a flow no rule covers. ask: a person is asked (or the "
        "default action applies); silent-allow / silent-deny: allowed / denied and logged, "
        "nobody is asked; learn: allowed, and each new app and destination becomes a proposed "
        "rule (see: snitchctl proposals). Without MODE, show the mode in force.",
    )
    mode.add_argument("mode", nargs="?", metavar="MODE")
    mode.add_argument(
        "--for",
        dest="for_",
        metavar="N[smhd]",
        help="only for this long (e.g. 15m, 1h), then the mode before comes back",
    )
    sub.add_parser(
        "proposals", help="the rules learn mode proposes: ID, flows seen, first/last, rule"
    )
    for verb, what in (("accept", "turn proposals into rules"), ("reject", "drop proposals")):
        prop = sub.add_parser(f"{verb}-proposals", help=f"{what} (admins): IDS or --all")
        prop.add_argument("ids", nargs="*", type=int, metavar="ID")
        prop.add_argument("--all", action="store_true", help="every proposal listed now")

    prof = sub.add_parser(
        "profile",
        help="profiles: named rule sets, each maybe with a mode and the networks it is for",
        description="list; create NAME [--mode M] [--gateway MAC] [--iface NAME] [--ssid "
        "SSID] (a network may be given several times); delete NAME; activate NAME; "
        "deactivate. Rules join a profile with add-rule --profile NAME.",
    )
    prof.add_argument("action", choices=("list", "create", "delete", "activate", "deactivate"))
    prof.add_argument("name", nargs="?", metavar="NAME")
    prof.add_argument("--mode", help="the mode to switch to when this profile becomes active")
    for kind, meta in (("gateway", "MAC"), ("iface", "NAME"), ("ssid", "SSID")):
        prof.add_argument(
            f"--{kind}",
            action="append",
            default=[],
            metavar=meta,
            help=f"becomes active by itself on this network ({kind})",
        )


def check_mode_args(args: argparse.Namespace) -> None:
    """Refuse bad words before connecting (so they fail the same with snitchd down)."""
    if args.command == "mode":
        if args.mode is not None:
            parse_mode(args.mode)
        if args.for_ is not None:
            if args.mode is None:
                raise ModeError("--for needs a MODE (e.g. snitchctl mode silent-allow --for 15m)")
            parse_for(args.for_)
    if args.command in ("accept-proposals", "reject-proposals") and (
        bool(args.ids) == bool(args.all)
    ):
        raise ModeError(f"{args.command} needs proposal IDS or --all (see: snitchctl proposals)")


async def show_or_set_mode(client: Client, args: argparse.Namespace) -> int:
    if args.mode is None:
        state = await client.get_mode()
    else:
        seconds = parse_for(args.for_) if args.for_ is not None else None
        state = await client.set_mode(parse_mode(args.mode).value, seconds)

    def text() -> str:
        line = f"mode: {state['describe']}"
        if state.get("by"):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state["since"]))
            line += f" (since {when}, {state['by']})"
        return line

    out(args, state, text)
    return 0


async def show_proposals(client: Client, args: argparse.Namespace) -> int:
    rows = await client.proposals()

    def text() -> str:
        if not rows:
            return "(no proposals: switch to learn mode to collect some: snitchctl mode learn)"
        lines = [f"{'ID':>5} {'FLOWS':>6}  {'FIRST SEEN':<19}  {'LAST SEEN':<19}  RULE"]
        for r in rows:
            first = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["first_seen"]))
            last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["last_seen"]))
            lines.append(f"{r['id']:>5} {r['count']:>6}  {first}  {last}  {r['text']}")
        return "\n".join(lines)

    out(args, rows, text)
    return 0


async def decide_proposals(client: Client, args: argparse.Namespace, *, accept: bool) -> int:
    ids = None if args.all else list(args.ids)
    if accept:
        made = await client.accept_proposals(ids)
        out(args, made, lambda: "\n".join(f"{r['id']}: {r['text']}" for r in made) or "(none)")
    else:
        gone = await client.reject_proposals(ids)
        out(args, gone, lambda: f"rejected {len(gone)} proposal{'s' * (len(gone) != 1)}")
    return 0


async def run_profile(client: Client, args: argparse.Namespace) -> int:
    action, name = args.action, args.name
    networks = [f"{kind}={v}" for kind in ("gateway", "iface", "ssid") for v in getattr(args, kind)]
    if action not in ("create",) and (networks or args.mode):
        raise ProfileError(f"profile {action}: --mode and networks belong to create")
    if action in ("create", "delete", "activate") and not name:
        raise ProfileError(f"profile {action} needs a NAME")
    if action in ("list", "deactivate") and name:
        raise ProfileError(f"profile {action} takes no NAME")
    if action == "create":
        made = await client.create_profile(name, args.mode, networks)
        out(args, made, lambda: f"created {_profile_line(made)}")
        return 0
    if action == "delete":
        await client.delete_profile(name)
        out(args, {"deleted": name}, lambda: f"deleted profile {name}")
        return 0
    if action in ("activate", "deactivate"):
        await client.activate_profile(name if action == "activate" else None)
    report = await client.profiles()

    def text() -> str:
        lines = [_profile_line(p) for p in report["profiles"]] or ["(no profiles)"]
        lines.append(f"active: {report['active'] or '(none)'}")
        lines.append(f"network now: {report['network']['describe']}")
        return "\n".join(lines)

    out(args, report, text)
    return 0


def _profile_line(p: dict[str, Any]) -> str:
    mode = f" mode={p['mode']}" if p.get("mode") else ""
    nets = f" networks: {', '.join(p['networks'])}" if p.get("networks") else ""
    return f"{'*' if p.get('active') else ' '} {p['name']}{mode}{nets}"
