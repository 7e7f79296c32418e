"""The waiting list: every prompt this agent holds, and the ones that expired, to pick from.

Opened from the tray, or shown by itself where there is no tray (then it is also the
notifier's small always-available window: the shield says snitchd's state, and the rules and
recent connections are one click away). A row is a prompt in the popup, one put aside
(*Later*, or the window closed), or an expired one ("expired: denied by default"); *Answer…*
brings the chosen one to the popup, where an expired one is answered as a rule for next time.
It is a view of the popup's `Pending`, refreshed when the popup says it changed.
"""

from __future__ import annotations

import time

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QCloseEvent, QHideEvent, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from snitch_common.bus import PromptView
from snitch_notifier.icons import snitch_icon
from snitch_notifier.popup import PromptWindow
from snitch_notifier.shields import Shield

__all__ = ["WaitingWindow"]

_HEADER_ICON = 32


class WaitingWindow(QWidget):
    def __init__(self, popup: PromptWindow) -> None:
        super().__init__()
        self.popup = popup
        self.ids: list[int] = []
        self.setWindowTitle("snitch — waiting prompts")
        self.setWindowIcon(snitch_icon())
        self.resize(640, 300)
        layout = QVBoxLayout(self)
        header = QHBoxLayout()
        self.shield = QLabel()
        self.shield.setFixedSize(_HEADER_ICON, _HEADER_ICON)
        self.state = QLabel()
        self.state.setWordWrap(True)
        header.addWidget(self.shield)
        header.addWidget(self.state, 1)
        layout.addLayout(header)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["app", "to", "state"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.setWordWrap(False)
        head = self.table.horizontalHeader()
        head.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        head.setStretchLastSection(True)
        self.table.itemSelectionChanged.connect(self._selected)
        self.table.cellDoubleClicked.connect(lambda *_: self.open_selected())
        layout.addWidget(self.table)
        self.buttons = QHBoxLayout()
        self.empty = QLabel("Nothing waits for you.")
        self.buttons.addWidget(self.empty, 1)
        self.open = QPushButton("&Answer…")
        self.open.setDefault(True)
        self.open.clicked.connect(self.open_selected)
        self.buttons.addWidget(self.open)
        layout.addLayout(self.buttons)
        popup.changed.connect(self.refresh)
        self._clock = QTimer(self)  # the time left in the rows, while the list is seen
        self._clock.setInterval(1000)
        self._clock.timeout.connect(self.refresh)
        self.set_state(Shield.WATCHING, "snitch: connecting to snitchd…")
        self.refresh()

    def set_state(self, state: Shield, text: str) -> None:
        self.shield.setPixmap(snitch_icon(state).pixmap(_HEADER_ICON, _HEADER_ICON))
        self.state.setText(text)
        self.setWindowIcon(snitch_icon(state))

    def refresh(self) -> None:
        p = self.popup.pending
        rows: list[tuple[int, PromptView, str]] = [
            (q.id, q, "in the popup" if i else "shown now") for i, q in enumerate(p.queue)
        ]
        now = p.clock()
        rows += [(a.id, a, f"waiting: {_left(a, now)}") for a in p.aside]
        listed = {r[0] for r in rows}
        rows += [
            (e.prompt.id, e.prompt, f"{e.label} at {_clock(e.at)}")
            for e in p.trace
            if e.prompt.id not in listed
        ]
        chosen = self.selected()
        self.ids = [r[0] for r in rows]
        self.table.setRowCount(len(rows))
        for r, (_, prompt, state) in enumerate(rows):
            app = self.popup.app_name(prompt.exe)
            who = f"{app} ({prompt.pid})" if prompt.pid is not None else app
            for c, text in enumerate((who, prompt.destination, state)):
                item = QTableWidgetItem(text)
                item.setToolTip(prompt.who if c == 0 else text)
                if state.startswith("expired"):
                    item.setForeground(Qt.GlobalColor.darkRed)
                self.table.setItem(r, c, item)
        if chosen in self.ids:
            self.table.selectRow(self.ids.index(chosen))
        elif self.ids:
            self.table.selectRow(0)
        self.empty.setText("" if rows else "Nothing waits for you.")
        self._selected()

    def selected(self) -> int | None:
        row = self.table.currentRow()
        return self.ids[row] if 0 <= row < len(self.ids) else None

    def open_selected(self) -> None:
        """The chosen prompt to the popup: to answer it, or (expired) to make a rule."""
        prompt_id = self.selected()
        if prompt_id is not None:
            self.popup.bring_back(prompt_id)

    def _selected(self) -> None:
        prompt_id = self.selected()
        p = self.popup.pending
        expired = prompt_id is not None and p.find(prompt_id) is None
        self.open.setEnabled(prompt_id is not None)
        self.open.setText("&Make a rule…" if expired else "&Answer…")

    def showEvent(self, event: QShowEvent) -> None:
        self._clock.start()
        self.refresh()
        super().showEvent(event)

    def hideEvent(self, event: QHideEvent) -> None:
        self._clock.stop()
        super().hideEvent(event)

    def closeEvent(self, event: QCloseEvent) -> None:
        """Without a tray this window is the way back: closing it only hides it."""
        event.ignore()
        self.hide()


def _left(prompt: PromptView, now: float) -> str:
    seconds = max(0, round(prompt.deadline - now))
    if seconds < 60:
        return f"{prompt.default_action} in {seconds} s"
    return f"{prompt.default_action} in {seconds // 60}:{seconds % 60:02d}"


def _clock(stamp: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(stamp))
