"""The notifier's rules window against a real snitchd (issue 18), driven as a person would:
typing in the search box, clicking column headers, the Add/Edit/Disable/Delete buttons and the
dialogs they open. Every change is checked in snitchd (`snitchctl list-rules`) and, for the
ones that change a verdict, by a real client in the lab's namespace."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QDialogButtonBox, QMessageBox

from conftest import Lab
from snitch_notifier.bridge import AgentBridge
from snitch_notifier.lists import RulesWindow
from tests.integration.notifierlab import lab_bridge, registered

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

SERVER = "192.0.2.2"
LEFT = Qt.MouseButton.LeftButton


@pytest.fixture
def bridge(lab: Lab, monkeypatch: pytest.MonkeyPatch, qtbot: Any) -> Iterator[AgentBridge]:
    """snitchd with one rules.d file, and a bridge connected to it (as root, an admin)."""
    folder = lab.tmp / "rules.d"
    folder.mkdir(mode=0o755)
    (folder / "base.rules").write_text("allow port=22  # ssh, from the fleet\n")
    lab.start_daemon()
    with registered(lab_bridge(lab, monkeypatch), qtbot) as bridge:
        yield bridge


def _visible(window: RulesWindow) -> list[str]:
    return [
        window.table.item(r, window.RULE).text()
        for r in range(window.table.rowCount())
        if not window.table.isRowHidden(r)
    ]


def _select(window: RulesWindow, text: str, qtbot: Any) -> None:
    """Click the row whose rule is `text`."""
    for r in range(window.table.rowCount()):
        item = window.table.item(r, window.RULE)
        if item.text() == text:
            rect = window.table.visualItemRect(item)
            qtbot.mouseClick(window.table.viewport(), LEFT, pos=rect.center())
            return
    raise AssertionError(f"no row {text!r} in {_visible(window)}")


def _after_change(window: RulesWindow, bridge: AgentBridge, qtbot: Any, click: Any) -> None:
    """Do `click`, wait for snitchd's answer and for the list that follows it."""
    with qtbot.waitSignals([bridge.rule_changed, bridge.rules_listed], timeout=10_000):
        click()


def _type_into_dialog(window: RulesWindow, qtbot: Any, text: str, note: str) -> None:
    dialog = window.dialog
    assert dialog is not None
    qtbot.waitUntil(dialog.isVisible, timeout=5_000)
    dialog.text.selectAll()
    qtbot.keyClicks(dialog.text, text)
    dialog.note.selectAll()
    qtbot.keyClicks(dialog.note, note)


def test_rules_window_searches_sorts_adds_edits_disables_and_deletes_with_confirmation(
    lab: Lab, bridge: AgentBridge, qtbot: Any, tmp_path: Path
) -> None:
    lab.ctl_json("add-rule", "--note", "web", "allow port=80")
    web8080 = lab.add_rule("allow port=8080")
    window = RulesWindow(bridge)
    qtbot.addWidget(window)
    window.show()
    with qtbot.waitSignal(bridge.rules_listed, timeout=10_000):
        window.refresh()
    qtbot.waitUntil(lambda: window.table.rowCount() == 3, timeout=5_000)
    assert _visible(window) == ["allow port=22", "allow port=80", "allow port=8080"]

    # Search: only the matching rows stay (by rule text, and by note).
    qtbot.keyClicks(window.search, "8080")
    assert _visible(window) == ["allow port=8080"]
    window.search.clear()
    qtbot.keyClicks(window.search, "web")
    assert _visible(window) == ["allow port=80"]
    window.search.clear()

    # Sort: a click on the id header turns the order around.
    header = window.table.horizontalHeader()
    spot = QPoint(header.sectionPosition(window.ID) + 5, header.height() // 2)
    qtbot.mouseClick(header.viewport(), LEFT, pos=spot)
    assert _visible(window) == ["allow port=8080", "allow port=80", "allow port=22"]

    # A rule of a rules.d file cannot be changed here, and the window says why.
    _select(window, "allow port=22", qtbot)
    assert not window.edit.isEnabled() and not window.delete.isEnabled()
    assert "comes from the rules file base.rules" in window.status.text()

    # Add: bad text keeps OK off and says what is wrong; good text adds the rule.
    qtbot.mouseClick(window.add, LEFT)
    assert window.dialog is not None
    _type_into_dialog(window, qtbot, "reject port=99999", "")
    assert not window.dialog.ok.isEnabled()
    assert "invalid port" in window.dialog.problem.text()
    _type_into_dialog(window, qtbot, "reject port=443", "no https for now")
    _after_change(window, bridge, qtbot, lambda: qtbot.mouseClick(window.dialog.ok, LEFT))
    added = [r for r in lab.ctl_json("list-rules") if r["text"] == "reject port=443"]
    assert [r["note"] for r in added] == ["no https for now"]
    assert lab.py("tcp", SERVER, 443) == "refused"

    # Edit it: same id, new text and note; the next flow follows the new text.
    _select(window, "reject port=443", qtbot)
    qtbot.mouseClick(window.edit, LEFT)
    _type_into_dialog(window, qtbot, "reject port=9000", "no echo")
    _after_change(window, bridge, qtbot, lambda: qtbot.mouseClick(window.dialog.ok, LEFT))
    edited = [r for r in lab.ctl_json("list-rules") if r["id"] == added[0]["id"]]
    assert [(r["text"], r["note"]) for r in edited] == [("reject port=9000", "no echo")]
    assert lab.py("tcp", SERVER, 9000) == "refused"

    # Disable, then enable again: the button says which it will do.
    _select(window, "allow port=8080", qtbot)
    assert window.toggle.text() == "Di&sable"
    _after_change(window, bridge, qtbot, lambda: qtbot.mouseClick(window.toggle, LEFT))
    off = {r["text"]: r["enabled"] for r in lab.ctl_json("list-rules")}
    assert off["allow port=8080"] is False
    assert lab.py("tcp", SERVER, 8080) == "timeout"  # no rule: the lab's default, deny
    assert window.status.text() == f"rule {web8080} disabled; 4 rules, 1 off"
    assert window.selected() is not None and window.toggle.text() == "Ena&ble"
    window.grab().save(str(tmp_path / "rules-window.png"))
    shutil.copy(tmp_path / "rules-window.png", "/tmp/snitch-rules-window.png")
    _after_change(window, bridge, qtbot, lambda: qtbot.mouseClick(window.toggle, LEFT))
    assert lab.py("tcp", SERVER, 8080) == "connected"

    # Delete asks first: Cancel keeps the rule, Delete removes it.
    _select(window, "allow port=80", qtbot)
    qtbot.mouseClick(window.delete, LEFT)
    assert window.confirm is not None
    qtbot.waitUntil(window.confirm.isVisible, timeout=5_000)
    qtbot.mouseClick(window.confirm.button(QMessageBox.StandardButton.Cancel), LEFT)
    assert "allow port=80" in {r["text"] for r in lab.ctl_json("list-rules")}
    qtbot.mouseClick(window.delete, LEFT)
    qtbot.waitUntil(window.confirm.isVisible, timeout=5_000)
    with qtbot.waitSignal(bridge.rule_deleted, timeout=10_000):
        qtbot.mouseClick(window.confirm.button(QMessageBox.StandardButton.Yes), LEFT)
    assert "allow port=80" not in {r["text"] for r in lab.ctl_json("list-rules")}
    qtbot.waitUntil(lambda: "allow port=80" not in _visible(window), timeout=5_000)
    assert QDialogButtonBox  # the dialogs' buttons are the standard ones clicked above
