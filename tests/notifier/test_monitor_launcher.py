"""The launcher install.sh puts in the desktop's app menu opens the Network Monitor, and
`--monitor` without a display says why it cannot instead of falling back to something else.

The entry must be one a desktop takes (`desktop-file-validate`, hints included: a hint about
categories is a menu entry shown twice), install.sh must install it where menus look, and its
Exec, run as the menu would, must open the window: seen from the bus, where the window's feed
(started only when the window is shown) subscribes to snitchd's rates.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.lab import Bus, stop_process

ROOT = Path(__file__).resolve().parents[2]
ENTRY = ROOT / "systemd" / "snitch-monitor.desktop"
INSTALLED_AT = "/usr/local/bin/snitch-notifier"  # where install.sh links the venv's script


def _entry() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    assert parser.read(ENTRY), f"missing: {ENTRY}"
    return parser["Desktop Entry"]


def test_the_desktop_entry_runs_the_notifier_with_monitor() -> None:
    entry = _entry()
    assert entry["Type"] == "Application" and entry["Name"] == "snitch Network Monitor"
    argv = shlex.split(entry["Exec"])
    assert argv == [INSTALLED_AT, "--monitor"]
    assert entry["StartupWMClass"] == "snitch-monitor", "the name run_monitor gives Qt"


def test_install_sh_puts_the_entry_in_the_menu_and_the_command_it_runs() -> None:
    """What install.sh does for the launcher, read from the script (the lab's staging-root
    install, tests/integration/test_lifecycle.py, checks the file lands there)."""
    script = (ROOT / "install.sh").read_text()
    placed = re.search(
        r'install -D -m 0644 "\$HERE/systemd/snitch-monitor\.desktop" \\\s*'
        r'"\$ROOT/usr/local/share/applications/snitch-monitor\.desktop"',
        script,
    )
    assert placed, "install.sh must install the entry in /usr/local/share/applications"
    assert re.search(r"for cmd in [^;]*\bsnitch-notifier\b", script)
    assert 'ln -sf "$PREFIX/venv/bin/$cmd" "$ROOT/usr/local/bin/$cmd"' in script
    assert "snitch-monitor.desktop" in _uninstalled(script), "--uninstall must remove it"


def _uninstalled(script: str) -> str:
    """The files --uninstall removes: install.sh's FILES list."""
    start = script.index('FILES="')
    return script[start : script.index('"', start + len('FILES="'))]


@pytest.mark.skipif(not shutil.which("desktop-file-validate"), reason="needs desktop-file-utils")
@pytest.mark.parametrize("entry", sorted(ENTRY.parent.glob("*.desktop")), ids=lambda p: p.name)
def test_every_desktop_entry_is_valid_without_hints(entry: Path) -> None:
    """The monitor's launcher and snitch's other two entries (the app menu's "snitch", the
    notifier's autostart)."""
    done = subprocess.run(
        ["desktop-file-validate", str(entry)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="watches a private bus: needs root (its policy)")
@pytest.mark.skipif(not shutil.which("dbus-daemon"), reason="needs dbus-daemon")
@pytest.mark.timeout(90)
def test_the_entry_s_command_opens_the_monitor_window() -> None:
    """The Exec line, its program taken from this venv (install.sh links it at INSTALLED_AT),
    run offscreen on a private bus with no snitchd: the window opens, and its feed (started
    when it is shown) asks snitchd for rates; Ctrl-C then closes it cleanly."""
    argv = shlex.split(_entry()["Exec"])
    assert argv[0] == INSTALLED_AT
    program = Path(sys.executable).parent / Path(argv[0]).name
    bus = Bus()
    watcher = monitor = None
    try:
        watcher = subprocess.Popen(
            ["dbus-monitor", "--address", bus.address, "type='method_call',member='MonitorRates'"],
            stdout=subprocess.PIPE,
            text=True,
        )
        asked = threading.Event()

        def read() -> None:
            assert watcher is not None and watcher.stdout is not None
            for line in watcher.stdout:
                if "member=MonitorRates" in line and "org.snitch.Firewall1" in line:
                    asked.set()

        threading.Thread(target=read, daemon=True).start()
        env = os.environ | {
            "QT_QPA_PLATFORM": "offscreen",
            "DBUS_SYSTEM_BUS_ADDRESS": bus.address,
        }
        monitor = subprocess.Popen(
            [str(program), *argv[1:]], env=env, stderr=subprocess.PIPE, text=True
        )
        assert asked.wait(60), f"the window did not open (exit {monitor.poll()})"
        monitor.send_signal(signal.SIGINT)
        _, err = monitor.communicate(timeout=30)
        assert monitor.returncode == 0, err
    finally:
        for proc in (monitor, watcher):
            if proc is not None:
                stop_process(proc, 5)
                for pipe in (proc.stdout, proc.stderr):
                    if pipe is not None:
                        pipe.close()
        bus.stop()


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
