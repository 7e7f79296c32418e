"""The Network Monitor's tables: the apps, and the destinations and rules of the selected one.

All are refilled whole from records (at most 1,000 apps, the destinations of an app's last
HOST_ROWS attempts, the rules that apply to it) and sort by value, not by text. The apps and
destinations tables keep the selection on the same row across refills, whatever the sort
order, and without telling the window it changed. An app's last minute of rates is drawn in
its row (a sparkline); apps and destinations first seen less than a day ago are highlighted.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QPointF, Qt
from PySide6.QtGui import QBrush, QColor, QIcon, QPainter, QPen, QPolygonF
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableWidget,
    QTableWidgetItem,
)

from snitch_notifier.bridge import RuleRow
from snitch_notifier.traffic import AppKey, AppTraffic, HostTraffic, Spark, human, user_name

__all__ = [
    "APP_COLUMNS",
    "HOST_COLUMNS",
    "NEW_COLOUR",
    "NEW_FOR",
    "RULE_COLUMNS",
    "AppTable",
    "HostTable",
    "RuleTable",
    "same_place",
]

APP_COLUMNS = (
    "App",
    "User",
    "Up",
    "Down",
    "Last minute",
    "Sent",
    "Received",
    "Attempts",
    "Blocked",
    "First seen",
)
HOST_COLUMNS = ("Destination", "Address", "Port", "Attempts", "Blocked", "Sent", "Received", "Last")
RULE_COLUMNS = ("ID", "Rule", "Hits", "Last hit")
NEW_FOR = 86400.0  # an app or destination first seen less than this ago is highlighted
NEW_COLOUR = "#fff3c4"  # a pale amber behind what is new (the tray's "asking" colour, faded)
_KEY = Qt.ItemDataRole.UserRole
_SORT = Qt.ItemDataRole.UserRole + 1
_SPARK = Qt.ItemDataRole.UserRole + 2
_UP_COLOUR = "#c0392b"  # as the chart's (monitorchart: optional, so not imported)
_DOWN_COLOUR = "#2471a3"
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


def _mark_new(items: list[_Item], why: str) -> None:
    """Bold the first cell and tint the row: what snitch saw for the first time lately."""
    font = items[0].font()
    font.setBold(True)
    items[0].setFont(font)
    for item in items:
        item.setBackground(QBrush(QColor(NEW_COLOUR)))
    items[0].setToolTip(items[0].toolTip().replace("</p>", f"<br>{html.escape(why)}</p>"))


class _Sparkline(QStyledItemDelegate):
    """Draws a cell's last minute of rates (`_SPARK`: (up, down) pairs) as two thin lines,
    scaled to the cell's own peak; an app that did not move draws nothing."""

    def paint(
        self,
        painter: QPainter,
        option: QStyleOptionViewItem,
        index: QModelIndex | QPersistentModelIndex,
    ) -> None:
        super().paint(painter, option, index)
        spark: Spark | None = index.data(_SPARK)
        if not spark:
            return
        peak = max(max(up, down) for up, down in spark)
        if peak <= 0:
            return
        rect = option.rect.adjusted(3, 4, -3, -4)
        step = rect.width() / max(1, len(spark) - 1)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        for column, colour in ((1, _DOWN_COLOUR), (0, _UP_COLOUR)):
            line = QPolygonF(
                [
                    QPointF(
                        rect.left() + i * step, rect.bottom() - pair[column] / peak * rect.height()
                    )
                    for i, pair in enumerate(spark)
                ]
            )
            painter.setPen(QPen(QColor(colour), 1.2))
            painter.drawPolyline(line)
        painter.restore()


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
        spark = APP_COLUMNS.index("Last minute")
        self.setItemDelegateForColumn(spark, _Sparkline(self))
        self.horizontalHeader().setSectionResizeMode(spark, QHeaderView.ResizeMode.Fixed)
        self.setColumnWidth(spark, 110)

    def key_at(self, row: int) -> AppKey | None:
        item = self.item(row, 0)
        return None if item is None else item.data(_KEY)

    def app_keys(self) -> list[AppKey]:
        return [k for r in range(self.rowCount()) if (k := self.key_at(r)) is not None]

    def spark_of(self, key: AppKey) -> Spark:
        """The sparkline drawn in the app's row (empty: none)."""
        for row in range(self.rowCount()):
            if self.key_at(row) == key:
                cell = self.item(row, APP_COLUMNS.index("Last minute"))
                return cell.data(_SPARK) or () if cell is not None else ()
        return ()

    def is_new(self, key: AppKey) -> bool:
        """Whether the app's row is highlighted as first seen lately."""
        for row in range(self.rowCount()):
            cell = self.item(row, 0)
            if cell is not None and cell.data(_KEY) == key:
                return cell.font().bold()
        return False

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
        spark: Callable[[AppKey], Spark] = lambda _: (),
    ) -> None:
        self.setSortingEnabled(False)
        self.blockSignals(True)  # a refill is not the person choosing another app
        self.setRowCount(len(rows))
        for r, a in enumerate(rows):
            name = _item(a.name, None, a.key.app)
            name.setData(_KEY, a.key)
            name.setIcon(icon(a.key.app))
            line = _item("", a.rate_out + a.rate_in)
            line.setData(_SPARK, spark(a.key))
            line.setToolTip("its rates up (red) and down (blue) in the last minute")
            cells = [
                name,
                _item(user_name(a.key.uid)),
                _item(human(a.rate_out, True) if a.rate_out else "", a.rate_out),
                _item(human(a.rate_in, True) if a.rate_in else "", a.rate_in),
                line,
                _item(human(a.bytes_out), a.bytes_out),
                _item(human(a.bytes_in), a.bytes_in),
                _item(str(a.connections), a.connections),
                _item(str(a.blocked), a.blocked),
                _item(_when(a.first_seen), a.first_seen or 0.0),
            ]
            if a.first_seen is not None and now - a.first_seen < NEW_FOR:
                _mark_new(cells, "new: first seen less than a day ago")
            for c, cell in enumerate(cells):
                self.setItem(r, c, cell)
        self.setSortingEnabled(True)
        if not self.select(selected):
            self.clearSelection()
        self.blockSignals(False)


