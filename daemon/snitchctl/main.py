"""`snitchctl`: the command line of snitch; it talks only to snitchd over D-Bus.

Exit codes: 0 ok · 1 failed, or a query answered "no" · 2 usage · 3 daemon unreachable ·
4 not authorized. With --json, results are JSON with stable keys (README, "The command line")
and errors are `{"error": {"code": ..., "message": ...}}` on stderr; without it, errors are one
line, `snitchctl: error: ...`. Tracebacks only with --debug.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dbus_fast import Variant

from snitch_common.agent import make_undumpable
from snitch_common.client import Client
from snitch_common.errors import DaemonUnreachable, ModeError, ProfileError, RuleError, SnitchError
from snitch_common.metrics import render_metrics
from snitch_common.modes import parse_for, parse_mode
from snitch_common.records import Runtime
from snitch_common.rulefile import format_rule_line, read_rules
from snitch_common.rules import parse_duration, parse_rule
from snitchctl.colour import Colour, painter_for
from snitchctl.completion import enable_completion
from snitchctl.dates import delocalise_rule_text, local_time, localise_rule_text
from snitchctl.examples import EXIT_CODES, add_examples
from snitchctl.lists import add_lists_parser, run_lists
from snitchctl.status import offline_status, summary, verbose_counters
from snitchctl.termagent import run_agent

__all__ = ["build_parser", "main", "rule_warnings"]

EPILOG = EXIT_CODES


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="snitchctl",
        description="Control snitchd, the per-application outbound firewall: its rules, its "
        "connection log, its prompts and its state.",
        epilog=EPILOG,
    )
    p.add_argument("--json", action="store_true", help="print JSON (stable keys)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("list-rules", help="print rules as ID: RULE (pastes back into add-rule)")

    add = sub.add_parser(
        "add-rule",
        help="add a rule, from flags or from its text form",
        description="Add a rule. Either give its text (as list-rules prints it), or flags.",
    )
    add.add_argument(
        "text",
        nargs="*",
        help="rule text, quoted or not, e.g. allow app=/usr/bin/curl port=443",
    )
    who = add.add_mutually_exclusive_group()
    who.add_argument("--exe", metavar="PATH", help="the executable the rule is for")
    who.add_argument("--any-app", action="store_true", help="the rule holds for every app")
    add.add_argument("--sha256", help="pin the executable's sha256")
    add.add_argument("--user", help="only this user's processes (name or uid)")
    add.add_argument("--dst", metavar="IP|CIDR", help="destination address or network")
    add.add_argument("--host", metavar="NAME|*.DOMAIN", help="destination host or domain")
    add.add_argument("--port", metavar="N[-M]", help="destination port or range")
    add.add_argument("--proto", choices=("tcp", "udp", "icmp"))
    add.add_argument("--iface", metavar="NAME", help="outgoing interface")
    add.add_argument("--action", choices=("allow", "deny", "reject"))
    add.add_argument(
        "--duration", default="forever", help="once, process, Nm (minutes), restart, forever"
    )
    add.add_argument("--note", default="", help="a note for people (not part of the rule)")
    add.add_argument(
        "--keep-open",
        action="store_true",
        help="a deny or reject rule leaves the flows already open (default: it cuts them)",
    )
    add.add_argument("--during", metavar="HH:MM-HH:MM", help="only in this local time window")
    add.add_argument("--days", metavar="DAYS", help="only on these days, e.g. mon-fri or sat,sun")
    add.add_argument(
        "--profile", metavar="NAME", help="the rule holds only while this profile is active"
    )

    delete = sub.add_parser("delete-rule", help="delete a rule by id")
    delete.add_argument("id", type=int)

    _add_explain(sub)

    lg = sub.add_parser("log", help="the connection log: every decision")
    lg.add_argument("--app", metavar="NAME|PATH", help="an app by its path, or every app of a name")
    lg.add_argument("--host", metavar="NAME|*.DOMAIN", help="only flows to this host or domain")
    lg.add_argument("--verdict", choices=("allow", "deny", "reject"))
    lg.add_argument("--since", metavar="N[smhd]", help="e.g. 10m, 1h, 2d")
    lg.add_argument("--limit", type=int, default=50)

    top = sub.add_parser("top", help="per-app connections and bytes, most traffic first")
    top.add_argument("--since", metavar="N[smhd]", help="e.g. 10m, 1h, 2d (default: all)")
    top.add_argument(
        "--live",
        action="store_true",
        help="full screen, live rates per app (keys: s sort, / filter, enter hosts, q quit)",
    )
    sub.add_parser("monitor", help="live: every decision as it happens (--json: JSON lines)")
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
    agent = sub.add_parser(
        "agent", help="answer prompts in this terminal (for SSH and headless use)"
    )
    agent.add_argument(
        "--take-over",
        action="store_true",
        help="get this user's prompts even while a desktop agent is active (by default a "
        "terminal agent is asked only when none is)",
    )
    doc = sub.add_parser(
        "doctor",
        help="check snitch's database (as root; works while snitchd is stopped)",
        description="Check the database: PRAGMA quick_check and integrity_check, the schema "
        "version, and that every rule parses; say what to do. Exit 1 if something is wrong.",
    )
    doc.add_argument("--config", metavar="PATH", help="snitchd's config (for its database)")
    doc.add_argument("--database", metavar="PATH", help="check this database instead")
    add_lists_parser(sub)
    _add_rule_commands(sub)
    _add_mode_parsers(sub)
    add_examples(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, examples included; also read by the man page and the shell
    completion (snitchctl.manpages, snitchctl.completion)."""
    return _build_parser()


