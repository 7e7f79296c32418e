"""Rules as text files: one rule per line, `#` comments (issue 18).

The format of `/etc/snitch/rules.d/*.rules`, of `snitchctl export` and of `snitchctl import`:
each line is a rule in its text form (docs/rules.md), blank lines and lines starting with `#`
are skipped, and a `#` after the rule (outside quotes) starts its note. A file is taken whole or
not at all: `read_rules` returns every bad line with its number and reason, so `check-rules`
can list them all and snitchd can refuse the file and keep the rules it had. Pure: the caller
reads the file.
"""

from __future__ import annotations

from dataclasses import dataclass

from snitch_common.errors import RuleError
from snitch_common.rules import Lifetime, Rule, parse_rule

__all__ = [
    "MAX_NOTE",
    "BadLine",
    "RuleFileError",
    "RuleLine",
    "check_note",
    "format_rule_line",
    "parse_rules_text",
    "read_rules",
]

MAX_LINE = 4096  # characters: far above any rule, low enough that a bad file fails fast
MAX_NOTE = 1000  # characters of a rule's note


@dataclass(frozen=True, slots=True)
class RuleLine:
    """A rule read from a file, with its line number and the note after its `#`."""

    line: int
    rule: Rule
    note: str = ""


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that is not a rule, and why."""

    line: int
    text: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class RuleFileError(RuleError):
    """A rules file with bad lines: it is refused as a whole."""

    def __init__(self, name: str, bad: tuple[BadLine, ...]) -> None:
        shown = "; ".join(str(b) for b in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        super().__init__(
            f"cannot load rules file {name}: {shown}{more} (fix the lines; check with: "
            f"snitchctl check-rules {name})"
        )
        self.name = name
        self.bad = bad


def check_note(note: str) -> None:
    """A note is written after `#` on its rule's line of an exported file: a line break of
    any kind (\u2028 too), or another control character, would end or garble that line. The
    store checks every note it keeps; `read_rules` every note it reads."""
    if len(note) > MAX_NOTE or not note.isprintable():
        bad = next((c for c in note if not c.isprintable()), "")
        what = f" ({bad!r} is not a printable character)" if bad else ""
        raise RuleError(
            f"invalid note: at most {MAX_NOTE} characters on one line, all printable{what}"
        )


def _split_comment(line: str) -> tuple[str, str]:
    """The rule part and the comment of a line: `#` at its start or after an unescaped blank,
    outside quotes (a path may hold `#`: `app='/opt/a#b'`, `app=/opt/a\\ #b`)."""
    quote = ""
    escaped = False
    blank = True  # the line's start, or an unescaped blank outside quotes, is just before
    for i, ch in enumerate(line):
        literal = escaped
        if escaped:
            escaped = False
        elif ch == "\\" and quote != "'":
            escaped = True
        elif quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and blank:
            return line[:i].strip(), line[i + 1 :].strip()
        blank = ch in " \t" and not quote and not literal
    return line.strip(), ""


def read_rules(text: str, *, lasting_only: bool = True) -> tuple[list[RuleLine], list[BadLine]]:
    """Every rule of a file's text, and every bad line. `lasting_only`: a file holds rules
    that last (for=forever): one for a while or a process has no place in configuration."""
    rules: list[RuleLine] = []
    bad: list[BadLine] = []
    # Lines end at "\n" (and "\r\n") only: str.splitlines also breaks at \x0b, \x0c,
    # \x1c-\x1e, \x85, \u2028 and \u2029, so a note holding one became a rule of its own.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the file's last "\n" ends a line, it does not start one
    for number, raw in enumerate((ln.removesuffix("\r") for ln in lines), start=1):
        if len(raw) > MAX_LINE:
            bad.append(BadLine(number, raw[:80], f"longer than {MAX_LINE} characters"))
            continue
        body, note = _split_comment(raw)
        if not body:
            continue
        try:
            rule = parse_rule(body)
            check_note(note)  # it is kept with the rule (import, rules.d)
        except RuleError as exc:
            bad.append(BadLine(number, raw, exc.message))
            continue
        if lasting_only and (rule.lifetime is not Lifetime.FOREVER or rule.pid is not None):
            bad.append(BadLine(number, raw, "a rules file holds lasting rules: drop for="))
            continue
        rules.append(RuleLine(number, rule, note))
    return rules, bad


def parse_rules_text(text: str, name: str) -> list[RuleLine]:
    """The rules of a file, or `RuleFileError` naming every bad line."""
    rules, bad = read_rules(text)
    if bad:
        raise RuleFileError(name, tuple(bad))
    return rules


def format_rule_line(text: str, note: str = "") -> str:
    """A rule as a line of a rules file: its text, then its note after `# `."""
    return f"{text}  # {note}" if note else text
