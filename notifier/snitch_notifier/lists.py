"""The tray's two windows: the rules (view, delete) and the recent connections (the log).

Both are views of what snitchd returns through the bridge; they keep no copy beyond the table
shown and refresh on demand. Deleting needs root or the admin group: snitchd says no to others,
and the window shows its message instead of hiding the button (the rule text is still useful).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from PySide6.QtCore import Qt
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

from snitch_notifier.bridge import AgentBridge, LogRow, RuleRow

__all__ = ["ConnectionsWindow", "RulesWindow"]

_QUEUED = Qt.ConnectionType.QueuedConnection


class _TableWindow(QWidget):
    def __init__(
        self,
        bridge: AgentBridge,
        title: str,
        columns: list[str],
        request: Callable[[], None],
        kinds: tuple[str, ...],
    ) -> None:
        super().__init__()
        self.bridge = bridge
        self._request = request
        self._kinds = kinds  # the bridge's request names whose failures this window shows
        self.setWindowTitle(title)
        self.resize(760, 420)
        layout = QVBoxLayout(self)
        self.table = QTableWidget(0, len(columns))
        self.table.setHorizontalHeaderLabels(columns)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.setWordWrap(False)  # one line per row; the tooltip has the whole text
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        layout.addWidget(self.table)
        self.buttons = QHBoxLayout()
        self.status = QLabel()
        self.buttons.addWidget(self.status, 1)
        refresh = QPushButton("Re&fresh")
        refresh.clicked.connect(self.refresh)
        self.buttons.addWidget(refresh)
        layout.addLayout(self.buttons)
        bridge.failed.connect(self._failed, _QUEUED)

    def refresh(self) -> None:
        """Ask snitchd again; the table fills when the answer crosses back."""
        self.status.setText("loading…")
        self._request()

    def _failed(self, what: str, message: str) -> None:
        if what in self._kinds:
            self.status.setText(message)

    def _fill(self, rows: list[list[str]]) -> None:
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                item = QTableWidgetItem(text)
                item.setToolTip(text)
                self.table.setItem(r, c, item)


class RulesWindow(_TableWindow):
    def __init__(self, bridge: AgentBridge) -> None:
        super().__init__(
            bridge,
            "snitch — rules",
            ["id", "hits", "last hit", "made by", "rule"],
            bridge.list_rules,
            ("rules", "delete"),
        )
        self.rules: list[RuleRow] = []
        self.delete = QPushButton("&Delete rule")
        self.delete.clicked.connect(self.delete_selected)
        self.buttons.insertWidget(1, self.delete)
        bridge.rules_listed.connect(self._listed, _QUEUED)
        bridge.rule_deleted.connect(self._deleted, _QUEUED)

    def delete_selected(self) -> None:
        row = self.table.currentRow()
        if 0 <= row < len(self.rules):
            self.bridge.delete_rule(self.rules[row].id)

    def _listed(self, rules: list[RuleRow]) -> None:
        self.rules = rules
        self._fill([[str(r.id), str(r.hits), _when(r.last_hit), r.origin, r.text] for r in rules])
        self.status.setText(_count(len(rules), "rule"))

    def _deleted(self, rule_id: int) -> None:
        self.status.setText(f"rule {rule_id} deleted")
        self.refresh()


class ConnectionsWindow(_TableWindow):
    def __init__(self, bridge: AgentBridge) -> None:
        super().__init__(
            bridge,
            "snitch — recent connections",
            ["time", "app", "to", "verdict", "why"],
            bridge.recent_log,
            ("log",),
        )
        self.rows: list[LogRow] = []
        bridge.log_listed.connect(self._listed, _QUEUED)

    def _listed(self, rows: list[LogRow]) -> None:
        self.rows = sorted(rows, key=lambda r: r.time, reverse=True)
        self._fill(
            [
                [
                    _when(r.time),
                    f"{os.path.basename(r.exe)} ({r.pid})" if r.exe else "-",
                    f"{r.dst} {r.dport}/{r.proto}" if r.dport else f"{r.dst} {r.proto}",
                    r.action,
                    r.reason,
                ]
                for r in self.rows
            ]
        )
        self.status.setText(_count(len(rows), "recent connection"))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _when(stamp: float | None) -> str:
    if not stamp:  # snitchd sends 0 for a rule that never matched
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))