def _add_explain(sub: Any) -> None:
    """explain: the flow as the packet path would judge it (issue 15)."""
    ex = sub.add_parser("explain", help="which rule wins for a flow, and why")
    ex.add_argument("--exe", metavar="PATH")
    ex.add_argument(
        "--dst",
        required=True,
        metavar="IP|NAME",
        help="an address, or a host name (the address it was last resolved to is used)",
    )
    ex.add_argument("--port", type=int, default=0)
    ex.add_argument("--proto", choices=("tcp", "udp", "icmp"), default="tcp")
    ex.add_argument("--iface", default="")
    ex.add_argument("--uid", type=int)
    ex.add_argument("--host", metavar="NAME", help="judge the address as resolved from NAME")
    ex.add_argument("--pid", type=int, help="the process whose own DNS names count")
    ex.add_argument("--script", metavar="PATH", help="the script an interpreter runs")
    ex.add_argument("--sha256", help="the executable's digest (default: read from --exe)")
    ex.add_argument(
        "--container",
        metavar="NAME",
        help="judge it as forwarded from this container or guest (issue 16; --uid: its owner)",
    )
    ex.add_argument(
        "--runtime",
        choices=[r.value for r in Runtime],
        help="the container's runtime (default: every runtime, answered if they agree)",
    )


def _add_rule_commands(sub: Any) -> None:
    """edit-rule, disable-rule, enable-rule, check-rules, export, import (issue 18)."""
    edit = sub.add_parser(
        "edit-rule",
        help="give a rule new text (and/or a note), keeping its id",
        description="Replace a rule's text, keeping its id and counters. A deny or reject "
        "rule cuts the flows already open that it now covers, unless keep-open=yes.",
    )
    edit.add_argument("id", type=int)
    edit.add_argument("text", nargs="*", help="the new rule text (leave out to change the note)")
    edit.add_argument("--note", default=None, help="replace the rule's note")
    for verb, what in (("disable", "switch a rule off (kept and listed, never matched)"),
                       ("enable", "switch a rule on again")):  # fmt: skip
        toggle = sub.add_parser(f"{verb}-rule", help=what)
        toggle.add_argument("id", type=int)
    check = sub.add_parser(
        "check-rules",
        help="check a rules file (every bad line, with its number); exit 1 if one is bad",
        description="Check a rules file as snitchd reads /etc/snitch/rules.d/*.rules: one "
        "rule per line, # comments. Needs no daemon.",
    )
    check.add_argument("file", help="the file to check (- for stdin)")
    export = sub.add_parser("export", help="print every rule as a rules file (or JSON)")
    export.add_argument("--format", choices=("rules", "json"), default="rules")
    imp = sub.add_parser(
        "import",
        help="add the rules of a file, all or nothing; print the plan",
        description="Add every rule of a rules file that is not there yet, in one step: "
        "nothing is added if a line is invalid. Prints what is added, what is already there "
        "and what is invalid.",
    )
    imp.add_argument("file", help="a rules file (- for stdin)")
    imp.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")


def _add_mode_parsers(sub: Any) -> None:
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


