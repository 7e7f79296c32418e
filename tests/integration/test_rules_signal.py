"""snitchd's `RulesChanged` signal on the lab's private bus, under the real D-Bus policy (issue 19).

A listener run as an unprivileged user hears every change, whoever made it: a rule added and
one deleted with snitchctl, rules from a file dropped in rules.d (then the reload that reads
it), with ids only, and a count with no gap. The Network Monitor window, with its refresh
timer stopped (nothing polls), shows in its Rules tab a rule made elsewhere and loses one
deleted elsewhere. A screenshot of that tab is saved in the test's tmp dir.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import HERE, PYTHON, Lab, python_exe
from snitch_notifier.monitor import MonitorWindow
from tests.support.lab import Lines, end_child, wait_for

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="makes network namespaces: needs root"),
    pytest.mark.timeout(180),
]

SERVER = "192.0.2.2"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
FIELDS = {"generation", "changed", "removed", "everything"}


def _listener(lab: Lab) -> tuple[subprocess.Popen[str], Lines]:
    proc = subprocess.Popen(
        [*NOBODY, PYTHON, str(HERE / "monitorclient.py"), "rules"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=lab.env,
    )
    lines = Lines(proc)
    assert lines.next(20) == {"subscribed": True}
    return proc, lines


def _reload_files(lab: Lab, name: str) -> None:
    assert lab.daemon is not None
    line = f"rules file loaded name={name}"
    before = lab.log_text().count(line)
    lab.daemon.send_signal(signal.SIGHUP)
    wait_for(lambda: lab.log_text().count(line) > before, 15, f"log line {line!r}")


def test_every_rule_change_reaches_an_unprivileged_listener_as_ids(lab: Lab) -> None:
    folder = lab.tmp / "rules.d"
    folder.mkdir(mode=0o755, exist_ok=True)
    lab.start_daemon()
    proc, heard = _listener(lab)
    try:
        made = lab.add_rule("allow port=8443")
        first = heard.next(10)
        assert set(first) == FIELDS, "ids and a count: never a rule's text"
        assert (first["changed"], first["removed"], first["everything"]) == ([made], [], False)

        office = folder / "office.rules"
        office.write_text("allow port=8080\ndeny port=8081\n")
        office.chmod(0o644)
        _reload_files(lab, "office.rules")
        from_file = sorted(
            r["id"] for r in lab.ctl_json("list-rules") if r["origin"] == "file:office.rules"
        )
        assert len(from_file) == 2
        second = heard.next(10)
        assert (second["changed"], second["removed"]) == (from_file, [])

        done = lab.ctl("delete-rule", str(made))
        assert done.returncode == 0, done.stderr
        third = heard.next(10)
        assert (third["changed"], third["removed"]) == ([], [made])
        counts = [first["generation"], second["generation"], third["generation"]]
        assert counts == list(range(counts[0], counts[0] + 3)), "no gap: nothing else was sent"
    finally:
        end_child(proc)


def _wait(qtbot: Any, what: Callable[[], bool], message: Callable[[], str]) -> None:
    try:
        qtbot.waitUntil(what, timeout=30_000)
    except AssertionError:
        raise AssertionError(message()) from None


def test_the_monitor_shows_rules_made_and_deleted_elsewhere_without_polling(
    lab: Lab, qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab.start_daemon()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", lab.env["DBUS_SYSTEM_BUS_ADDRESS"])
    exe = python_exe()
    lab.add_rule(f"allow app={exe} to={SERVER} port=80")
    assert lab.py("tcp", SERVER, 80) == "connected"  # so the app is in the window's list
    old = lab.add_rule(f"deny app={exe} port=8025")

    window = MonitorWindow()
    qtbot.addWidget(window)
    window.resize(1180, 800)
    window.show()
    _wait(qtbot, lambda: any(k.app == exe for k in window.apps.app_keys()), window.status.text)
    key = next(k for k in window.apps.app_keys() if k.app == exe)
    assert window.select_app(key)
    _wait(qtbot, lambda: old in {r.id for r in window.rules}, window.rules_title.text)
    window.timer.stop()  # from here on nothing is read on a timer: only the signal can help
    window.tabs.setCurrentIndex(1)

    made = lab.add_rule(f"deny app={exe} to=203.0.113.7 port=8443")
    _wait(qtbot, lambda: made in {r.id for r in window.rules}, lambda: str(window.rules))
    done = lab.ctl("delete-rule", str(old))
    assert done.returncode == 0, done.stderr
    _wait(qtbot, lambda: old not in {r.id for r in window.rules}, lambda: str(window.rules))
    texts = window.rule_table.texts("Rule")
    assert any("203.0.113.7" in t for t in texts) and not any("8025" in t for t in texts)
    assert window.tabs.tabText(1) == f"Rules ({len(window.rules)})"
    assert not window.timer.isActive()
    window.grab().save(str(tmp_path / "monitor-rules-signal.png"))
    window.close()
