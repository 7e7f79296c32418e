"""What `snitchctl status` says: a short summary a person reads first, counters on request.

When snitchd does not answer, the question that matters is what the kernel does *now* with new
connections: pass them (fail open: the queue rule has `--queue-bypass`, or no rule is left),
or hold and drop them (fail closed). snitchctl reads the installed config for the fail mode
and, as root, the kernel's own rule (`iptables -S SNITCH_QUEUE` in mangle), which wins when the
two disagree: the rule in the kernel is what traffic meets. snitchctl imports nothing of
snitchd, so it reads `fail_mode` from the TOML file itself.
"""

from __future__ import annotations

import enum
import os
import subprocess
import tomllib
from dataclasses import dataclass
from typing import Any

from snitchctl.colour import Colour, Painter
from snitchctl.dates import local_time

__all__ = [
    "DEFAULT_CONFIG",
    "Offline",
    "QueueRule",
    "describe_offline",
    "offline_status",
    "read_queue_rule",
    "summary",
    "verbose_counters",
]

DEFAULT_CONFIG = "/etc/snitch/snitchd.toml"
QUEUE_CHAIN = "SNITCH_QUEUE"  # snitchd/netfilter.py names it; a test keeps the two in step


class QueueRule(enum.Enum):
    """snitchd's queue rule in the kernel, as iptables shows it."""

    BYPASS = "bypass"  # present, --queue-bypass: new flows pass while nobody reads
    HOLD = "hold"  # present without bypass: new flows are dropped while nobody reads
    ABSENT = "absent"  # no SNITCH_QUEUE chain: snitchd removed its rules (a clean stop)
    UNKNOWN = "unknown"  # could not be read (not root, or no iptables)


@dataclass(frozen=True, slots=True)
class Offline:
    """snitchd is not answering: the fail mode it was configured with, its rule in the
    kernel, and what that means for new connections now."""

    fail_mode: str
    config: str
    queue_rule: QueueRule
    meaning: str
    filtered: bool  # False: new connections pass unfiltered


def _iptables_s(chain: str, netns_cmd: tuple[str, ...]) -> list[str] | None:
    """`iptables -t mangle -S CHAIN` lines, or None when it could not be read."""
    argv = [*netns_cmd, "iptables", "-w", "5", "-t", "mangle", "-S", chain]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=10, check=False,
            env={**os.environ, "LANG": "C", "LC_ALL": "C"},
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.splitlines() if done.returncode == 0 else None


def read_queue_rule(netns_cmd: tuple[str, ...] = ()) -> QueueRule:
    """Ask iptables for snitchd's jump from OUTPUT and its queue chain (needs root, otherwise
    UNKNOWN). The jump first: iptables-nft 1.8.9 reports a missing chain as "incompatible",
    the same words as for a chain it cannot show."""
    output = _iptables_s("OUTPUT", netns_cmd)
    if output is None:
        return QueueRule.UNKNOWN
    if not any(line.endswith(f"-j {QUEUE_CHAIN}") for line in output):
        return QueueRule.ABSENT
    queue_lines = [ln for ln in _iptables_s(QUEUE_CHAIN, netns_cmd) or [] if "NFQUEUE" in ln]
    if not queue_lines:
        return QueueRule.ABSENT
    return QueueRule.BYPASS if all("--queue-bypass" in ln for ln in queue_lines) else QueueRule.HOLD


def _configured_fail_mode(path: str) -> str:
    """`fail_mode` from the installed config; "open" (snitchd's default) when unset or the
    file cannot be read, which the summary says."""
    try:
        with open(path, "rb") as f:
            value = tomllib.load(f).get("fail_mode", "open")
    except FileNotFoundError:
        return "open"  # no config file: snitchd runs on its defaults
    except (OSError, tomllib.TOMLDecodeError):
        return "unknown"
    return value if value in ("open", "closed") else "unknown"


