"""Shell completion (bash, zsh, fish) through argcomplete, with names from the daemon.

The shell runs `snitchctl` with `_ARGCOMPLETE` set for each <TAB>; only then is argcomplete
imported, so an ordinary run pays nothing for it. Subcommands and options come from the parser
itself, so they never drift; rule ids (`delete-rule`) and app paths (`log --app`,
`add-rule --exe`) come from snitchd over D-Bus, as the user at the keyboard is allowed to read
them, within `ASK_TIMEOUT` (a stopped snitchd completes nothing rather than hang the shell).
install.sh writes the scripts with `register-python-argcomplete`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from dbus_fast import Variant

from snitch_common.client import Client
from snitchctl.examples import subcommands

__all__ = [
    "ASK_TIMEOUT",
    "complete_app",
    "complete_list_name",
    "complete_profile_name",
    "complete_rule_id",
    "complete_rule_word",
    "enable_completion",
]

T = TypeVar("T")

ASK_TIMEOUT = 2.0  # seconds; a shell waiting longer for a <TAB> feels broken
RULE_WORDS = ("allow", "deny", "reject", "app=", "to=", "port=", "proto=", "user=", "iface=",
              "for=", "sha256=", "script=", "parent=", "parent1=")  # fmt: skip


def _ask(call: Callable[[Client], Awaitable[T]], empty: T) -> T:
    async def run() -> T:
        client = await Client.connect()
        try:
            return await asyncio.wait_for(call(client), ASK_TIMEOUT)
        finally:
            client.close()

    try:
        return asyncio.run(asyncio.wait_for(run(), ASK_TIMEOUT * 2))
    except Exception:
        return empty


def complete_rule_id(**_: Any) -> list[str]:
    """Rule ids, each with its text as the description zsh and fish show."""
    empty: list[dict[str, Any]] = []
    rules = _ask(lambda c: c.list_rules(), empty)
    return [str(r["id"]) for r in rules]


def _apps() -> list[str]:
    empty: list[dict[str, Any]] = []
    rows = _ask(lambda c: c.top({"since": Variant("d", 0.0)}), empty)
    return sorted({str(r["app"]) for r in rows if str(r.get("app", "")).startswith("/")})


def complete_app(prefix: str = "", **_: Any) -> list[str]:
    """App paths seen in the connection log, and their names (`--app` takes both)."""
    apps = _apps()
    if prefix.startswith("/"):
        return apps
    return sorted({os.path.basename(a) for a in apps} | set(apps))


def complete_rule_word(prefix: str = "", **_: Any) -> list[str]:
    """The rule language's words; after `app=`, the app paths from the log."""
    if prefix.startswith("app="):
        return [f"app={a}" for a in _apps()]
    return list(RULE_WORDS)


def complete_list_name(**_: Any) -> list[str]:
    """The block lists snitchd knows."""
    empty: list[dict[str, Any]] = []
    return sorted(str(r["name"]) for r in _ask(lambda c: c.lists(), empty))


def complete_profile_name(**_: Any) -> list[str]:
    """The profiles snitchd knows."""
    empty: dict[str, Any] = {"profiles": []}
    report = _ask(lambda c: c.profiles(), empty)
    return sorted(str(p["name"]) for p in report.get("profiles", []))


def _attach(parser: argparse.ArgumentParser) -> None:
    by_dest: dict[tuple[str, str], Callable[..., list[str]]] = {
        ("delete-rule", "id"): complete_rule_id,
        ("log", "app"): complete_app,
        ("add-rule", "exe"): complete_app,
        ("add-rule", "text"): complete_rule_word,
        ("explain", "exe"): complete_app,
        ("profile", "name"): complete_profile_name,
        ("add-rule", "profile"): complete_profile_name,
    }
    for name, sub in subcommands(parser).items():
        for action in sub._actions:
            completer = by_dest.get((name, action.dest))
            if completer is not None:
                action.completer = completer  # type: ignore[attr-defined]
        if name == "lists":  # its verbs are a level down: show, remove, update NAME
            for verb in subcommands(sub).values():
                for action in verb._actions:
                    if action.dest == "name":
                        action.completer = complete_list_name  # type: ignore[attr-defined]


def enable_completion(parser: argparse.ArgumentParser) -> None:
    """Answer the shell and exit, when it is the shell asking; otherwise do nothing."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    import argcomplete  # noqa: PLC0415 - only for a <TAB>

    _attach(parser)
    argcomplete.autocomplete(parser)