def _rule_text_from_flags(args: argparse.Namespace) -> str:
    """Turn add-rule flags into the rule's text form, so both ways meet in `parse_rule`;
    `--profile` joins either."""
    text = _rule_text(args)
    if args.profile:
        rule = parse_rule(text)
        if rule.profile is not None and rule.profile != args.profile:
            raise RuleError(f"the rule says profile={rule.profile}, and --profile {args.profile}")
        text = str(parse_rule(f"{dataclasses.replace(rule, profile=None)!s} "
                              f"profile={shlex.quote(args.profile)}"))  # fmt: skip
    return text


def _rule_text(args: argparse.Namespace) -> str:
    if args.text:
        flags = ("exe", "sha256", "user", "dst", "host", "port", "proto", "iface", "action")
        if any(getattr(args, f) for f in flags) or args.any_app:
            raise RuleError("give either the rule text or flags, not both")
        # One quoted argument is the text as list-rules prints it; several are its words, as
        # a shell split them (`add-rule allow port=443` said "unrecognized arguments").
        words: list[str] = args.text
        text = words[0] if len(words) == 1 else shlex.join(words)
        return _with_extras(delocalise_rule_text(text), args)
    if not args.action:
        raise RuleError("add-rule needs --action allow|deny|reject (or the rule's text)")
    if not args.exe and not args.any_app:
        raise RuleError(
            "add-rule needs --exe PATH, or --any-app for a rule that holds for every app"
        )
    if args.dst and args.host:
        raise RuleError("give --dst or --host, not both")
    parse_duration(args.duration)
    words = [args.action]
    pairs = (
        ("app", args.exe),
        ("sha256", args.sha256),
        ("user", args.user),
        ("to", args.dst or args.host),
        ("port", args.port),
        ("proto", args.proto),
        ("iface", args.iface),
    )
    words += [f"{key}={value}" for key, value in pairs if value]
    if args.duration != "forever":
        words.append(f"for={args.duration}")
    return _with_extras(" ".join(shlex.quote(w) for w in words), args)


def _with_extras(text: str, args: argparse.Namespace) -> str:
    """The rule text with what --during, --days and --keep-open add to it."""
    extra = []
    if args.during:
        extra.append(f"during={args.during}")
    if args.days:
        extra.append(f"days={args.days}")
    if args.keep_open:
        extra.append("keep-open=yes")
    return str(parse_rule(" ".join([text, *extra])))


def _since(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise RuleError(f"invalid --since {text!r}: use N followed by s, m, h or d (e.g. 1h)")
    return time.time() - int(text[:-1]) * units[text[-1]]


def _out(args: argparse.Namespace, data: Any, text: Callable[[], str]) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else text())


async def _run(args: argparse.Namespace) -> int:
    if args.command == "add-rule":
        rule_text = _rule_text_from_flags(args)
    if args.command == "edit-rule":
        words: list[str] = args.text
        rule_text = (
            str(parse_rule(words[0] if len(words) == 1 else shlex.join(words))) if words else ""
        )
        if not rule_text and args.note is None:
            raise RuleError("edit-rule needs the new rule text, or --note")
    if args.command == "import":
        import_text = _read_file(args.file)
    _check_mode_args(args)
    client = await Client.connect()
    try:
        handlers: dict[str, Callable[[], Awaitable[int]]] = {
            "list-rules": lambda: _list_rules(client, args),
            "add-rule": lambda: _add_rule(client, args, rule_text),
            "delete-rule": lambda: _delete_rule(client, args),
            "explain": lambda: _explain(client, args),
            "log": lambda: _log(client, args),
            "status": lambda: _status(client, args),
            "metrics": lambda: _metrics(client),
            "top": lambda: _top(client, args),
            "monitor": lambda: _monitor(client, args),
            "agent": lambda: run_agent(client, take_over=args.take_over),
            "lists": lambda: run_lists(client, args),
            "edit-rule": lambda: _edit_rule(client, args, rule_text),
            "disable-rule": lambda: _toggle_rule(client, args, False),
            "enable-rule": lambda: _toggle_rule(client, args, True),
            "export": lambda: _export(client, args),
            "import": lambda: _import(client, args, import_text),
            "mode": lambda: _mode(client, args),
            "proposals": lambda: _proposals(client, args),
            "accept-proposals": lambda: _decide_proposals(client, args, accept=True),
            "reject-proposals": lambda: _decide_proposals(client, args, accept=False),
            "profile": lambda: _profile(client, args),
        }
        return await handlers[args.command]()
    finally:
        client.close()


