"""The launcher install.sh puts in the desktop's app menu opens the Network Monitor, and
`--monitor` without a display says why it cannot instead of falling back to something else."""

from __future__ import annotations

import configparser
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENTRY = ROOT / "systemd" / "snitch-monitor.desktop"


def test_the_desktop_entry_runs_the_notifier_with_monitor() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(ENTRY)
    entry = parser["Desktop Entry"]
    assert entry["Type"] == "Application" and entry["Name"] == "snitch Network Monitor"
    argv = shlex.split(entry["Exec"])
    assert argv == ["/usr/local/bin/snitch-notifier", "--monitor"]
    assert entry["StartupWMClass"] == "snitch-monitor", "the name run_monitor gives Qt"
    assert "snitch-monitor.desktop" in (ROOT / "install.sh").read_text()


def test_monitor_without_a_display_fails_and_says_why() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.pop("QT_QPA_PLATFORM", None)
    done = subprocess.run(
        [sys.executable, "-m", "snitch_notifier.app", "--monitor"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "cannot open the Network Monitor: no display" in done.stderr
    assert "snitchctl top --live" in done.stderr
