"""`snitchctl`: the command line of snitch; it talks only to snitchd over D-Bus.

Exit codes: 0 ok · 1 failed, or a query answered "no" · 2 usage · 3 daemon unreachable ·
4 not authorized. With --json, results are JSON with stable keys (README, "The command line")
and errors are `{"error": {"code": ..., "message": ...}}` on stderr; without it, errors are one
line, `snitchctl: error: ...`. Tracebacks only with --debug.

This module puts the command line together and dispatches; the commands live by room:
`rulecmds` (rules, explain), `traffic` (log, top, monitor), `health` (status, metrics,
doctor), `modecmds` (modes, proposals, profiles), `lists`, `termagent` (agent).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable

from snitch_common.client import Client
from snitch_common.errors import DaemonUnreachable, SnitchError
from snitch_common.launcher import start_agent
from snitchctl.completion import enable_completion
from snitchctl.examples import EXIT_CODES, add_examples
from snitchctl.health import (
    add_doctor_parser,
    add_health_parsers,
    run_doctor,
    show_metrics,
    show_status,
    status_offline,
)
from snitchctl.lists import add_lists_parser, run_lists
from snitchctl.modecmds import (
    add_mode_parsers,
    check_mode_args,
    decide_proposals,
    run_profile,
    show_or_set_mode,
    show_proposals,
)
from snitchctl.rulecmds import (
    add_explain_parser,
    add_rule,
    add_rule_edit_parsers,
    add_rule_parsers,
    check_rules,
    delete_rule,
    edit_rule,
    explain_flow,
    export_rules,
    import_rules,
    link_warnings,
    list_rules,
    read_file,
    rule_text_for_edit,
    rule_text_from_flags,
    rule_warnings,
    toggle_rule,
)
from snitchctl.termagent import run_agent
from snitchctl.traffic import add_traffic_parsers, show_log, show_monitor, show_top

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

    add_rule_parsers(sub)
    add_explain_parser(sub)
    add_traffic_parsers(sub)
    add_health_parsers(sub)
    agent = sub.add_parser(
        "agent", help="answer prompts in this terminal (for SSH and headless use)"
    )
    agent.add_argument(
        "--take-over",
        action="store_true",
        help="get this user's prompts even while a desktop agent is active (by default a "
        "terminal agent is asked only when none is)",
    )
    add_doctor_parser(sub)
    add_lists_parser(sub)
    add_rule_edit_parsers(sub)
    add_mode_parsers(sub)
    add_examples(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, examples included; also read by the man page and the shell
    completion (snitchctl.manpages, snitchctl.completion)."""
    return _build_parser()


async def _run(args: argparse.Namespace) -> int:
    if args.command == "add-rule":
        rule_text = rule_text_from_flags(args)
        for warning in [] if args.json else link_warnings(rule_text):
            print(f"snitchctl: warning: {warning}", file=sys.stderr)
    if args.command == "edit-rule":
        rule_text = rule_text_for_edit(args)
    if args.command == "import":
        import_text = read_file(args.file)
    check_mode_args(args)
    client = await Client.connect()
    try:
        handlers: dict[str, Callable[[], Awaitable[int]]] = {
            "list-rules": lambda: list_rules(client, args),
            "add-rule": lambda: add_rule(client, args, rule_text),
            "delete-rule": lambda: delete_rule(client, args),
            "explain": lambda: explain_flow(client, args),
            "log": lambda: show_log(client, args),
            "status": lambda: show_status(client, args),
            "metrics": lambda: show_metrics(client),
            "top": lambda: show_top(client, args),
            "monitor": lambda: show_monitor(client, args),
            "agent": lambda: run_agent(client, take_over=args.take_over),
            "lists": lambda: run_lists(client, args),
            "edit-rule": lambda: edit_rule(client, args, rule_text),
            "disable-rule": lambda: toggle_rule(client, args, False),
            "enable-rule": lambda: toggle_rule(client, args, True),
            "export": lambda: export_rules(client, args),
            "import": lambda: import_rules(client, args, import_text),
            "mode": lambda: show_or_set_mode(client, args),
            "proposals": lambda: show_proposals(client, args),
            "accept-proposals": lambda: decide_proposals(client, args, accept=True),
            "reject-proposals": lambda: decide_proposals(client, args, accept=False),
            "profile": lambda: run_profile(client, args),
        }
        return await handlers[args.command]()
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    enable_completion(parser)  # only when the shell asks (_ARGCOMPLETE set): then it exits
    args = parser.parse_args(argv)
    if args.command == "agent":
        # First thing: run as the set-group-id launcher started it, which no process of this
        # user can trace or change; snitchd checks that before it accepts an agent
        # (snitchd/agents.py).
        start_agent("terminal", ["--take-over"] if args.take_over else [])
    if args.command == "doctor":
        return run_doctor(args)
    try:
        if args.command == "check-rules":
            return check_rules(args)
        if args.command == "top" and args.live:
            from snitchctl.live import run_live  # noqa: PLC0415 - Textual only when asked for

            return run_live()
        return asyncio.run(_run(args))
    except SnitchError as exc:
        if args.debug:
            raise
        if isinstance(exc, DaemonUnreachable) and args.command == "status":
            return status_offline(args)
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
