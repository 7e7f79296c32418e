"""The Network Monitor window: what has talked to the network, how much, and what was blocked.

Top: the chart of the chosen range (the live ten minutes from the `Rates` signal, or 1 h to
30 d from snitchd's rollups), for every app or the selected one. Below: the apps, with their
live rates and their totals in the range (sortable; a filter box narrows them by app or user),
and the destinations of the selected app (from its newest log rows). It refreshes itself:
rates each second as snitchd sends them, totals and the chart every few seconds (the longer
the range, the less often: `Range.refresh_seconds`).

What it shows is what snitchd lets its user see: a user who is not an admin gets only their
own apps' traffic (the daemon filters), and the window says so rather than suggest it shows
the whole machine. It decides nothing and writes nothing.
"""

from __future__ import annotations

import html
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QCloseEvent, QIcon, QShowEvent
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from snitch_notifier.icons import app_icon, snitch_icon, use_desktop_icon_theme
from snitch_notifier.identity import AppIdentity, desktop_identity
from snitch_notifier.monitorfeed import HOST_ROWS, MonitorFeed
from snitch_notifier.monitortables import AppTable, HostTable
from snitch_notifier.traffic import (
    AppKey,
    AppTraffic,
    HostTraffic,
    LiveHistory,
    Range,
    RateFrame,
    TrafficChart,
    human,
    user_name,
)

if TYPE_CHECKING:
    from snitch_notifier.monitorchart import ChartView

__all__ = [
    "REFRESH_MS",
    "MonitorWindow",
    "make_chart",
    "open_monitor",
    "run_monitor",
]

REFRESH_MS = 1000  # the timer's tick; a refresh is due every `Range.refresh_seconds`
_QUEUED = Qt.ConnectionType.QueuedConnection


def _name(key: AppKey) -> str:
    """An app's short name, escaped for a rich-text label."""
    return html.escape(os.path.basename(key.app) or key.app)


_NEW_ICONS_PER_FILL = 20  # desktop-entry lookups per refill: each reads the applications dirs


def make_chart() -> tuple[QWidget, ChartView | None]:
    """The chart, or a label that says why there is none (QtCharts comes in PySide6-Addons,
    which a distribution may leave out: the tables still work)."""
    try:
        from snitch_notifier.monitorchart import ChartView  # noqa: PLC0415 (optional)
    except ImportError as exc:
        label = QLabel(f"No chart: {exc} (install PySide6-Addons, or snitch's [gui] extra).")
        label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        return label, None
    view = ChartView()
    return view, view


