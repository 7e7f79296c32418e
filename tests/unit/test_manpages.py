"""The man pages are made from the parsers, render with `man -l`, and show every subcommand,
its examples and the exit status (issue 20). install.sh runs the same two modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from snitchctl.examples import EXAMPLES, subcommands
from snitchctl.main import build_parser


def render(page: Path) -> str:
    done = subprocess.run(
        ["man", "-l", "-P", "cat", str(page)],
        capture_output=True, text=True, check=True, timeout=60,
        env={**os.environ, "MANWIDTH": "100", "LANG": "C.UTF-8", "MAN_KEEP_FORMATTING": ""},
    )  # fmt: skip
    assert "warning" not in done.stderr.lower(), done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("man")
    for module in ("snitchctl.manpages", "snitchd.manpage"):
        subprocess.run([sys.executable, "-m", module, str(out)], check=True, timeout=60)
    return out


@pytest.mark.skipif(shutil.which("man") is None, reason="man-db is not installed")
def test_snitchctl_1_has_every_subcommand_and_its_examples(pages: Path) -> None:
    text = render(pages / "snitchctl.1")
    assert text.startswith("SNITCHCTL(1)")
    for name in subcommands(build_parser()):
        assert f"snitchctl {name}" in text, name
    for example in (e for examples in EXAMPLES.values() for e in examples):
        assert example in text, example
    for heading in ("EXIT STATUS", "ENVIRONMENT", "NO_COLOR", "SEE ALSO"):
        assert heading in text


@pytest.mark.skipif(shutil.which("man") is None, reason="man-db is not installed")
def test_snitchd_8_has_its_options_signals_and_journal_fields(pages: Path) -> None:
    text = render(pages / "snitchd.8")
    assert text.startswith("SNITCHD(8)")
    for word in ("--check-config", "SIGHUP", "SNITCH_EVENT", "metrics_file", "EXIT STATUS"):
        assert word in text, word
