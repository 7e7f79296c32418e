"""The pictures in the docs are the real windows, rendered offscreen by these tests.

They always save the pictures in their tmp dir; with SNITCH_WRITE_DOCS=1 they also replace
docs/popup.png, docs/popup-menu.png, docs/waiting.png and docs/tray.png
(`SNITCH_WRITE_DOCS=1 pytest tests/notifier -k docs_picture`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from PySide6.QtCore import QPoint, QRect, Qt, QTimer
from PySide6.QtGui import QColor, QImage, QPainter, QPixmap
from PySide6.QtWidgets import QWidget

from snitch_notifier.bridge import AgentBridge
from snitch_notifier.icons import snitch_icon
from snitch_notifier.identity import desktop_identity
from snitch_notifier.popup import PromptWindow
from snitch_notifier.shields import Shield
from snitch_notifier.tray import Tray
from snitch_notifier.waiting import WaitingWindow

DOCS_PICTURE = Path(__file__).resolve().parents[2] / "docs" / "popup.png"


def test_docs_picture(popup, prompt_factory, qtbot, tmp_path: Path) -> None:
    window = PromptWindow(clock=popup.clock, identify=desktop_identity)
    qtbot.addWidget(window)
    _prompts(window, popup.clock.now, prompt_factory)
    popup.clock.now += 7
    window.tick()
    picture = tmp_path / "popup.png"
    assert window.grab().save(str(picture))
    popup.taken += 1
    image = QImage(str(picture))
    assert (image.width(), image.height()) == (window.width(), window.height())
    if os.environ.get("SNITCH_WRITE_DOCS") == "1":
        shutil.copyfile(picture, DOCS_PICTURE)


def _save(picture: QPixmap, tmp_path: Path, name: str) -> Path:
    """Keep the picture in the test's tmp dir, and in docs/ with SNITCH_WRITE_DOCS=1."""
    path = tmp_path / name
    assert picture.save(str(path)), f"cannot save {path}"
    if os.environ.get("SNITCH_WRITE_DOCS") == "1":
        shutil.copyfile(path, DOCS_PICTURE.parent / name)
    return path


def _with_popup(base: QWidget, popup: QWidget, margin: int = 16) -> QPixmap:
    """`base` with an open menu or list drawn where it is on screen: a popup is its own
    window, so `base.grab()` alone leaves it out."""
    top_left = base.mapToGlobal(QPoint(0, 0))
    at = popup.mapToGlobal(QPoint(0, 0)) - top_left
    area = QRect(0, 0, base.width(), base.height()).united(QRect(at, popup.size()))
    area.adjust(0, 0, 0, margin)
    picture = QPixmap(area.size())
    picture.fill(QColor("#e8eaed"))
    painter = QPainter(picture)
    painter.drawPixmap(-area.topLeft(), base.grab())
    painter.drawPixmap(at - area.topLeft(), popup.grab())
    painter.end()
    return picture


def _prompts(window: PromptWindow, now: float, factory: Any) -> None:
    window.add_prompt(factory(1, deadline=now + 30))
    for i, host in ((2, "telemetry.example.net"), (3, "cdn.example.com")):
        window.add_prompt(factory(i, host=host, deadline=now + 30))


def _docs_window(popup: Any, prompt_factory: Any, qtbot: Any) -> PromptWindow:
    """The popup of the docs' pictures: the three prompts, a deferral granted at once."""
    window = PromptWindow(clock=popup.clock, identify=desktop_identity)
    qtbot.addWidget(window)
    window.defer_wanted.connect(lambda i: window.held(i, 588.0))
    _prompts(window, popup.clock.now, prompt_factory)
    return window


def test_docs_picture_of_the_scope_list(popup, prompt_factory, qtbot, tmp_path: Path) -> None:
    """The popup with its Scope list open, as a person choosing sees it: the countdown says
    it is paused."""
    window = _docs_window(popup, prompt_factory, qtbot)
    popup.clock.now += 12
    window.tick()
    qtbot.mouseClick(window._scope, Qt.MouseButton.LeftButton)
    view = window._scope.view()
    qtbot.waitUntil(view.isVisible, timeout=2000)
    window._scope.view().setCurrentIndex(window._scope.model().index(1, 0))
    assert window._countdown.text().startswith("Paused while you choose")
    _save(_with_popup(window, view.window()), tmp_path, "popup-scope.png")
    popup.taken += 1
    window._scope.hidePopup()


def test_docs_picture_of_the_more_menu(popup, prompt_factory, qtbot, tmp_path: Path) -> None:
    """The More menu open: the countdown above it says it waits for the person."""
    window = _docs_window(popup, prompt_factory, qtbot)
    popup.clock.now += 12
    window.tick()
    taken: list[QPixmap] = []

    def grab() -> None:
        menu = window._more.menu()
        window.tick()
        taken.append(_with_popup(window, menu))
        menu.close()

    QTimer.singleShot(100, grab)
    qtbot.mouseClick(window._more, Qt.MouseButton.LeftButton)  # runs the menu until grab()
    qtbot.waitUntil(lambda: bool(taken), timeout=3000)
    assert window._countdown.text().startswith("Paused while you choose")
    _save(taken[0], tmp_path, "popup-menu.png")
    popup.taken += 1


def test_docs_picture_of_the_waiting_list(popup, prompt_factory, qtbot, tmp_path: Path) -> None:
    window = _docs_window(popup, prompt_factory, qtbot)
    window.add_prompt(
        prompt_factory(4, exe="/usr/bin/curl", host="api.example.org", pid=5120, cmdline=("curl",))
    )
    waiting = WaitingWindow(window)
    qtbot.addWidget(waiting)
    waiting.set_state(Shield.ASKING, "snitch: asking for uid 1000; 3 prompts waiting")
    popup.clock.now += 1
    window.tick()
    window.later()  # python3.11 to updates.example.org goes to the waiting list
    window.cancel_prompt(4, "default: timed out")  # curl's: nobody answered
    waiting.resize(720, 236)
    waiting.table.selectRow(3)
    assert waiting.open.text() == "&Make a rule…"
    waiting.show()
    _save(waiting.grab(), tmp_path, "waiting.png")
    popup.taken += 1
    assert waiting.table.rowCount() == 4


def test_docs_picture_of_the_tray_menu(popup, prompt_factory, qtbot, tmp_path: Path) -> None:
    """The tray menu under a panel with the shield, as a desktop shows it."""
    tray = Tray(AgentBridge(), popup.window)
    tray._registered(1000)
    popup.window.add_prompt(prompt_factory(1))
    popup.window.add_prompt(prompt_factory(2))
    assert tray.state is Shield.ASKING
    tray.menu.popup(QPoint(400, 30))
    qtbot.waitUntil(tray.menu.isVisible, timeout=2000)
    menu = tray.menu.grab()
    tray.menu.hide()
    panel_height, icon = 28, 22
    picture = QPixmap(max(menu.width() + 40, 320), panel_height + menu.height() + 20)
    picture.fill(QColor("#e8eaed"))
    painter = QPainter(picture)
    painter.fillRect(0, 0, picture.width(), panel_height, QColor("#2b2d30"))
    painter.setPen(QColor("#e8eaed"))
    painter.drawText(10, 19, "Thu 17:05")
    x = picture.width() - icon - 10
    painter.drawPixmap(x, 3, snitch_icon(tray.state).pixmap(icon, icon))
    painter.drawPixmap(picture.width() - menu.width() - 6, panel_height, menu)
    painter.end()
    _save(picture, tmp_path, "tray.png")
    popup.taken += 1
