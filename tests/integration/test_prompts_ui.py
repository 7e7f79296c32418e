"""Issue 15 with a real snitchd and the real notifier: a deferred prompt keeps its flow held
past prompt_timeout and lets it go on the answer; an expired prompt still becomes a rule;
SIGTERM ends the notifier at once even with a prompt showing, and its prompt then goes to
snitchd's default.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt

from conftest import PYTHON, Lab, bare_reason, netclient_who, popen_outcome, spawn_connect
from snitch_common.client import Client
from snitch_common.errors import NotAuthorized
from snitch_notifier.bridge import AgentBridge
from snitch_notifier.popup import PromptWindow
from snitch_notifier.shields import Shield
from snitch_notifier.tray import Tray
from tests.integration.notifierlab import registered, wired_notifier

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

TIMEOUT = 2  # prompt_timeout here: short, so "held past it" is quick to see
HOLD_MAX = 60


@pytest.fixture
def notifier(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, qtbot: Any
) -> Iterator[tuple[PromptWindow, AgentBridge]]:
    """The real popup and bridge, wired as the app wires them, with a short prompt_timeout."""
    lab.start_daemon(prompt_timeout=TIMEOUT, prompt_hold_max=HOLD_MAX)
    window, bridge = wired_notifier(lab, monkeypatch, qtbot)
    with registered(bridge, qtbot):
        yield window, bridge


def _shown(qtbot: Any, window: PromptWindow) -> int:
    qtbot.waitUntil(lambda: window.pending.shown is not None, timeout=10_000)
    qtbot.waitUntil(window._allow.isEnabled, timeout=5_000)
    shown = window.pending.shown
    assert shown is not None
    return shown.id


async def _defer_as(lab: Lab, prompt_id: int) -> float:
    client = await Client.connect()
    try:
        return await client.defer_prompt(prompt_id)
    finally:
        client.close()


def test_a_deferred_prompt_holds_its_flow_and_the_answer_releases_it(
    lab: Lab, notifier: tuple[PromptWindow, AgentBridge], qtbot: Any
) -> None:
    window, bridge = notifier
    proc = spawn_connect(lab, 80)
    prompt_id = _shown(qtbot, window)
    with qtbot.waitSignal(bridge.deferred, timeout=10_000) as deferred:
        qtbot.mouseClick(window._later, Qt.MouseButton.LeftButton)
    assert deferred.args[0] == prompt_id and TIMEOUT < deferred.args[1] <= HOLD_MAX
    assert not window.isVisible() and [p.id for p in window.pending.aside] == [prompt_id]
    # Three prompt_timeouts later the flow still waits for the person, in the kernel.
    qtbot.wait(3 * TIMEOUT * 1000)
    assert proc.poll() is None, "the flow got the default while the prompt was deferred"
    assert window.pending.trace == [] and lab.log_rows() == []
    # Only the agent the prompt was sent to may hold it.
    with pytest.raises(NotAuthorized, match=f"no open prompt {prompt_id} for this agent"):
        asyncio.run(_defer_as(lab, prompt_id))
    window.bring_back(prompt_id)
    qtbot.waitUntil(window._allow.isEnabled, timeout=5_000)
    window._duration.setCurrentIndex(window._duration.findData("once"))
    with qtbot.waitSignal(bridge.answered, timeout=10_000):
        qtbot.mouseClick(window._allow, Qt.MouseButton.LeftButton)
    assert popen_outcome(proc) == "connected"
    (row,) = lab.log_rows()
    assert (row["action"], bare_reason(row)) == ("allow", "answered once")


def test_an_expired_prompt_is_shown_and_becomes_a_rule(
    lab: Lab, notifier: tuple[PromptWindow, AgentBridge], qtbot: Any
) -> None:
    """Nobody touched it: snitchd's default applies at prompt_timeout, the waiting list
    keeps a row "expired: denied by default", and answering that row makes the rule."""
    window, bridge = notifier
    expired: list[Any] = []
    window.expired.connect(expired.append)
    proc = spawn_connect(lab, 80, timeout=1)
    prompt_id = _shown(qtbot, window)
    qtbot.waitUntil(lambda: bool(expired), timeout=10_000)
    assert [(e.prompt.id, e.label) for e in expired] == [(prompt_id, "expired: denied by default")]
    assert popen_outcome(proc) == "timeout"
    window.bring_back(prompt_id)
    qtbot.waitUntil(window._allow.isEnabled, timeout=5_000)
    assert window._countdown.text() == "Expired: denied by default: your answer makes a rule"
    window._scope.setCurrentIndex(window._scope.findData("host"))
    with qtbot.waitSignal(bridge.answered, timeout=10_000) as answered:
        qtbot.mouseClick(window._allow, Qt.MouseButton.LeftButton)
    rules = lab.ctl_json("list-rules")
    assert [r["text"] for r in rules if r["id"] == answered.args[1]] == [
        f"allow {netclient_who()} to=192.0.2.2"
    ]
    assert popen_outcome(spawn_connect(lab, 80, timeout=5)) == "connected", (
        "the rule lets it through"
    )


def test_sigterm_with_a_prompt_showing_ends_the_notifier_at_once(
    running: Lab, tmp_path: Path
) -> None:
    """`systemctl --user stop` must not wait 90 s: the real snitch-notifier, with a prompt on
    screen, exits within 2 s of SIGTERM; it does not answer, so snitchd gives the prompt its
    default ("agent left")."""
    env = running.env | {"QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(tmp_path)}
    log_path = tmp_path / "notifier.log"
    with open(log_path, "w") as log:
        app = subprocess.Popen(
            [PYTHON, "-m", "snitch_notifier.app"], env=env, stderr=log, stdout=log
        )
    proc = None
    try:
        _wait_for(log_path, "registered as the agent of uid=0", app)
        proc = spawn_connect(running, 80, timeout=5)
        _wait_for(log_path, "prompt shown id=", app)
        app.send_signal(signal.SIGTERM)
        try:
            rc = app.wait(2)
        except subprocess.TimeoutExpired:
            rc = None
        assert rc == 0, (
            "snitch-notifier did not exit within 2 s of SIGTERM:\n" + log_path.read_text()
        )
        assert popen_outcome(proc) == "timeout"
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
    (row,) = running.log_rows()
    assert (row["action"], bare_reason(row)) == ("deny", "default: agent left")
    assert "Traceback" not in log_path.read_text()


def _wait_for(log_path: Path, text: str, app: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while text not in log_path.read_text():
        assert time.monotonic() < deadline, log_path.read_text()
        assert app.poll() is None, log_path.read_text()
        time.sleep(0.05)


def test_the_tray_shows_when_snitchd_is_gone(
    lab: Lab, notifier: tuple[PromptWindow, AgentBridge], qtbot: Any
) -> None:
    """The shield turns daemon-down when snitchd's bus name goes, and back when it returns
    and the notifier registered again."""
    window, bridge = notifier
    tray = Tray(bridge, window)
    bridge.registered.emit(0)  # the registration happened before the tray was made
    qtbot.waitUntil(lambda: tray.state is Shield.WATCHING, timeout=5_000)
    lab.stop_daemon()
    qtbot.waitUntil(lambda: tray.state is Shield.DAEMON_DOWN, timeout=20_000)
    assert "snitchd stopped" in tray.icon.toolTip()
    lab.start_daemon(prompt_timeout=TIMEOUT, prompt_hold_max=HOLD_MAX)
    qtbot.waitUntil(lambda: tray.state is Shield.WATCHING, timeout=20_000)


@pytest.mark.slow
def test_five_prompts_at_once_are_all_answered_none_expire(
    lab: Lab, notifier: tuple[PromptWindow, AgentBridge], qtbot: Any
) -> None:
    """Five apps ask at once; a scripted person reads each prompt, opens the For list, picks
    "once" and clicks Allow, taking about four prompt_timeouts for all five: every one is
    answered (the first touch held all five at snitchd), none got the default."""
    window, bridge = notifier
    expired: list[Any] = []
    window.expired.connect(expired.append)
    ports = (22, 80, 443, 8080, 9000)
    clients = [spawn_connect(lab, port) for port in ports]
    qtbot.waitUntil(lambda: len(window.pending.queue) == len(ports), timeout=15_000)
    answered: list[int] = []
    bridge.answered.connect(lambda answer, _: answered.append(answer.prompt_id))
    for n in range(len(ports)):
        _shown(qtbot, window)
        qtbot.wait(400)  # reads it
        qtbot.mouseClick(window._duration, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(window._duration.view().isVisible, timeout=2_000)
        qtbot.wait(600)  # thinks
        qtbot.keyClick(window._duration.view(), Qt.Key.Key_Home)
        qtbot.keyClick(window._duration.view(), Qt.Key.Key_Return)
        assert window._duration.currentData() == "once"
        qtbot.mouseClick(window._allow, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda n=n: len(answered) == n + 1, timeout=10_000)
    assert expired == []
    assert [popen_outcome(c) for c in clients] == ["connected"] * len(ports)
    rows = lab.log_rows()
    assert sorted(r["dport"] for r in rows) == sorted(ports)
    assert {(r["action"], bare_reason(r)) for r in rows} == {("allow", "answered once")}