def describe_offline(fail_mode: str, rule: QueueRule, config: str) -> Offline:
    """The sentence for each case; the kernel's rule, when known, wins over the config."""
    mode = f"fail_mode {fail_mode}" if fail_mode != "unknown" else f"{config} unreadable"
    if rule is QueueRule.BYPASS:
        meaning = (
            "new connections pass unfiltered "
            f"({mode}: the queue rule is in place with --queue-bypass)"
        )
        return Offline(fail_mode, config, rule, meaning, filtered=False)
    if rule is QueueRule.HOLD:
        meaning = (
            "new connections are held and dropped by the kernel "
            f"({mode}: nothing new gets out until snitchd is back; "
            "to let traffic through: systemctl start snitchd, or remove its rules)"
        )
        return Offline(fail_mode, config, rule, meaning, filtered=True)
    if rule is QueueRule.ABSENT:
        meaning = "new connections pass unfiltered (snitchd's rules are not in the kernel)"
        return Offline(fail_mode, config, rule, meaning, filtered=False)
    if fail_mode == "closed":
        meaning = (
            "new connections are held and dropped by the kernel if snitchd's rules are still "
            f"installed ({mode}; run as root to read the kernel's rules)"
        )
        return Offline(fail_mode, config, rule, meaning, filtered=True)
    meaning = f"new connections pass unfiltered ({mode}; run as root to read the kernel's rules)"
    return Offline(fail_mode, config, rule, meaning, filtered=False)


def offline_status(config: str | None = None) -> Offline:
    path = config or DEFAULT_CONFIG
    return describe_offline(_configured_fail_mode(path), read_queue_rule(), path)


def summary(s: dict[str, Any], paint: Painter) -> str:
    """The few lines a person needs: running since when, what happens to a flow no rule
    covers, what happens if snitchd stops, and what needs attention."""
    stopped = (
        "new connections would pass unfiltered"
        if s.get("fail_mode") == "open"
        else "new connections would be held and dropped"
    )
    asked = "asked of an agent, else " if s.get("agents", 0) else ""
    lines = [
        f"snitchd: {paint('running', Colour.GOOD)} since {local_time(s['started'])}"
        f" (version {s.get('version', '?')}, {s.get('backend', '?')})",
        f"new flows no rule covers: {asked}{s.get('default_action', '?')}",
        f"if snitchd stops: {stopped} (fail_mode {s.get('fail_mode', '?')})",
        f"rules: {s.get('rules', 0)}   agents: {s.get('agents', 0)}"
        f"   prompts waiting: {s.get('prompts_open', 0)}",
        f"flows: {s.get('accepted', 0)} allowed, {s.get('dropped', 0)} denied, "
        f"{s.get('rejected', 0)} rejected, {s.get('errors', 0)} errors",
    ]
    if s.get("attribution"):
        lines.append(f"attribution: {s['attribution']}")
    if s.get("sockets"):
        lines.append(f"datagram verdicts: {s['sockets']}")
    if s.get("fast_path"):
        passed = f" ({s.get('fast', 0)} connects passed by the kernel)" if s.get("fast") else ""
        lines.append(f"fast path: {s['fast_path']}{passed}")
    alerts = [
        f"rules: {s['rules_error']}" if s.get("rules_error") else "",
        f"log: {s['log_error']}" if s.get("log_error") else "",
        f"{s['log_rows_dropped']} log rows dropped" if s.get("log_rows_dropped") else "",
        f"{s['kernel_queue_dropped']} packets dropped by a full queue"
        if s.get("kernel_queue_dropped")
        else "",
        f"{s['datagrams_other_socket']} datagrams dropped: sent by another user's socket than "
        "the one snitchd named for their verdict (a port shared with SO_REUSEADDR)"
        if s.get("datagrams_other_socket")
        else "",
        f"{s['datagrams_over_limit']} datagrams dropped: their user was past new_flows_per_user"
        if s.get("datagrams_over_limit")
        else "",
        f"{s['flows_over_limit']} new flows dropped: their user (or container address) was "
        "past new_flows_per_user"
        if s.get("flows_over_limit")
        else "",
        f"{s['dns_queries_over_limit']} DNS queries dropped: their user (or container address) "
        "was past dns_queries_per_user"
        if s.get("dns_queries_over_limit")
        else "",
    ]
    for alert in filter(None, alerts):
        lines.append(f"{paint('alert', Colour.WARN)}: {alert}")
    return "\n".join(lines)


def verbose_counters(s: dict[str, Any]) -> str:
    """Every field as `key: value`, one a line, as `status` printed them before the summary
    (scripts that grep `^running: True` keep working with --verbose)."""
    shown = dict(s)
    shown["started"] = local_time(s["started"])
    return "\n".join(f"{k}: {v}" for k, v in sorted(shown.items()))
