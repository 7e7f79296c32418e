"""What each subcommand's `--help` ends with: a one-line description and worked examples.

People learn a command from its examples (ufw, firewall-cmd and systemctl all print them), so
every subcommand has some; `tests/unit/test_ctl_help.py` fails for one that has none. They are
kept here, apart from the parser, so a new subcommand adds a line to `EXAMPLES` and nothing else.
"""

from __future__ import annotations

import argparse
import textwrap

__all__ = ["EXAMPLES", "EXIT_CODES", "HelpFormatter", "add_examples", "subcommands"]

EXIT_CODES = """exit codes:
  0  ok
  1  failed, or a query answered "no"
  2  usage (a bad option or rule text)
  3  snitchd unreachable (not running, or no system bus)
  4  not authorized (an admin-only action, or the D-Bus policy refused)"""

EXAMPLES: dict[str, tuple[str, ...]] = {
    "list-rules": (
        "snitchctl list-rules",
        "snitchctl --json list-rules | jq -r '.[].text'",
    ),
    "add-rule": (
        "snitchctl add-rule allow app=/usr/bin/curl to=*.debian.org port=443",
        "snitchctl add-rule 'deny app=/usr/bin/python3.11 for=60m'",
        "snitchctl add-rule --exe /usr/bin/ssh --port 22 --action allow",
        "snitchctl add-rule --any-app --dst 203.0.113.0/24 --action reject",
    ),
    "delete-rule": ("snitchctl delete-rule 12",),
    "log": (
        "snitchctl log --app curl --since 1h",
        "snitchctl log --verdict deny --limit 20",
        "snitchctl log --host '*.example.org'",
        "snitchctl --json log | jq '.[] | select(.action == \"deny\")'",
    ),
    "top": ("snitchctl top --since 1d", "snitchctl top --live"),
    "monitor": ("snitchctl monitor", "snitchctl --json monitor | jq -c '{exe, dst, action}'"),
    "status": ("snitchctl status", "snitchctl status --verbose", "snitchctl --json status"),
    "metrics": (
        "snitchctl metrics",
        "snitchctl metrics | grep snitch_flows_total",
    ),
    "agent": ("snitchctl agent",),
    "doctor": ("sudo snitchctl doctor", "sudo snitchctl doctor --database /tmp/copy.db"),
    "explain": (
        "snitchctl explain --exe /usr/bin/curl --dst 203.0.113.5 --port 443",
        "snitchctl explain --exe /usr/bin/curl --uid 1000 --dst api.example.org --port 443",
        "snitchctl explain --dst 198.51.100.7 --port 53 --proto udp --uid 1000",
        "snitchctl explain --container web-1 --runtime docker --dst 198.51.100.7 --port 443",
    ),
    "lists": (
        "snitchctl lists",
        "sudo snitchctl lists add ads https://example.org/hosts",
        "sudo snitchctl lists add bad-nets /etc/snitch/nets.txt --format ips",
        "snitchctl lists show ads",
        "sudo snitchctl lists update",
        "sudo snitchctl lists remove ads",
    ),
    "edit-rule": (
        "snitchctl edit-rule 3 'deny app=/usr/bin/wget'",
        "snitchctl edit-rule 3 --note 'the updater'",
    ),
    "disable-rule": ("snitchctl disable-rule 3",),
    "enable-rule": ("snitchctl enable-rule 3",),
    "check-rules": (
        "snitchctl check-rules office.rules",
        "snitchctl check-rules /etc/snitch/rules.d/office.rules",
    ),
    "export": ("snitchctl export > backup.rules", "snitchctl export --format json"),
    "import": ("snitchctl import --dry-run backup.rules", "snitchctl import backup.rules"),
    "mode": (
        "snitchctl mode",
        "sudo snitchctl mode learn",
        "sudo snitchctl mode silent-allow --for 15m",
        "sudo snitchctl mode silent-deny",
    ),
    "proposals": ("snitchctl proposals", "snitchctl --json proposals"),
    "accept-proposals": (
        "sudo snitchctl accept-proposals 1 2 5",
        "sudo snitchctl accept-proposals --all",
    ),
    "reject-proposals": (
        "sudo snitchctl reject-proposals 4",
        "sudo snitchctl reject-proposals --all",
    ),
    "profile": (
        "snitchctl profile list",
        "sudo snitchctl profile create public --mode silent-deny --ssid CafeWiFi",
        "sudo snitchctl profile create home --gateway 02:00:00:00:00:01",
        "sudo snitchctl profile activate home",
        "sudo snitchctl add-rule --profile home 'allow app=/usr/bin/kdeconnectd'",
    ),
}


class HelpFormatter(argparse.HelpFormatter):
    """Wraps prose paragraphs to the terminal, keeps indented ones (examples, exit codes) as
    written: argparse's Raw formatter would leave long descriptions unwrapped."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in text.split("\n\n"):
            if any(line.startswith(" ") for line in para.splitlines()):
                out.append(textwrap.indent(para, indent))
            else:
                out.append(textwrap.fill(" ".join(para.split()), width, initial_indent=indent,
                                         subsequent_indent=indent))  # fmt: skip
        return "\n\n".join(out)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each subcommand's name and parser, in the order `--help` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def add_examples(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand a description (its one-line help, when it has none of its own)
    and an epilog of examples, formatted as written."""
    helps = _helps(parser)
    for name, sub in subcommands(parser).items():
        if not sub.description and helps.get(name):
            text = helps[name]
            sub.description = text[0].upper() + text[1:] + "."
        examples = EXAMPLES.get(name, ())
        if examples:
            sub.epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
        sub.formatter_class = HelpFormatter
    parser.formatter_class = HelpFormatter
    lines = [f"  {EXAMPLES[n][0]}" for n in ("status", "log", "add-rule") if n in EXAMPLES]
    parser.epilog = (
        "examples:\n" + "\n".join(lines) + "\n\n"
        "'snitchctl COMMAND --help' shows each command's options and examples.\n\n" + EXIT_CODES
    )
