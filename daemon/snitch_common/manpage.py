"""Man pages from the programs' own parsers (argparse-manpage), written at install time.

The options and subcommands come from the parser a program really uses, so the page cannot
drift from `--help`; what a parser cannot say (exit status, files, environment, examples) is
given as extra sections by each program's own module (`snitchctl.manpages`, `snitchd.manpage`).
argparse-manpage is imported only here, only when a page is made.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from snitch_common import __version__

__all__ = [
    "Page",
    "config_to_roff",
    "markdown_to_roff",
    "render_page",
    "roff_escape",
    "text_page",
    "write_page",
]


@dataclass(frozen=True, slots=True)
class Page:
    """One man page: the parser, its section, the NAME line, and extra sections as
    (heading, roff text) in order."""

    parser: argparse.ArgumentParser
    section: int
    summary: str
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def filename(self) -> str:
        return f"{self.parser.prog}.{self.section}"


def render_page(page: Page) -> str:
    from argparse_manpage.manpage import Manpage  # noqa: PLC0415 - only when a page is made

    page.parser.epilog = None  # the epilog is --help's; the page has its own sections
    if any(heading == "description" for heading, _ in page.extra):
        page.parser.description = None  # the page's own, longer description replaces it
    man = Manpage(
        page.parser,
        _data={
            "manual_section": page.section,
            "manual_title": "snitch manual",
            "project_name": "snitch",
            "version": __version__,
            "description": page.summary,
        },
    )
    for heading, text in page.extra:
        man.add_section(heading, ">", text)
    return str(man)


def text_page(name: str, section: int, summary: str, sections: tuple[tuple[str, str], ...]) -> str:
    """A page that is not a program's (a file format): NAME and the given roff sections."""
    head = [
        f'.TH {name.upper()} "{section}" "" "snitch {__version__}" "snitch manual"',
        ".SH NAME",
        f"{roff_escape(name)} \\- {roff_escape(summary)}",
    ]
    body = [f".SH {heading.upper()}\n{text}" for heading, text in sections]
    return "\n".join(head + body) + "\n"


def write_page(page: Page, directory: Path) -> Path:
    """Write the page into `directory` (created if needed); returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / page.filename
    path.write_text(render_page(page))
    return path


def roff_escape(text: str) -> str:
    """Plain text for roff: backslashes and hyphens escaped, no line starting with a control
    character (. or ')."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + ln if ln.startswith((".", "'")) else ln for ln in text.split("\n"))


def _inline(text: str) -> str:
    """Markdown's `code` in bold, [text](link) as its text; the rest escaped."""
    text = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", text).replace("**", "")
    parts = text.split("`")
    return "".join(
        f"\\fB{roff_escape(p)}\\fR" if i % 2 else roff_escape(p) for i, p in enumerate(parts)
    )


def markdown_to_roff(markdown: str) -> str:
    """The small Markdown our docs use (## headings, paragraphs, ``` blocks, lists, tables)
    as man page body text; the first-level heading is left out (the page has NAME)."""
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            block = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                block.append(lines[i])
                i += 1
            out += [".PP", ".nf", ".RS 4", roff_escape("\n".join(block)), ".RE", ".fi"]
        elif line.startswith("# "):
            pass
        elif line.startswith("#"):
            out.append(f".SH {roff_escape(line.lstrip('#').strip().upper())}")
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                out.append(".br\n" + "  ".join(_inline(c) for c in cells))
        elif line.startswith(("- ", "* ")):
            out += [".IP \\(bu 2", _inline(line[2:])]
        elif not line.strip():
            out.append(".PP")
        else:
            out.append(_inline(line.strip()))
        i += 1
    return "\n".join(out)


def config_to_roff(toml_text: str) -> str:
    """The shipped, commented config as OPTIONS: each key with its default and the comment
    above it, so snitchd.toml(5) is the file an admin edits, never a second copy."""
    out: list[str] = [".ad l", ".nh"]  # left-aligned, unhyphenated: keys stay greppable
    comment: list[str] = []
    lines = toml_text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("#"):
            comment.append(line.lstrip("#").strip())
        elif "=" in line:
            setting = [line]
            if line.rstrip().endswith("["):  # a list over several lines
                while i + 1 < len(lines) and not setting[-1].startswith("]"):
                    i += 1
                    setting.append(lines[i].strip())
            key = roff_escape(" ".join(setting))
            out += [".TP", f"\\fB{key}\\fR", roff_escape(" ".join(comment))]
            comment = []
        elif comment and len(out) == 2:  # the file's opening comment: a paragraph of its own
            out += [roff_escape(" ".join(comment)), ".PP"]
            comment = []
        i += 1
    return "\n".join(out)
