"""Views that follow snitchd live (`snitchctl monitor`, `snitchctl top --live`, the Network
Monitor) and the terminal agent follow it through a restart, and believe only it.

A subscription is kept in snitchd's memory: a restarted snitchd has none, so a view that kept
waiting on its old connection showed the last rates for ever and no new decision. Each view
must say snitchd left, subscribe again when it is back, and show what the new one decides.
Signals to a connection pass the system bus's default policy from anyone, so an unprivileged
user could write rows into another user's monitor ("allow" for an app that made no
connection), rates into their window, or tell them snitchd left: each view takes a signal only
from the snitchd it subscribed to, and a name change only from the bus itself (forger.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import FORGED_APP, HERE, PYTHON, VENV_BIN, Lab, Terminal, forge
from snitch_notifier.monitor import MonitorWindow
from snitchctl.live import LiveTop
from tests.support.lab import Lines, end_child

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="makes network namespaces: needs root"),
    pytest.mark.timeout(180),
]

WAITING = "waiting for snitchd…"  # the window's "Now" line while no snitchd feeds it
# The app is a copy of the base interpreter: it finds dnspython in the venv through this.
APP_ENV = os.environ | {"PYTHONPATH": sysconfig.get_paths()["purelib"]}


def test_monitor_in_a_terminal_follows_snitchd_through_a_restart_and_shows_no_forged_row(
    running: Lab,
) -> None:
    running.add_rule("allow port=80")
    terminal = Terminal([str(VENV_BIN / "snitchctl"), "monitor"], running.env)
    try:
        terminal.read_until(b"monitoring new connections")
        forge(running)
        assert running.py("tcp", "192.0.2.2", 80) == "connected"
        text = terminal.read_until(b"192.0.2.2:80")
        assert FORGED_APP not in text and "snitchd stopped" not in text, text

        running.stop_daemon()
        terminal.read_until(b"snitchd stopped: waiting for it")
        running.start_daemon()
        terminal.read_until(b"monitoring new connections again")
        assert running.py("tcp", "192.0.2.2", 80) == "connected"
        deadline = time.monotonic() + 10
        while terminal.screen.count(b"192.0.2.2:80") < 2:  # the new snitchd's decision
            assert time.monotonic() < deadline, terminal.screen.decode(errors="replace")
            terminal.shows(b"")
            time.sleep(0.1)
        assert FORGED_APP.encode() not in terminal.screen
    finally:
        terminal.close()


def test_the_terminal_agent_registers_again_with_a_restarted_snitchd(running: Lab) -> None:
    """snitchd keeps its agents in memory: `snitchctl agent` must register with the new one,
    or every prompt after a restart would go unseen and get the default."""
    terminal = Terminal([str(VENV_BIN / "snitchctl"), "agent"], running.env)
    try:
        terminal.read_until(b"waiting for prompts")
        running.stop_daemon()
        terminal.read_until(b"snitchd stopped: waiting for it")
        running.start_daemon()
        terminal.read_until(b"snitchd restarted: agent for uid 0 again")
        with running.spawn_client("tcp", "192.0.2.2", "443", "--timeout", "10") as proc:
            text = terminal.read_until(b"answer> ")
            assert "192.0.2.2 port 443/tcp" in text, text
            terminal.type("a 15m host\n")
            terminal.read_until(b"rule ")
            out, _ = proc.communicate(timeout=20)
        assert out.strip() == "connected"
    finally:
        terminal.close()


def _traffic(lab: Lab, exe: str) -> subprocess.Popen[str]:
    """trafficapp.py under `exe`: connects, sends, and keeps a trickle going until stdin ends."""
    argv = [exe, str(HERE / "trafficapp.py"), "api.example.org", "9000", "100000", "2"]
    return subprocess.Popen(
        ["ip", "netns", "exec", lab.client, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=APP_ENV,
    )


def _app(tmp_path: Path, name: str) -> str:
    exe = tmp_path / name
    shutil.copy(os.path.realpath(PYTHON), exe)
    return str(exe)


@pytest.fixture
def traffic_lab(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> Lab:
    """snitchd running, this process on its bus, and trafficapp.py's flows allowed."""
    lab.start_daemon()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", lab.env["DBUS_SYSTEM_BUS_ADDRESS"])
    lab.add_rule("allow to=192.0.2.2 port=53 proto=udp")
    lab.add_rule("allow port=9000")
    return lab


@pytest.mark.slow  # ~15 s; the terminal tests above cover the same client code in the suite
def test_the_network_monitor_says_snitchd_left_and_shows_the_new_one_s_rates_only(
    traffic_lab: Lab, qtbot: Any, tmp_path: Path
) -> None:
    lab = traffic_lab
    exe = _app(tmp_path, "after-restart")
    window = MonitorWindow()
    qtbot.addWidget(window)
    window.resize(1180, 800)
    window.show()
    sender = None
    try:
        connected = lambda: window.now.text() != WAITING  # noqa: E731 - `_connected` sets it
        qtbot.waitUntil(connected, timeout=20_000)
        forge(lab)
        qtbot.wait(500)
        assert all(key.app != FORGED_APP for key in window.live), window.live
        assert "snitchd stopped" not in window.status.text()

        lab.stop_daemon()
        qtbot.waitUntil(lambda: "snitchd stopped" in window.status.text(), timeout=10_000)
        assert window.now.text() == WAITING and not window.live
        window.grab().save(str(tmp_path / "monitor-snitchd-stopped.png"))

        lab.start_daemon()
        try:  # the feed tries again every 5 s while snitchd is away
            qtbot.waitUntil(connected, timeout=30_000)
        except Exception:
            raise AssertionError(window.status.text()) from None
        sender = _traffic(lab, exe)
        said = Lines(sender)
        assert said.next(30) == "connected"
        qtbot.waitUntil(
            lambda: any(k.app == exe and a.rate_out > 0 for k, a in window.live.items()),
            timeout=30_000,
        )
        assert "<b>Now</b>" in window.now.text()
        window.grab().save(str(tmp_path / "monitor-after-restart.png"))
    finally:
        window.close()
        if sender is not None:
            end_child(sender)


@pytest.mark.slow  # as the Network Monitor's: CI runs it after the suite
async def test_top_live_says_snitchd_left_and_takes_the_new_one_s_rates(
    traffic_lab: Lab, tmp_path: Path
) -> None:
    lab = traffic_lab
    exe = _app(tmp_path, "top-after-restart")
    app = LiveTop()
    sender = None
    try:
        async with app.run_test(size=(100, 24)) as pilot:
            lab.stop_daemon()
            for _ in range(100):  # bounded: up to ~10 s
                if app.stopped:
                    break
                await pilot.pause(0.1)
            assert app.stopped
            title = str(app.query_one("#title").render())
            assert "snitchd stopped" in title, title
            app.save_screenshot("top-stopped.svg", str(tmp_path))

            lab.start_daemon()
            sender = _traffic(lab, exe)
            assert Lines(sender).next(30) == "connected"
            for _ in range(300):  # bounded: up to ~30 s for the new snitchd's rates
                line = app.lines.get(exe)
                if not app.stopped and line is not None and line.flows > 0:
                    break
                await pilot.pause(0.1)
            else:
                raise AssertionError(f"no rates after the restart: {app.lines}")
            app.save_screenshot("top-after-restart.svg", str(tmp_path))
            await pilot.press("q")
    finally:
        if sender is not None:
            end_child(sender)