class HostTable(_Table):
    """An app's destinations; `known_since` is how far back its rows read reach (0: all of
    its log), so a destination is highlighted as new only when nothing earlier could hide."""

    def __init__(self) -> None:
        super().__init__(HOST_COLUMNS, "Sent")

    def host_at(self, row: int) -> HostTraffic | None:
        item = self.item(row, 0)
        return None if item is None else item.data(_KEY)

    def hosts(self) -> list[HostTraffic]:
        return [h for r in range(self.rowCount()) if (h := self.host_at(r)) is not None]

    def selected_host(self) -> HostTraffic | None:
        rows = self.selectionModel().selectedRows()
        return self.host_at(rows[0].row()) if rows else None

    def select(self, host: HostTraffic | None) -> bool:
        for row in range(self.rowCount()):
            h = self.host_at(row)
            if host is not None and h is not None and same_place(h, host):
                self.selectRow(row)
                return True
        return False

    def new_hosts(self) -> list[str]:
        """The destinations highlighted as new, top to bottom."""
        cells = (self.item(r, 0) for r in range(self.rowCount()))
        return [c.text() for c in cells if c is not None and c.font().bold()]

    def fill(self, hosts: list[HostTraffic], now: float = 0.0, known_since: float = 0.0) -> None:
        kept = self.selected_host()
        self.setSortingEnabled(False)
        self.blockSignals(True)
        self.setRowCount(len(hosts))
        for r, h in enumerate(hosts):
            port = f"{h.port}/{h.proto}" if h.port is not None else h.proto
            tip = _OPEN_TIP if h.open else None
            name = _item(h.host)
            name.setData(_KEY, h)
            cells = [
                name,
                _item(h.address),
                _item(port, h.port or 0),
                _item(str(h.connections), h.connections),
                _item(str(h.blocked), h.blocked),
                _item(_bytes(h.bytes_out, h.open), h.bytes_out, tip),
                _item(_bytes(h.bytes_in, h.open), h.bytes_in, tip),
                _item(f"{_when(h.last)} {h.last_action}", h.last),
            ]
            if now and now - h.first < NEW_FOR and (not known_since or known_since < now - NEW_FOR):
                since = f"since {_when(known_since)}" if known_since else "in its whole log"
                _mark_new(
                    cells, f"new: first seen less than a day ago (no earlier attempt {since})"
                )
            for c, cell in enumerate(cells):
                self.setItem(r, c, cell)
        self.setSortingEnabled(True)
        if not self.select(kept):
            self.clearSelection()
        self.blockSignals(False)


def same_place(a: HostTraffic, b: HostTraffic) -> bool:
    """Whether two records are the same destination (name, address, port, protocol)."""
    return (a.host, a.address, a.port, a.proto) == (b.host, b.address, b.port, b.proto)


class RuleTable(_Table):
    """The rules that apply to the selected app, by id; switched-off ones greyed."""

    def __init__(self) -> None:
        super().__init__(RULE_COLUMNS, "ID")
        self.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        header = self.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)

    def fill(self, rules: list[RuleRow]) -> None:
        self.setSortingEnabled(False)
        self.setRowCount(len(rules))
        for r, rule in enumerate(rules):
            text = rule.text if rule.enabled else f"{rule.text}  (off)"
            tip = rule.text + (f"\nnote: {rule.note}" if rule.note else "")
            tip += f"\nmade by {rule.origin}" if rule.origin else ""
            cells = [
                _item(str(rule.id), rule.id),
                _item(text, rule.text, tip),
                _item(str(rule.hits), rule.hits),
                _item(_when(rule.last_hit), rule.last_hit or 0.0),
            ]
            for c, cell in enumerate(cells):
                if not rule.enabled:
                    cell.setForeground(QBrush(QColor("#888888")))
                self.setItem(r, c, cell)
        self.setSortingEnabled(True)
