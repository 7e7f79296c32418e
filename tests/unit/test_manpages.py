"""The man pages are made from the parsers, render with `man -l`, and show every subcommand,
its examples and the exit status (issue 20). install.sh runs the same two modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from snitchctl.examples import EXAMPLES, subcommands
from snitchctl.main import build_parser
from snitchd.config import Config

ROOT = Path(__file__).resolve().parents[2]
NO_MAN = pytest.mark.skipif(shutil.which("man") is None, reason="man-db is not installed")


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
    # As install.sh runs them.
    for argv in (
        ["snitchctl.manpages", str(out)],
        ["snitch_notifier.manpage", str(out)],
        ["snitchd.manpage", str(out), "--man5", str(out),
         "--config", str(ROOT / "systemd" / "snitchd.toml"),
         "--rules", str(ROOT / "docs" / "rules.md")],
    ):  # fmt: skip
        subprocess.run([sys.executable, "-m", *argv], check=True, timeout=60)
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


@NO_MAN
def test_snitchd_toml_5_documents_every_config_key(pages: Path) -> None:
    """Made from the shipped, commented config: a key added to Config but not to that file
    (so neither documented nor shown with its default) fails here."""
    text = render(pages / "snitchd.toml.5")
    assert text.startswith("SNITCHD.TOML(5)")
    for field in fields(Config):
        assert f"{field.name} = " in text, f"{field.name} is not in systemd/snitchd.toml"


@NO_MAN
def test_snitch_rules_5_and_snitch_notifier_1_render(pages: Path) -> None:
    rules = render(pages / "snitch-rules.5")
    assert "PRECEDENCE, IN ONE SENTENCE" in rules and 'ACTION   = "allow"' in rules
    assert "**" not in rules and "`" not in rules
    notifier = render(pages / "snitch-notifier.1")
    assert notifier.startswith("SNITCH-NOTIFIER(1)") and "--notifications" in notifier
