"""The tray's two windows: the rules (search, sort, add, edit, disable, delete) and the recent
connections (the log).

Both are views of what snitchd returns through the bridge; they keep no copy beyond the table
shown and refresh on demand. Deleting needs root or the admin group: snitchd says no to others,
and the window shows its message instead of hiding the button (the rule text is still useful).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from snitch_common.errors import RuleError
from snitch_common.rules import parse_rule
from snitch_notifier.bridge import AgentBridge, LogRow, RuleRow

__all__ = ["ConnectionsWindow", "RuleDialog", "RulesWindow"]

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


class _SortItem(QTableWidgetItem):
    """A cell that sorts by its sort key (numbers as numbers), not by its text."""

    def __init__(self, text: str, key: object) -> None:
        super().__init__(text)
        self.key = key
        self.setToolTip(text)

    def __lt__(self, other: QTableWidgetItem) -> bool:
        if isinstance(other, _SortItem) and type(self.key) is type(other.key):
            return bool(self.key < other.key)  # type: ignore[operator]
        return super().__lt__(other)


class RuleDialog(QDialog):
    """A rule's text and note, checked as they are typed (the daemon checks again): OK only
    for text that parses. Shown with `open()`, never `exec()`, so nothing waits on it."""

    def __init__(self, parent: QWidget, title: str, text: str = "", note: str = "") -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setWindowModality(Qt.WindowModality.WindowModal)
        self.resize(620, 150)
        form = QFormLayout(self)
        self.text = QLineEdit(text)
        self.text.setPlaceholderText("allow app=/usr/bin/curl to=*.example.org port=443")
        self.note = QLineEdit(note)
        self.note.setPlaceholderText("why this rule exists (optional)")
        self.problem = QLabel()
        self.problem.setWordWrap(True)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        form.addRow("&Rule:", self.text)
        form.addRow("&Note:", self.note)
        form.addRow(self.problem)
        form.addRow(self.buttons)
        self.text.textChanged.connect(self._check)
        self._check()

    @property
    def ok(self) -> QPushButton:
        return self.buttons.button(QDialogButtonBox.StandardButton.Ok)

    def _check(self) -> None:
        try:
            parse_rule(self.text.text())
        except RuleError as exc:
            self.problem.setText(exc.message)
            self.ok.setEnabled(False)
            return
        self.problem.setText("")
        self.ok.setEnabled(True)


class RulesWindow(_TableWindow):
    """The rules: search, sort (click a column), add, edit, switch off and on, delete (after
    a confirmation). Rules from a rules.d file are shown but not changed: their file is."""

    ID, HITS, LAST, ORIGIN, RULE, STATE, NOTE = range(7)

    def __init__(self, bridge: AgentBridge) -> None:
        super().__init__(
            bridge,
            "snitch — rules",
            ["id", "hits", "last hit", "made by", "rule", "on", "note"],
            bridge.list_rules,
            ("rules", "delete", "add", "edit", "enable", "disable"),
        )
        self.resize(980, 460)
        self.rules: list[RuleRow] = []
        self.table.horizontalHeader().setStretchLastSection(False)
        self.table.horizontalHeader().setSectionResizeMode(
            self.RULE, QHeaderView.ResizeMode.Stretch
        )
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(self.ID, Qt.SortOrder.AscendingOrder)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search rules, notes, origins…")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self._filter)
        layout = self.layout()
        assert isinstance(layout, QVBoxLayout)
        layout.insertWidget(0, self.search)
        self.add = QPushButton("&Add…")
        self.edit = QPushButton("&Edit…")
        self.toggle = QPushButton("Di&sable")
        self.delete = QPushButton("&Delete…")
        for i, button in enumerate((self.add, self.edit, self.toggle, self.delete), start=1):
            self.buttons.insertWidget(i, button)
        self.add.clicked.connect(self.add_rule)
        self.edit.clicked.connect(self.edit_selected)
        self.toggle.clicked.connect(self.toggle_selected)
        self.delete.clicked.connect(self.delete_selected)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.table.itemDoubleClicked.connect(lambda _: self.edit_selected())
        self.dialog: RuleDialog | None = None
        self.confirm: QMessageBox | None = None
        self._pending_select: int | None = None
        self._done = ""  # what the last change did, said with the list that follows it
        bridge.rules_listed.connect(self._listed, _QUEUED)
        bridge.rule_deleted.connect(self._deleted, _QUEUED)
        bridge.rule_changed.connect(self._changed, _QUEUED)
        self._selection_changed()

    # -- what is selected ------------------------------------------------------------------------
    def selected(self) -> RuleRow | None:
        """The rule of the current row (rows move when sorted: the id is read from the row)."""
        row = self.table.currentRow()
        item = self.table.item(row, self.ID) if row >= 0 else None
        if item is None or not self.table.selectionModel().hasSelection():
            return None
        rule_id = item.data(Qt.ItemDataRole.UserRole)
        return next((r for r in self.rules if r.id == rule_id), None)

    def select_rule(self, rule_id: int) -> None:
        for row in range(self.table.rowCount()):
            item = self.table.item(row, self.ID)
            if item is not None and item.data(Qt.ItemDataRole.UserRole) == rule_id:
                self.table.selectRow(row)
                return

    def _selection_changed(self) -> None:
        rule = self.selected()
        fixed = rule is not None and rule.from_file is not None
        for button in (self.edit, self.toggle, self.delete):
            button.setEnabled(rule is not None and not fixed)
        self.toggle.setText("Ena&ble" if rule is not None and not rule.enabled else "Di&sable")
        if rule is not None and fixed:
            self.status.setText(
                f"rule {rule.id} comes from the rules file {rule.from_file}: change that file"
            )

    # -- actions (a person's clicks) -------------------------------------------------------------
    def add_rule(self) -> None:
        self.dialog = RuleDialog(self, "Add a rule")
        self.dialog.accepted.connect(
            lambda d=self.dialog: self.bridge.add_rule(d.text.text(), d.note.text())
        )
        self.dialog.open()

    def edit_selected(self) -> None:
        rule = self.selected()
        if rule is None or rule.from_file is not None:
            return
        self.dialog = RuleDialog(self, f"Edit rule {rule.id}", rule.text, rule.note)
        self.dialog.accepted.connect(lambda d=self.dialog: self._edit(rule, d))
        self.dialog.open()

    def _edit(self, rule: RuleRow, dialog: RuleDialog) -> None:
        text = dialog.text.text()
        note = dialog.note.text()
        same_text = str(parse_rule(text)) == rule.text
        if same_text and note == rule.note:
            return
        self.bridge.edit_rule(
            rule.id, "" if same_text else text, None if note == rule.note else note
        )

    def toggle_selected(self) -> None:
        rule = self.selected()
        if rule is not None:
            self.bridge.set_rule_enabled(rule.id, not rule.enabled)

    def delete_selected(self) -> None:
        """Ask first: a deleted rule is gone (disable keeps it)."""
        rule = self.selected()
        if rule is None:
            return
        box = QMessageBox(
            QMessageBox.Icon.Question,
            "Delete rule",
            f"Delete rule {rule.id}?\n\n{rule.text}\n\nDisable keeps a rule without using it.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            self,
        )
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.button(QMessageBox.StandardButton.Yes).setText("&Delete")
        box.accepted.connect(lambda: self.bridge.delete_rule(rule.id))
        self.confirm = box
        box.open()

    # -- answers from snitchd -------------------------------------------------------------------
    def _listed(self, rules: list[RuleRow]) -> None:
        self.rules = rules
        selected = self.selected()
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(rules))
        for r, rule in enumerate(rules):
            cells = (
                (str(rule.id), rule.id),
                (str(rule.hits), rule.hits),
                (_when(rule.last_hit), rule.last_hit or 0.0),
                (rule.origin, rule.origin),
                (rule.text, rule.text),
                ("yes" if rule.enabled else "off", rule.enabled),
                (rule.note, rule.note),
            )
            for c, (text, key) in enumerate(cells):
                item = _SortItem(text, key)
                item.setData(Qt.ItemDataRole.UserRole, rule.id)
                if not rule.enabled:
                    item.setForeground(self.palette().color(QPalette.ColorRole.PlaceholderText))
                self.table.setItem(r, c, item)
        self.table.setSortingEnabled(True)
        keep = self._pending_select if self._pending_select is not None else selected
        self._pending_select = None
        if isinstance(keep, RuleRow):
            keep = keep.id
        if keep is not None:
            self.select_rule(keep)
        self._filter()
        off = sum(not r.enabled for r in rules)
        counted = _count(len(rules), "rule") + (f", {off} off" if off else "")
        self.status.setText(f"{self._done}; {counted}" if self._done else counted)
        self._done = ""

    def _filter(self) -> None:
        """Hide the rows that do not hold the search text (id, rule, note or origin)."""
        needle = self.search.text().strip().lower()
        for row in range(self.table.rowCount()):
            cells = (self.table.item(row, c) for c in (self.ID, self.ORIGIN, self.RULE, self.NOTE))
            hay = " ".join(item.text() for item in cells if item is not None).lower()
            self.table.setRowHidden(row, bool(needle) and needle not in hay)

    def _deleted(self, rule_id: int) -> None:
        self._done = f"rule {rule_id} deleted"
        self.refresh()

    def _changed(self, what: str, rule: RuleRow) -> None:
        done = {"add": "added", "edit": "edited", "enable": "enabled", "disable": "disabled"}
        self._done = f"rule {rule.id} {done.get(what, what)}"
        self._pending_select = rule.id  # selected again once the new list is in
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