async def _list_rules(client: Client, args: argparse.Namespace) -> int:
    rules = await client.list_rules()
    paint = painter_for(sys.stdout)

    def line(r: dict[str, Any]) -> str:
        action, _, rest = localise_rule_text(str(r["text"])).partition(" ")
        return f"{r['id']}: {paint.verdict(action)} {rest}".rstrip()

    _out(args, rules, lambda: "\n".join(line(r) for r in rules) or "(no rules)")
    if not args.json:
        for r in rules:  # to stderr: what is printed on stdout still pastes into add-rule
            for warning in rule_warnings(str(r["text"])):
                print(f"snitchctl: note: rule {r['id']}: {warning}", file=sys.stderr)
            if not r.get("enabled", True):
                print(
                    f"snitchctl: note: rule {r['id']} is disabled (enable-rule {r['id']})",
                    file=sys.stderr,
                )
    return 0


def rule_warnings(text: str) -> list[str]:
    """What a person should know about a rule before trusting it."""
    try:
        rule = parse_rule(text)
    except RuleError:
        return []
    if rule.covers_every_script():
        return [
            f"{rule.exe} is an interpreter and the rule names no script=: "
            "it covers every script it runs, a one-line reverse shell included"
        ]
    return []


async def _add_rule(client: Client, args: argparse.Namespace, text: str) -> int:
    if args.note:
        record = await client.add_rule_with_note(text, args.note)
    else:
        record = await client.add_rule(text)

    def shown() -> str:
        line = f"{record['id']}: {localise_rule_text(record['text'])}"
        return f"{line}  (exists already: not added twice)" if record.get("existing") else line

    _out(args, record, shown)
    return 0


async def _edit_rule(client: Client, args: argparse.Namespace, text: str) -> int:
    record = await client.edit_rule(args.id, text, args.note)
    _out(args, record, lambda: f"{record['id']}: {localise_rule_text(record['text'])}")
    return 0


async def _toggle_rule(client: Client, args: argparse.Namespace, enabled: bool) -> int:
    record = await client.set_rule_enabled(args.id, enabled)
    state = "enabled" if enabled else "disabled"
    _out(args, record, lambda: f"{state} {record['id']}: {record['text']}")
    return 0


