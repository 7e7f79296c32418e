"""Man pages from the programs' own parsers (argparse-manpage), written at install time.

The options and subcommands come from the parser a program really uses, so the page cannot
drift from `--help`; what a parser cannot say (exit status, files, environment, examples) is
given as extra sections by each program's own module (`snitchctl.manpages`, `snitchd.manpage`).
argparse-manpage is imported only here, only when a page is made.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from snitch_common import __version__

__all__ = ["Page", "render_page", "write_page"]


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


def write_page(page: Page, directory: Path) -> Path:
    """Write the page into `directory` (created if needed); returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / page.filename
    path.write_text(render_page(page))
    return path