class MonitorWindow(QWidget):
    def __init__(
        self,
        feed: MonitorFeed | None = None,
        identify: Callable[[str | None], AppIdentity] = desktop_identity,
        clock: Callable[[], float] = time.time,
        uid: int | None = None,
    ) -> None:
        super().__init__()
        self.feed = feed or MonitorFeed()
        self._identify = identify
        self._identities: dict[str, AppIdentity] = {}
        self._clock = clock
        self.uid = os.getuid() if uid is None else uid
        self.range = Range.LIVE
        self.selected: AppKey | None = None
        self.totals: dict[AppKey, AppTraffic] = {}
        self.live: dict[AppKey, AppTraffic] = {}
        self.history = LiveHistory()
        self.hosts: list[HostTraffic] = []
        self.totals_read = 0  # Apps answers taken, for tests and the status line
        self._refreshed = float("-inf")  # when the totals were last asked for
        self.setWindowTitle("snitch — Network Monitor")
        self.resize(1180, 780)

        self.scope = QLabel()
        self.scope.setWordWrap(True)
        self.now = QLabel("waiting for snitchd…")
        self.range_box = QComboBox()
        for shown in Range:
            self.range_box.addItem(shown.label, shown)
        self.range_box.currentIndexChanged.connect(self._range_changed)
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter apps or users")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(lambda _: self._fill_apps())
        self.chart_area, self.chart = make_chart()
        self.chart_area.setMinimumHeight(240)
        self.apps = AppTable()
        self.apps.itemSelectionChanged.connect(self._selection_changed)
        self.destinations = HostTable()
        # Rich text for the bold name; every name in it is escaped: an executable's path and a
        # host's name are the app's to choose, and must not restyle the window.
        self.hosts_title = QLabel("Select an app to see where it went.")
        self.hosts_title.setTextFormat(Qt.TextFormat.RichText)
        self.status = QLabel()
        self.status.setTextFormat(Qt.TextFormat.PlainText)  # snitchd's messages quote input
        self._lay_out()
        self.timer = QTimer(self)
        self.timer.setInterval(REFRESH_MS)
        self.timer.timeout.connect(self.refresh)
        self.feed.connected.connect(self._connected, _QUEUED)
        self.feed.rates.connect(self.take_rates, _QUEUED)
        self.feed.apps_read.connect(self.take_totals, _QUEUED)
        self.feed.chart_read.connect(self.take_chart, _QUEUED)
        self.feed.hosts_read.connect(self.take_hosts, _QUEUED)
        self.feed.failed.connect(self.status.setText, _QUEUED)
        self._say_scope(seen_others=False)

    def _lay_out(self) -> None:
        top = QHBoxLayout()
        top.addWidget(self.now, 1)
        top.addWidget(QLabel("Range:"))
        top.addWidget(self.range_box)
        top.addWidget(self.filter)
        lower = QWidget()
        hosts_box = QVBoxLayout(lower)
        hosts_box.setContentsMargins(0, 0, 0, 0)
        hosts_box.addWidget(self.hosts_title)
        hosts_box.addWidget(self.destinations)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.chart_area)
        split.addWidget(self.apps)
        split.addWidget(lower)
        split.setSizes([300, 240, 170])
        layout = QVBoxLayout(self)
        layout.addWidget(self.scope)
        layout.addLayout(top)
        layout.addWidget(split, 1)
        layout.addWidget(self.status)

    # -- life cycle: the feed runs while the window is shown ------------------------------------
    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if not self.feed.running:
            self.feed.start()
        self.timer.start()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.timer.stop()
        self.feed.stop()
        self.history = LiveHistory()  # reopened, it knows nothing of the time it was closed
        super().closeEvent(event)

    def refresh(self) -> None:
        """Read the totals and the chart again when the range's refresh is due."""
        now = self._clock()
        if now - self._refreshed < self.range.refresh_seconds:
            return
        self._refreshed = now
        self.feed.refresh(self.range, self.selected)
        if self.range is Range.LIVE:
            self._show_live_chart()

    def _connected(self) -> None:
        self.status.setText("connected to snitchd")
        self._refreshed = float("-inf")
        self.refresh()

    # -- what the feed brings -------------------------------------------------------------------
    def take_rates(self, frame: RateFrame) -> None:
        self.history.add(frame)
        self.live = {a.key: a for a in frame.apps}
        up = sum(a.rate_out for a in frame.apps)
        down = sum(a.rate_in for a in frame.apps)
        moving = sum(1 for a in frame.apps if a.rate_out or a.rate_in)
        flows = sum(a.flows for a in frame.apps)
        self.now.setText(
            f"<b>Now</b>: ↑ {human(up, True)} &nbsp; ↓ {human(down, True)} &nbsp; · "
            f"{moving} app{'s' if moving != 1 else ''} moving data, {flows} open "
            f"flow{'s' if flows != 1 else ''}"
        )
        if any(a.key.uid != self.uid for a in frame.apps):
            self._say_scope(seen_others=True)
        self._fill_apps()
        if self.range is Range.LIVE:
            self._show_live_chart()

    def take_totals(self, shown: Range, rows: list[AppTraffic]) -> None:
        if shown is not self.range:
            return  # an answer for the range shown before
        self.totals = {r.key: r for r in rows}
        self.totals_read += 1
        if any(r.key.uid != self.uid for r in rows):
            self._say_scope(seen_others=True)
        self._fill_apps()
        blocked = sum(r.blocked for r in rows)
        self.status.setText(
            f"{len(rows)} app{'s' if len(rows) != 1 else ''} in the last "
            f"{shown.period.replace('h', ' h').replace('d', ' d')}; "
            f"{sum(r.connections for r in rows)} attempts, {blocked} blocked"
        )

    def take_chart(self, shown: Range, app: AppKey | None, data: TrafficChart) -> None:
        if shown is self.range and app == self.selected and self.chart is not None:
            self.chart.show_chart(data, f"last {shown.label.lower()}")

    def take_hosts(self, app: AppKey, hosts: list[HostTraffic]) -> None:
        if app != self.selected:
            return
        self.hosts = hosts
        self.destinations.fill(hosts)
        self.hosts_title.setText(
            f"<b>{_name(app)}</b> ({html.escape(app.app)}, {html.escape(user_name(app.uid))}): "
            f"{len(hosts)} destination{'s' if len(hosts) != 1 else ''} in its last "
            f"{HOST_ROWS} attempts"
        )

    # -- the person's choices -------------------------------------------------------------------
    def set_range(self, shown: Range) -> None:
        self.range_box.setCurrentIndex(self.range_box.findData(shown))

    def select_app(self, key: AppKey) -> bool:
        return self.apps.select(key)

    def _range_changed(self, _: int) -> None:
        self.range = self.range_box.currentData()
        self.totals = {}
        self._fill_apps()
        if self.range is Range.LIVE:
            self._show_live_chart()
        else:
            self._loading()
        self._refreshed = self._clock()
        self.feed.refresh(self.range, self.selected, now=True)

    def _selection_changed(self) -> None:
        rows = self.apps.selectionModel().selectedRows()
        key = self.apps.key_at(rows[0].row()) if rows else None
        if key == self.selected:
            return
        self.selected = key
        if key is None:
            self.hosts_title.setText("Select an app to see where it went.")
            self.destinations.setRowCount(0)
        else:
            self.hosts_title.setText(f"reading where {_name(key)} went…")
            self.feed.read_hosts(key)
        if self.range is Range.LIVE:
            self._show_live_chart()
        else:
            self._loading()
            self.feed.read_chart(self.range, key)

    # -- drawing --------------------------------------------------------------------------------
    def _say_scope(self, seen_others: bool) -> None:
        if self.uid == 0 or seen_others:
            self.scope.setText("Traffic of every user's apps on this machine.")
        else:
            self.scope.setText(
                f"Traffic of <b>your</b> apps only ({html.escape(user_name(self.uid))}): "
                "snitchd shows "
                "other users' traffic to administrators."
            )

    def _loading(self) -> None:
        if self.chart is not None:
            name = _name(self.selected) if self.selected else "all apps"
            self.chart.clear(f"{name}: reading the last {self.range.label.lower()}…")

    def _show_live_chart(self) -> None:
        if self.chart is not None:
            now = float(int(self.history.last or self._clock()))
            self.chart.show_chart(self.history.chart(self.selected, now), "live, last 10 minutes")

    def rows(self) -> list[AppTraffic]:
        """The apps shown: the range's totals with the live rates, narrowed by the filter."""
        merged: dict[AppKey, AppTraffic] = dict(self.totals)
        for key, live in self.live.items():
            base = merged.get(key, AppTraffic(key))
            merged[key] = AppTraffic(
                key,
                base.bytes_out,
                base.bytes_in,
                base.connections,
                base.blocked,
                base.first_seen,
                live.rate_out,
                live.rate_in,
                live.flows,
            )
        words = self.filter.text().strip().lower()
        return [
            a
            for a in merged.values()
            if not words or words in a.key.app.lower() or words in user_name(a.key.uid).lower()
        ]

    def _icon(self, exe: str, budget: list[int]) -> QIcon:
        identity = self._identities.get(exe)
        if identity is None:
            if budget[0] <= 0:
                return QIcon()
            budget[0] -= 1
            identity = self._identities[exe] = self._identify(exe if "/" in exe else None)
        return app_icon(identity, self.windowIcon())

    def _fill_apps(self) -> None:
        budget = [_NEW_ICONS_PER_FILL]
        self.apps.fill(
            self.rows(), self.selected, lambda exe: self._icon(exe, budget), self._clock()
        )


_shown: list[MonitorWindow] = []  # the one window the tray opens, kept while the app runs


def open_monitor() -> MonitorWindow:
    """Show the Network Monitor (the tray's entry): the same window each time."""
    if not _shown:
        _shown.append(MonitorWindow())
    window = _shown[0]
    window.show()
    window.raise_()
    window.activateWindow()
    return window


def run_monitor() -> int:
    """`snitch-notifier --monitor`: the window alone, no agent, no tray."""
    app = QApplication(sys.argv[:1])
    app.setApplicationName("snitch-monitor")
    app.setDesktopFileName("snitch-monitor")
    use_desktop_icon_theme()
    app.setWindowIcon(snitch_icon())
    signal.signal(signal.SIGINT, lambda *_: app.quit())
    window = MonitorWindow()
    window.show()
    # Python runs the SIGINT handler only when it has control: a timer gives it that.
    wake = QTimer()
    wake.start(500)
    wake.timeout.connect(lambda: None)
    try:
        return app.exec()
    finally:
        window.feed.stop()
