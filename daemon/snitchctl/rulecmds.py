"""snitchctl's rule commands: list, add, delete, edit, switch off and on, check, export,
import, explain; the rule text made from add-rule's flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from typing import Any

from dbus_fast import Variant

from snitch_common.client import Client
from snitch_common.errors import RuleError
from snitch_common.records import Runtime
from snitch_common.rulefile import format_rule_line, read_rules
from snitch_common.rules import parse_duration, parse_rule
from snitchctl.colour import painter_for
from snitchctl.dates import delocalise_rule_text, localise_rule_text
from snitchctl.output import out

__all__ = [
    "add_explain_parser",
    "add_rule",
    "add_rule_edit_parsers",
    "add_rule_parsers",
    "check_rules",
    "delete_rule",
    "edit_rule",
    "explain_flow",
    "export_rules",
    "import_plan_text",
    "import_rules",
    "link_warnings",
    "list_rules",
    "read_file",
    "rule_text_for_edit",
    "rule_text_from_flags",
    "rule_warnings",
    "toggle_rule",
]


def add_rule_parsers(sub: Any) -> None:
    """list-rules, add-rule, delete-rule."""
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
    add.add_argument("--proto", choices=("tcp", "udp", "icmp", "other"))
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


def add_explain_parser(sub: Any) -> None:
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
    ex.add_argument("--proto", choices=("tcp", "udp", "icmp", "other"), default="tcp")
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


def add_rule_edit_parsers(sub: Any) -> None:
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
        "(a rule there keeps its note; another note in the file is named, not taken) and what "
        "is invalid.",
    )
    imp.add_argument("file", help="a rules file (- for stdin)")
    imp.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")


def rule_text_from_flags(args: argparse.Namespace) -> str:
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


def rule_text_for_edit(args: argparse.Namespace) -> str:
    """edit-rule's new rule text ("" to change the note only), taken as add-rule takes it:
    `until=` as list-rules shows it (local YYYY-MM-DDTHH:MM) is read back too."""
    words: list[str] = args.text
    if not words:
        if args.note is None:
            raise RuleError("edit-rule needs the new rule text, or --note")
        return ""
    text = words[0] if len(words) == 1 else shlex.join(words)
    return str(parse_rule(delocalise_rule_text(text)))


def _rule_text(args: argparse.Namespace) -> str:
    if args.text:
        flags = ("exe", "sha256", "user", "dst", "host", "port", "proto", "iface", "action")
        # --duration too: the text's own for= says how long it lasts (with both, the flag
        # was dropped and the rule made permanent).
        if any(getattr(args, f) for f in flags) or args.any_app or args.duration != "forever":
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


async def list_rules(client: Client, args: argparse.Namespace) -> int:
    rules = await client.list_rules()
    paint = painter_for(sys.stdout)

    def line(r: dict[str, Any]) -> str:
        action, _, rest = localise_rule_text(str(r["text"])).partition(" ")
        return f"{r['id']}: {paint.verdict(action)} {rest}".rstrip()

    out(args, rules, lambda: "\n".join(line(r) for r in rules) or "(no rules)")
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


def link_warnings(text: str) -> list[str]:
    """The executables a rule names that are links on this machine: a process runs the file a
    link points to, and rules match that real path, so `app=/usr/bin/python3` matches nothing
    where python3 is a link. Only a warning: the rule may be meant for another machine."""
    try:
        rule = parse_rule(text)
    except RuleError:
        return []
    found = []
    for path in (rule.exe, rule.parent1, rule.parent):
        if path is not None and os.path.exists(path) and (real := os.path.realpath(path)) != path:
            found.append(f"{path} is a link to {real}: rules match the executable's real path")
    return found


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


async def add_rule(client: Client, args: argparse.Namespace, text: str) -> int:
    if args.note:
        record = await client.add_rule_with_note(text, args.note)
    else:
        record = await client.add_rule(text)

    def shown() -> str:
        line = f"{record['id']}: {localise_rule_text(record['text'])}"
        return f"{line}  (exists already: not added twice)" if record.get("existing") else line

    out(args, record, shown)
    return 0


async def edit_rule(client: Client, args: argparse.Namespace, text: str) -> int:
    record = await client.edit_rule(args.id, text, args.note)
    out(args, record, lambda: f"{record['id']}: {localise_rule_text(record['text'])}")
    return 0


async def toggle_rule(client: Client, args: argparse.Namespace, enabled: bool) -> int:
    record = await client.set_rule_enabled(args.id, enabled)
    state = "enabled" if enabled else "disabled"
    out(args, record, lambda: f"{state} {record['id']}: {record['text']}")
    return 0


def read_file(name: str) -> str:
    try:
        if name == "-":
            return sys.stdin.read()
        with open(name, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(f"cannot read rules file {name}: {exc}") from None


def check_rules(args: argparse.Namespace) -> int:
    """Lint a rules file without the daemon: every bad line, exit 1 if any."""
    lines, bad = read_rules(read_file(args.file))
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


async def export_rules(client: Client, args: argparse.Namespace) -> int:
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


async def import_rules(client: Client, args: argparse.Namespace, text: str) -> int:
    plan = await client.import_rules(text, dry_run=args.dry_run)
    out(args, plan, lambda: import_plan_text(plan))
    return 1 if plan["invalid"] else 0


def import_plan_text(plan: dict[str, Any]) -> str:
    """An import's plan as a person reads it; a line whose rule is there already and whose
    note is not taken says so, with the note kept (import adds rules, it changes none)."""
    lines = []
    for r in plan["added"]:
        ident = f"{r['id']}: " if r["id"] else ""
        lines.append(f"add {ident}{r['text']}")
    for r in plan["duplicates"]:
        where = f"duplicate of {r['id']}" if r["id"] else "duplicate in the file"
        line = f"{where}: {r['text']}"
        if r.get("dropped_note"):
            kept = repr(r["note"]) if r["note"] else "none"
            line += f"; note kept: {kept}, not imported: {r['dropped_note']!r}"
            if r["id"]:
                line += f" (to change it: snitchctl edit-rule {r['id']} --note TEXT)"
        lines.append(line)
    for b in plan["invalid"]:
        lines.append(f"invalid line {b['line']}: {b['reason']}")
    state = "applied" if plan["applied"] else "nothing changed"
    lines.append(
        f"{len(plan['added'])} to add, {len(plan['duplicates'])} duplicates, "
        f"{len(plan['invalid'])} invalid: {state}"
    )
    return "\n".join(lines)


async def delete_rule(client: Client, args: argparse.Namespace) -> int:
    record = await client.delete_rule(args.id)
    out(args, record, lambda: f"deleted {record['id']}: {localise_rule_text(record['text'])}")
    return 0


async def explain_flow(client: Client, args: argparse.Namespace) -> int:
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

    out(args, result, text)
    return 0
