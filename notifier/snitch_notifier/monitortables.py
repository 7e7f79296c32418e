"""The Network Monitor's two tables: the apps, and the destinations of the selected one.

Both are refilled whole from records (at most 1,000 apps, the destinations of an app's last
HOST_ROWS attempts) and sort by value, not by text. The apps table keeps the selection on the
same app across refills, whatever the sort order, and without telling the window it changed.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from snitch_notifier.traffic import AppKey, AppTraffic, HostTraffic, human, user_name

__all__ = ["APP_COLUMNS", "HOST_COLUMNS", "NEW_FOR", "AppTable", "HostTable"]

APP_COLUMNS = ("App", "User", "Up", "Down", "Sent", "Received", "Attempts", "Blocked", "First seen")
HOST_COLUMNS = ("Destination", "Address", "Port", "Attempts", "Blocked", "Sent", "Received", "Last")
NEW_FOR = 86400.0  # an app snitch first saw less than this ago is shown in bold
_KEY = Qt.ItemDataRole.UserRole
_SORT = Qt.ItemDataRole.UserRole + 1
_OPEN_TIP = "bytes of a flow are counted here when it ends; the app list counts them live"


class _Item(QTableWidgetItem):
    """A cell that sorts by its value (bytes, counts), not by its text ("9 kB" > "10 MB")."""

    def __lt__(self, other: QTableWidgetItem) -> bool:
        mine, theirs = self.data(_SORT), other.data(_SORT)
        if mine is None or theirs is None:
            return super().__lt__(other)
        return bool(mine < theirs)


def _item(text: str, value: object = None, tip: str | None = None) -> _Item:
    item = _Item(text)
    item.setData(_SORT, value if value is not None else text.lower())
    # Qt shows a tooltip that looks like markup as rich text: always rich, always escaped,
    # so a path such as "/tmp/<b>x" reads as itself.
    shown = html.escape(tip or text).replace("\n", "<br>")
    item.setToolTip(f"<p style='white-space:pre'>{shown}</p>")
    if isinstance(value, (int, float)):
        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return item


def _bytes(n: int, still_open: int) -> str:
    """A destination's bytes, and how many of its flows are not counted yet."""
    if still_open and not n:
        return f"{still_open} open"
    return human(n) + (f" +{still_open} open" if still_open else "")


def _when(stamp: float | None) -> str:
    if not stamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


class _Table(QTableWidget):
    def __init__(self, columns: tuple[str, ...], sort_by: str) -> None:
        super().__init__(0, len(columns))
        self.columns = columns
        self.setHorizontalHeaderLabels(list(columns))
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.verticalHeader().hide()
        self.setWordWrap(False)
        self.setAlternatingRowColors(True)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.setSortingEnabled(True)
        self.sortByColumn(columns.index(sort_by), Qt.SortOrder.DescendingOrder)

    def texts(self, name: str) -> list[str]:
        """The texts of one column, top to bottom (what a person reads)."""
        c = self.columns.index(name)
        cells = (self.item(r, c) for r in range(self.rowCount()))
        return [cell.text() if cell is not None else "" for cell in cells]


class AppTable(_Table):
    def __init__(self) -> None:
        super().__init__(APP_COLUMNS, "Sent")

    def key_at(self, row: int) -> AppKey | None:
        item = self.item(row, 0)
        return None if item is None else item.data(_KEY)

    def app_keys(self) -> list[AppKey]:
        return [k for r in range(self.rowCount()) if (k := self.key_at(r)) is not None]

    def select(self, key: AppKey | None) -> bool:
        for row in range(self.rowCount()):
            if key is not None and self.key_at(row) == key:
                self.selectRow(row)
                return True
        return False

    def fill(
        self,
        rows: list[AppTraffic],
        selected: AppKey | None,
        icon: Callable[[str], QIcon],
        now: float,
    ) -> None:
        self.setSortingEnabled(False)
        self.blockSignals(True)  # a refill is not the person choosing another app
        self.setRowCount(len(rows))
        for r, a in enumerate(rows):
            new = a.first_seen is not None and now - a.first_seen < NEW_FOR
            tip = a.key.app + ("\nfirst seen less than a day ago" if new else "")
            name = _item(a.name, None, tip)
            name.setData(_KEY, a.key)
            if new:
                font = name.font()
                font.setBold(True)
                name.setFont(font)
            name.setIcon(icon(a.key.app))
            cells = [
                name,
                _item(user_name(a.key.uid)),
                _item(human(a.rate_out, True) if a.rate_out else "", a.rate_out),
                _item(human(a.rate_in, True) if a.rate_in else "", a.rate_in),
                _item(human(a.bytes_out), a.bytes_out),
                _item(human(a.bytes_in), a.bytes_in),
                _item(str(a.connections), a.connections),
                _item(str(a.blocked), a.blocked),
                _item(_when(a.first_seen), a.first_seen or 0.0),
            ]
            for c, cell in enumerate(cells):
                self.setItem(r, c, cell)
        self.setSortingEnabled(True)
        if not self.select(selected):
            self.clearSelection()
        self.blockSignals(False)


class HostTable(_Table):
    def __init__(self) -> None:
        super().__init__(HOST_COLUMNS, "Sent")

    def fill(self, hosts: list[HostTraffic]) -> None:
        self.setSortingEnabled(False)
        self.setRowCount(len(hosts))
        for r, h in enumerate(hosts):
            port = f"{h.port}/{h.proto}" if h.port is not None else h.proto
            tip = _OPEN_TIP if h.open else None
            cells = [
                _item(h.host),
                _item(h.address),
                _item(port, h.port or 0),
                _item(str(h.connections), h.connections),
                _item(str(h.blocked), h.blocked),
                _item(_bytes(h.bytes_out, h.open), h.bytes_out, tip),
                _item(_bytes(h.bytes_in, h.open), h.bytes_in, tip),
                _item(f"{_when(h.last)} {h.last_action}", h.last),
            ]
            for c, cell in enumerate(cells):
                self.setItem(r, c, cell)
        self.setSortingEnabled(True)
