"""The desktop notifier against a real snitchd: a real client in the lab's namespace connects
somewhere new, the prompt reaches the notifier over the private system bus, a person answers
(a click in the offscreen popup, or a notification button), and the connection goes through.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from dbus_fast.aio import MessageBus
from PySide6.QtCore import Qt

from conftest import (
    PYTHON,
    VENV_BIN,
    Lab,
    netclient_who,
    popen_outcome,
    python_exe,
    spawn_connect,
)
from snitch_notifier.bridge import AgentBridge
from snitch_notifier.identity import desktop_identity
from snitch_notifier.lists import ConnectionsWindow, RulesWindow
from snitch_notifier.popup import PromptWindow
from tests.integration.notifierlab import registered, wired_notifier
from tests.support.lab import ROOT

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _notifyfake() -> ModuleType:
    """tests/notifier/notifyfake.py, loaded by path (that folder is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "notifyfake", ROOT / "tests" / "notifier" / "notifyfake.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def notifier(
    running: Lab, monkeypatch: pytest.MonkeyPatch, qtbot: Any
) -> Iterator[tuple[PromptWindow, AgentBridge]]:
    """The real popup and bridge, wired as the app wires them, registered with snitchd."""
    window, bridge = wired_notifier(running, monkeypatch, qtbot)
    with registered(bridge, qtbot):
        yield window, bridge


def _wait_for_prompt(qtbot: Any, window: PromptWindow) -> None:
    qtbot.waitUntil(lambda: window.current is not None, timeout=10_000)
    qtbot.waitUntil(window._allow.isEnabled, timeout=5_000)


def test_allow_forever_this_host_in_the_popup_makes_the_rule(
    running: Lab, notifier: tuple[PromptWindow, AgentBridge], qtbot: Any, tmp_path: Path
) -> None:
    window, bridge = notifier
    proc = spawn_connect(running, 80, timeout=10)
    _wait_for_prompt(qtbot, window)
    prompt = window.current
    assert prompt is not None
    assert (prompt.exe, prompt.dst, prompt.port, prompt.proto) == (
        python_exe(),
        "192.0.2.2",
        80,
        "tcp",
    )
    window._duration.setCurrentIndex(window._duration.findData("forever"))
    window._scope.setCurrentIndex(window._scope.findData("host"))
    assert window._scope.currentText() == "192.0.2.2, any port or protocol"
    assert window.grab().save(str(tmp_path / "e2e-popup.png"))
    with qtbot.waitSignal(bridge.answered, timeout=10_000) as answered:
        qtbot.mouseClick(window._allow, Qt.MouseButton.LeftButton)
    rule_id = answered.args[1]
    assert popen_outcome(proc) == "connected"
    rules = running.ctl_json("list-rules")
    assert [r["text"] for r in rules if r["id"] == rule_id] == [
        f"allow {netclient_who()} to=192.0.2.2"
    ]
    assert popen_outcome(spawn_connect(running, 9000, timeout=10)) == "connected", (
        "any port: no second prompt"
    )
    assert window.current is None

    recent = ConnectionsWindow(bridge)
    qtbot.addWidget(recent)
    with qtbot.waitSignal(bridge.log_listed, timeout=10_000):
        recent.refresh()
    qtbot.waitUntil(lambda: recent.table.rowCount() >= 2, timeout=5_000)
    rows = [[recent.table.item(r, c).text() for c in range(2, 4)] for r in range(2)]
    assert rows == [["192.0.2.2 9000/tcp", "allow"], ["192.0.2.2 80/tcp", "allow"]], "newest first"
    app = recent.table.item(0, 1).text()
    assert app.startswith(os.path.basename(python_exe()) + " ("), app
    assert recent.grab().save(str(tmp_path / "e2e-recent.png"))


def test_the_rules_window_lists_and_deletes(
    running: Lab, notifier: tuple[PromptWindow, AgentBridge], qtbot: Any, tmp_path: Path
) -> None:
    _, bridge = notifier
    rule_id = running.add_rule(f"allow app={python_exe()} to=192.0.2.2 port=443")
    rules = RulesWindow(bridge)
    qtbot.addWidget(rules)
    with qtbot.waitSignal(bridge.rules_listed, timeout=10_000):
        rules.refresh()
    qtbot.waitUntil(lambda: rules.table.rowCount() == 1, timeout=5_000)
    assert rules.table.item(0, 4).text() == f"allow app={python_exe()} to=192.0.2.2 port=443"
    assert rules.table.item(0, 3).text() == "uid 0"
    assert rules.table.item(0, 2).text() == "never" and rules.status.text() == "1 rule"
    assert rules.grab().save(str(tmp_path / "e2e-rules.png"))
    rules.table.selectRow(0)
    rules.delete.click()  # asks first (issue 18)
    assert rules.confirm is not None
    with qtbot.waitSignal(bridge.rule_deleted, timeout=10_000) as deleted:
        rules.confirm.accept()
    assert deleted.args == [rule_id]
    assert running.ctl_json("list-rules") == []
    qtbot.waitUntil(lambda: rules.table.rowCount() == 0, timeout=5_000)