def _read_file(name: str) -> str:
    try:
        if name == "-":
            return sys.stdin.read()
        with open(name, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(f"cannot read rules file {name}: {exc}") from None


def _check_rules(args: argparse.Namespace) -> int:
    """Lint a rules file without the daemon: every bad line, exit 1 if any."""
    lines, bad = read_rules(_read_file(args.file))
    if args.json:
        report = {
            "rules": len(lines),
            "invalid": [{"line": b.line, "text": b.text, "reason": b.reason} for b in bad],
        }
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        for b in bad:
            print(f"{args.file}:{b.line}: {b.reason}", file=sys.stderr)
        verdict = "invalid" if bad else "ok"
        rules = f"{len(lines)} rule{'' if len(lines) == 1 else 's'}"
        print(f"{args.file}: {verdict}: {rules}, {len(bad)} bad line{'' if len(bad) == 1 else 's'}")
    return 1 if bad else 0


async def _export(client: Client, args: argparse.Namespace) -> int:
    rules = await client.list_rules()
    if args.format == "json" or args.json:
        print(json.dumps(rules, indent=2, sort_keys=True))
        return 0
    print(f"# snitch rules, exported {time.strftime('%Y-%m-%d %H:%M:%S')}")
    for r in rules:
        line = format_rule_line(str(r["text"]), str(r.get("note", "")))
        if not r.get("enabled", True):
            line = "# disabled: " + line
        print(line)
    return 0


async def _import(client: Client, args: argparse.Namespace, text: str) -> int:
    plan = await client.import_rules(text, dry_run=args.dry_run)

    def shown() -> str:
        out = []
        for r in plan["added"]:
            ident = f"{r['id']}: " if r["id"] else ""
            out.append(f"add {ident}{r['text']}")
        for r in plan["duplicates"]:
            out.append(f"duplicate of {r['id']}: {r['text']}" if r["id"] else
                       f"duplicate in the file: {r['text']}")  # fmt: skip
        for b in plan["invalid"]:
            out.append(f"invalid line {b['line']}: {b['reason']}")
        state = "applied" if plan["applied"] else "nothing changed"
        out.append(
            f"{len(plan['added'])} to add, {len(plan['duplicates'])} duplicates, "
            f"{len(plan['invalid'])} invalid: {state}"
        )
        return "\n".join(out)

    _out(args, plan, shown)
    return 1 if plan["invalid"] else 0


async def _delete_rule(client: Client, args: argparse.Namespace) -> int:
    record = await client.delete_rule(args.id)
    _out(args, record, lambda: f"deleted {record['id']}: {localise_rule_text(record['text'])}")
    return 0


async def _explain(client: Client, args: argparse.Namespace) -> int:
    query = {
        "dst": Variant("s", args.dst),
        "port": Variant("x", args.port),
        "proto": Variant("s", args.proto),
        "iface": Variant("s", args.iface),
    }
    if args.exe:
        query["exe"] = Variant("s", args.exe)
    if args.uid is not None:
        query["uid"] = Variant("x", args.uid)
    if args.pid is not None:
        query["pid"] = Variant("x", args.pid)
    for key in ("host", "script", "sha256", "container", "runtime"):
        if getattr(args, key):
            query[key] = Variant("s", getattr(args, key))
    result = await client.explain(query)

    def text() -> str:
        matches = result["matches"]
        if result["winner"] >= 0:
            head = f"verdict: {result['verdict']} (rule {result['winner']} wins)"
        else:
            head = (
                f"verdict: {result['verdict']} (no rule matches: the default action, or a prompt)"
            )
        names = ", ".join(result.get("names", ())) or "none"
        lines = [head, f"flow: to {result.get('dst', args.dst)}, names: {names}"]
        if result.get("note"):
            lines.append(f"note: {result['note']}")
        lines.append("matching rules, best first:" if matches else "matching rules: none")
        lines += [f"  {rule_id}: {localise_rule_text(text)}" for rule_id, text in matches]
        lines.append(f"precedence: {result['precedence']}")
        return "\n".join(lines)

    _out(args, result, text)
    return 0


async def _log(client: Client, args: argparse.Namespace) -> int:
    query: dict[str, Variant] = {"limit": Variant("x", args.limit)}
    if args.app:
        query["exe"] = Variant("s", args.app)
    if args.verdict:
        query["action"] = Variant("s", args.verdict)
    if args.host:
        query["host"] = Variant("s", args.host)
    if args.since:
        query["since"] = Variant("d", _since(args.since))
    rows = await client.log(query)
    if args.app and "/" not in args.app:  # by name: say which apps of that name answered
        found = sorted({str(r["exe"]) for r in rows if r.get("exe")})
        if len(found) > 1:
            print(f"note: --app {args.app} matches {len(found)} apps: {', '.join(found)} "
                  "(give a path for one)", file=sys.stderr)  # fmt: skip

    paint = painter_for(sys.stdout)

    def text() -> str:
        return "\n".join(_log_line(r, paint.verdict) for r in rows) or "(no connections logged)"

    _out(args, rows, text)
    return 0


def _log_line(r: dict[str, Any], verdict: Callable[[str, int], str] | None = None) -> str:
    """One decision as a person reads it: when (local time), verdict, who, where, why."""
    when = local_time(r["time"])
    who = r.get("exe") or (f"uid {r['uid']}" if "uid" in r else "kernel")
    port = f":{r['dport']}" if r["proto"] in ("tcp", "udp") else ""
    where = f"{r['host']} ({r['dst']}{port})" if r.get("host") else f"{r['dst']}{port}"
    why = f"rule {r['rule_id']}" if "rule_id" in r else r["reason"]
    traffic = ""
    if "bytes_out" in r:
        traffic = f" {_size(r['bytes_out'])} out, {_size(r['bytes_in'])} in"
    found = f", {r['source']}" if r.get("source") else ""  # how the owner was found
    retries = f" (retried {r['retries']}x)" if r.get("retries") else ""  # issue 15
    action = verdict(r["action"], 6) if verdict else r["action"].ljust(6)
    return (
        f"{when} {action} {who} (pid {r.get('pid', '-')}{found}) -> {r['proto']} {where} "
        f"[{why}]{traffic}{retries}"
    )


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


async def _top(client: Client, args: argparse.Namespace) -> int:
    query = {"since": Variant("d", _since(args.since) if args.since else 0.0)}
    # By the app's total bytes (snitchd sorts so too; this keeps the table's promise).
    rows = sorted(await client.top(query), key=lambda r: -(r["bytes_out"] + r["bytes_in"]))

    def text() -> str:
        head = f"{'SENT':>10} {'RECEIVED':>10} {'CONNS':>6} {'BLOCKED':>7}  APP"
        head = painter_for(sys.stdout)(head, Colour.BOLD)
        lines = [
            f"{_size(r['bytes_out']):>10} {_size(r['bytes_in']):>10} {r['connections']:>6} "
            f"{r['blocked']:>7}  {r['app']}"
            for r in rows
        ]
        return "\n".join([head, *lines])

    _out(args, rows, text)
    return 0


async def _monitor(client: Client, args: argparse.Namespace) -> int:
    paint = painter_for(sys.stdout)

    def show(row: dict[str, Any]) -> None:
        line = json.dumps(row, sort_keys=True) if args.json else _log_line(row, paint.verdict)
        print(line, flush=True)

    await client.monitor(show)
    if not args.json:
        print("monitoring new connections (Ctrl-C to stop)", file=sys.stderr, flush=True)
    await client.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
    return 0


async def _status(client: Client, args: argparse.Namespace) -> int:
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

    _out(args, status, text)
    return 0


def _check_mode_args(args: argparse.Namespace) -> None:
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


async def _mode(client: Client, args: argparse.Namespace) -> int:
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

    _out(args, state, text)
    return 0


async def _proposals(client: Client, args: argparse.Namespace) -> int:
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

    _out(args, rows, text)
    return 0


async def _decide_proposals(client: Client, args: argparse.Namespace, *, accept: bool) -> int:
    ids = None if args.all else list(args.ids)
    if accept:
        made = await client.accept_proposals(ids)
        _out(args, made, lambda: "\n".join(f"{r['id']}: {r['text']}" for r in made) or "(none)")
    else:
        gone = await client.reject_proposals(ids)
        _out(args, gone, lambda: f"rejected {len(gone)} proposal{'s' * (len(gone) != 1)}")
    return 0


async def _profile(client: Client, args: argparse.Namespace) -> int:
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
        _out(args, made, lambda: f"created {_profile_line(made)}")
        return 0
    if action == "delete":
        await client.delete_profile(name)
        _out(args, {"deleted": name}, lambda: f"deleted profile {name}")
        return 0
    if action in ("activate", "deactivate"):
        await client.activate_profile(name if action == "activate" else None)
    report = await client.profiles()

    def text() -> str:
        lines = [_profile_line(p) for p in report["profiles"]] or ["(no profiles)"]
        lines.append(f"active: {report['active'] or '(none)'}")
        lines.append(f"network now: {report['network']['describe']}")
        return "\n".join(lines)

    _out(args, report, text)
    return 0


def _profile_line(p: dict[str, Any]) -> str:
    mode = f" mode={p['mode']}" if p.get("mode") else ""
    nets = f" networks: {', '.join(p['networks'])}" if p.get("networks") else ""
    return f"{'*' if p.get('active') else ' '} {p['name']}{mode}{nets}"


def _status_offline(args: argparse.Namespace) -> int:
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


async def _metrics(client: Client) -> int:
    print(render_metrics(await client.status()), end="")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    """The checks are snitchd's (it owns the schema): run in a process of their own, so that
    this CLI never loads SQLite or the daemon."""
    argv = [sys.executable, "-m", "snitchd.doctor"]
    argv += ["--config", args.config] if args.config else []
    argv += ["--database", args.database] if args.database else []
    argv += ["--json"] if args.json else []
    return subprocess.run(argv, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    enable_completion(parser)  # only when the shell asks (_ARGCOMPLETE set): then it exits
    args = parser.parse_args(argv)
    if args.command == "agent":
        # First thing: from here on no process of this user can trace it or change its memory,
        # which snitchd checks before it accepts this agent (snitchd/agents.py).
        make_undumpable()
    if args.command == "doctor":
        return _doctor(args)
    try:
        if args.command == "check-rules":
            return _check_rules(args)
        if args.command == "top" and args.live:
            from snitchctl.live import run_live  # noqa: PLC0415 - Textual only when asked for

            return run_live()
        return asyncio.run(_run(args))
    except SnitchError as exc:
        if args.debug:
            raise
        if isinstance(exc, DaemonUnreachable) and args.command == "status":
            return _status_offline(args)
        if args.json:
            err = {"error": {"code": exc.code, "message": exc.message}}
            print(json.dumps(err), file=sys.stderr)
        else:
            print(f"snitchctl: error: {exc.message}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `snitchctl log | head`: the reader is gone. Say nothing (as ls or cat do) and keep
        # Python's own flush at exit from printing a traceback on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by the signal


if __name__ == "__main__":
    sys.exit(main())