def test_the_popup_registers_again_after_snitchd_restarts(
    running: Lab, notifier: tuple[PromptWindow, AgentBridge], qtbot: Any
) -> None:
    """snitchd keeps agents in memory: without a new registration, nobody would be asked."""
    window, bridge = notifier
    with qtbot.waitSignal(bridge.daemon_gone, timeout=20_000):
        running.stop_daemon()
    with qtbot.waitSignal(bridge.registered, timeout=20_000):
        running.start_daemon()
    proc = spawn_connect(running, 22, timeout=10)
    _wait_for_prompt(qtbot, window)
    with qtbot.waitSignal(bridge.answered, timeout=10_000):
        window.reject_connection()
    assert popen_outcome(proc) == "refused"


async def test_without_a_display_notifications_ask_and_answer(lab: Lab, tmp_path: Path) -> None:
    """The real `snitch-notifier`, as an unprivileged user with no DISPLAY: it says so in its
    log, registers as that user's agent, shows that user's prompt as a notification, and the
    notification's Allow lets the connection through with a rule limited to that user."""
    lab.start_daemon()
    fake = _notifyfake()
    session = fake.SessionBus(any_user=True)
    server_bus = await MessageBus(bus_address=session.address).connect()
    server = fake.FakeNotifications()
    server_bus.export("/org/freedesktop/Notifications", server)
    await server_bus.request_name("org.freedesktop.Notifications")
    env = {k: v for k, v in lab.env.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.pop("QT_QPA_PLATFORM", None)
    env["DBUS_SESSION_BUS_ADDRESS"] = session.address
    log_path = tmp_path / "notifier.log"
    with open(log_path, "w") as log:
        agent = subprocess.Popen(
            [*AS_NOBODY, str(VENV_BIN / "snitch-notifier")], env=env, stderr=log, stdout=log
        )
    proc: subprocess.Popen[str] | None = None
    try:
        await _until(lambda: "prompts of uid=65534 go to desktop" in log_path.read_text())
        proc = await asyncio.to_thread(spawn_connect, lab, 80, 10, AS_NOBODY)
        await _until(lambda: bool(server.notified))
        app = desktop_identity(python_exe()).name  # "Python (v3.11)" where Debian's entry is
        assert server.notified[0]["summary"] == f"{app} wants to connect to 192.0.2.2"
        server.ActionInvoked(server.notified[0]["id"], "allow")
        assert await asyncio.to_thread(popen_outcome, proc) == "connected"
        assert [r["text"] for r in lab.ctl_json("list-rules")] == [
            f"allow {netclient_who()} user=65534 to=192.0.2.2 port=80 proto=tcp"
        ]
    finally:
        for child in (agent, proc):
            if child is not None and child.poll() is None:
                child.terminate()
                child.communicate(timeout=10)
        server_bus.disconnect()
        session.stop()
    text = log_path.read_text()
    assert "no popup (no display: neither DISPLAY nor WAYLAND_DISPLAY is set)" in text, text
    assert "Traceback" not in text and "failed" not in text, text


async def _until(predicate: Any, timeout: float = 15) -> None:
    async def wait() -> None:
        while not predicate():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(wait(), timeout)


def test_the_popup_app_starts_registers_and_stops_on_sigterm(running: Lab, tmp_path: Path) -> None:
    """`snitch-notifier` itself: Qt starts (offscreen here), the agent registers, and SIGTERM
    (systemd stopping the session) ends it cleanly even though Qt's loop is C++."""
    env = running.env | {"QT_QPA_PLATFORM": "offscreen"}
    log_path = tmp_path / "notifier.log"
    with open(log_path, "w") as log:
        app = subprocess.Popen(
            [PYTHON, "-m", "snitch_notifier.app"], env=env, stderr=log, stdout=log
        )
    try:
        deadline = time.monotonic() + 20
        while "registered as the agent of uid=0" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()
            assert app.poll() is None, log_path.read_text()
            time.sleep(0.05)
        app.send_signal(signal.SIGTERM)
        assert app.wait(10) == 0
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
    text = log_path.read_text()
    assert "no system tray here" in text and "Traceback" not in text, text
