"""The Network Monitor window: what has talked to the network, how much, and what was blocked.

Top: the chart of the chosen range (the live ten minutes from the `Rates` signal, or 1 h to
30 d from snitchd's rollups), for every app or the selected one. Below: the apps, with their
live rates (a sparkline of the last minute) and their totals in the range, sortable; then the
selected app's destinations (from its newest log rows) and the rules that apply to it. One
filter box narrows all of it by app, host, port, verdict or user (`monitorfilter`). It
refreshes itself: rates each second as snitchd sends them, totals and the chart every few
seconds (the longer the range, the less often: `Range.refresh_seconds`), and the selected app's
rules when snitchd's `RulesChanged` signal says rules changed, so a rule made elsewhere (snitchctl,
a rules.d file, a prompt, expiry) shows up without the window reading them all every few seconds.

From a destination a person can make a rule "from now on" (the popup's choices) and ask
"why?" (snitchd's `Explain`): `monitordialogs`. snitchd decides whether the rule may be made
(its admins only) and says so; the window writes nothing itself.

What it shows is what snitchd lets its user see: a user who is not an admin gets only their
own apps' traffic (the daemon filters), and the window says so rather than suggest it shows
the whole machine.
"""

from __future__ import annotations

import html
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QPoint, Qt, QTimer
from PySide6.QtGui import QCloseEvent, QIcon, QShowEvent
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from snitch_common.answers import Action
from snitch_common.rulechange import RulesChanged
from snitch_notifier.bridge import RuleRow
from snitch_notifier.icons import app_icon, snitch_icon, use_desktop_icon_theme
from snitch_notifier.identity import AppIdentity, desktop_identity
from snitch_notifier.monitoractions import RuleChoice, can_act
from snitch_notifier.monitordialogs import RuleDialog, WhyDialog
from snitch_notifier.monitorfeed import HOST_ROWS, RECENT_ROWS, MonitorFeed
from snitch_notifier.monitorfilter import MonitorFilter, parse_filter
from snitch_notifier.monitortables import AppTable, HostTable, RuleTable, same_place
from snitch_notifier.quitting import quitting_on_signals
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
_FILTER_WAIT_MS = 300  # typing in the filter box reads where apps went once it pauses
_QUEUED = Qt.ConnectionType.QueuedConnection
_WAITING = "waiting for snitchd…"


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
        self.known_since = 0.0  # how far back the selected app's rows reach (0: all)
        self.recent: dict[AppKey, list[HostTraffic]] = {}  # where every app went (filters)
        self.recent_range: Range | None = None  # the range `recent` was read for
        self.rules: list[RuleRow] = []  # the rules that apply to the selected app
        self.rules_for: AppKey | None = None
        self.wanted = MonitorFilter()
        self.rule_dialog: RuleDialog | None = None
        self.why = WhyDialog(self)
        self._why_for: tuple[AppKey, HostTraffic] | None = None
        self.totals_read = 0  # Apps answers taken, for tests and the status line
        self._refreshed = float("-inf")  # when the totals were last asked for
        self.rules_generation = 0  # the last RulesChanged taken (0: none since connected)
        self.setWindowTitle("snitch — Network Monitor")
        self.resize(1180, 780)

        self.scope = QLabel()
        self.scope.setWordWrap(True)
        self.now = QLabel(_WAITING)
        self.range_box = QComboBox()
        for shown in Range:
            self.range_box.addItem(shown.label, shown)
        self.range_box.currentIndexChanged.connect(self._range_changed)
        self.filter = self._make_filter()
        self.chart_area, self.chart = make_chart()
        self.chart_area.setMinimumHeight(240)
        self.apps = AppTable()
        self.apps.itemSelectionChanged.connect(self._selection_changed)
        self._make_lower()
        self.status = QLabel()
        self.status.setTextFormat(Qt.TextFormat.PlainText)  # snitchd's messages quote input
        self._lay_out()
        self.timer = QTimer(self)
        self.timer.setInterval(REFRESH_MS)
        self.timer.timeout.connect(self.refresh)
        self._listen()
        self._say_scope(seen_others=False)
        self._host_chosen()

    def _listen(self) -> None:
        """The feed's answers, queued: they come from its worker thread."""
        feed = self.feed
        feed.connected.connect(self._connected, _QUEUED)
        feed.lost.connect(self._lost, _QUEUED)
        feed.rates.connect(self.take_rates, _QUEUED)
        feed.apps_read.connect(self.take_totals, _QUEUED)
        feed.chart_read.connect(self.take_chart, _QUEUED)
        feed.hosts_read.connect(self.take_hosts, _QUEUED)
        feed.recent_read.connect(self.take_recent, _QUEUED)
        feed.rules_read.connect(self.take_rules, _QUEUED)
        feed.rules_changed.connect(self.take_rules_changed, _QUEUED)
        feed.rule_made.connect(self.take_rule_made, _QUEUED)
        feed.explained.connect(self.take_explained, _QUEUED)
        feed.action_failed.connect(self.take_action_failed, _QUEUED)
        feed.failed.connect(self.status.setText, _QUEUED)

    def _make_filter(self) -> QLineEdit:
        box = QLineEdit()
        box.setPlaceholderText("Filter: app, host, port, verdict, user")
        box.setToolTip(
            "Words match an app, its user, a destination's name or address, a port or a "
            "verdict (allow, deny, reject, blocked); every word must match.\n"
            "Narrow a word with app:, user:, host:, port: or verdict: — "
            "e.g. host:example.org verdict:deny"
        )
        box.setClearButtonEnabled(True)
        box.setMinimumWidth(300)
        box.textChanged.connect(self._filter_changed)
        self._filter_wait = QTimer(self)
        self._filter_wait.setSingleShot(True)
        self._filter_wait.setInterval(_FILTER_WAIT_MS)
        self._filter_wait.timeout.connect(self._read_recent)
        return box

    def _make_lower(self) -> None:
        """The selected app's destinations (with what can be done about one) and rules."""
        self.destinations = HostTable()
        self.destinations.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.destinations.customContextMenuRequested.connect(self._host_menu)
        self.destinations.itemSelectionChanged.connect(self._host_chosen)
        self.destinations.doubleClicked.connect(lambda _: self.ask_why())
        self.allow_button = QPushButton("&Allow this from now on…")
        self.deny_button = QPushButton("&Deny this from now on…")
        self.why_button = QPushButton("&Why?")
        self.allow_button.clicked.connect(lambda: self.make_rule(Action.ALLOW))
        self.deny_button.clicked.connect(lambda: self.make_rule(Action.DENY))
        self.why_button.clicked.connect(lambda _=False: self.ask_why())
        self.rule_table = RuleTable()
        self.rules_title = QLabel("Select an app to see the rules that apply to it.")
        self.rules_title.setTextFormat(Qt.TextFormat.RichText)
        self.tabs = QTabWidget()
        # Rich text for the bold name; every name in it is escaped: an executable's path and a
        # host's name are the app's to choose, and must not restyle the window.
        self.hosts_title = QLabel("Select an app to see where it went.")
        self.hosts_title.setTextFormat(Qt.TextFormat.RichText)

    def _lay_out(self) -> None:
        top = QHBoxLayout()
        top.addWidget(self.now, 1)
        top.addWidget(QLabel("Range:"))
        top.addWidget(self.range_box)
        top.addWidget(self.filter)
        where = QWidget()
        hosts_box = QVBoxLayout(where)
        hosts_box.setContentsMargins(4, 4, 4, 4)
        hosts_box.addWidget(self.hosts_title)
        hosts_box.addWidget(self.destinations)
        actions = QHBoxLayout()
        for button in (self.allow_button, self.deny_button, self.why_button):
            actions.addWidget(button)
        actions.addStretch(1)
        hosts_box.addLayout(actions)
        ruled = QWidget()
        rules_box = QVBoxLayout(ruled)
        rules_box.setContentsMargins(4, 4, 4, 4)
        rules_box.addWidget(self.rules_title)
        rules_box.addWidget(self.rule_table)
        self.tabs.addTab(where, "Destinations")
        self.tabs.addTab(ruled, "Rules")
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.chart_area)
        split.addWidget(self.apps)
        split.addWidget(self.tabs)
        split.setSizes([280, 230, 220])
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
        """Read the totals, the chart and the selected app's destinations again when the
        range's refresh is due (and where every app went, while the filter needs it). The
        rules are read when they change (`take_rules_changed`), not here."""
        now = self._clock()
        if now - self._refreshed < self.range.refresh_seconds:
            return
        self._refreshed = now
        self.feed.refresh(self.range, self.selected)
        if self.selected is not None:
            self.feed.read_hosts(self.selected)
        if self.wanted.needs_hosts:
            self.feed.read_recent(self.range)
        if self.range is Range.LIVE:
            self._show_live_chart()

    def _connected(self) -> None:
        self.status.setText("connected to snitchd")
        if self.now.text() == _WAITING:
            # snitchd sends rates with the log's writes: none while nothing moves.
            self.now.setText("no traffic since the window opened")
        self._refreshed = float("-inf")
        self.rules_generation = 0
        if self.selected is not None:  # (again) connected: what changed meanwhile is unknown
            self.feed.read_rules(self.selected)
        self.refresh()

    def _lost(self, why: str) -> None:
        """The rates shown came from a snitchd that is gone: none are live until the next one
        sends its own (the feed subscribes to it)."""
        self.status.setText(f"{why}: waiting for snitchd")
        self.now.setText(_WAITING)
        self.live = {}
        self._fill_apps()

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

    def take_hosts(self, app: AppKey, hosts: list[HostTraffic], known_since: float) -> None:
        if app != self.selected:
            return
        self.hosts = hosts
        self.known_since = known_since
        self._fill_hosts()
        if self.wanted.needs_hosts:
            self._fill_apps()

    def take_recent(self, shown: Range, by_app: dict[AppKey, list[HostTraffic]]) -> None:
        if shown is not self.range:
            return
        self.recent, self.recent_range = by_app, shown
        self._fill_apps()

    def take_rules(self, app: AppKey, rules: list[RuleRow]) -> None:
        if app != self.selected:
            return
        self.rules, self.rules_for = rules, app
        self.rule_table.fill(rules)
        self.tabs.setTabText(1, f"Rules ({len(rules)})")
        self.rules_title.setText(
            f"Rules that can apply to <b>{_name(app)}</b> "
            f"({html.escape(user_name(app.uid))}): naming it or any app, for its user or "
            "any; <code>snitchctl explain</code> or <i>Why?</i> tells which one wins"
        )

    def take_rules_changed(self, news: RulesChanged) -> None:
        """snitchd's rules changed: read the selected app's again if the change may touch
        them (anything added or changed may apply to it; a removal only if shown), or if a
        signal was missed (a gap in the count, or snitchd started again)."""
        missed = not news.follows(self.rules_generation)
        self.rules_generation = news.generation
        if self.selected is None:
            return
        if missed or news.touches({r.id for r in self.rules}):
            self.feed.read_rules(self.selected)

    # -- acting on a destination ----------------------------------------------------------------
    def make_rule(self, action: Action, host: HostTraffic | None = None) -> RuleDialog | None:
        """Open the rule dialog for `host` (the selected destination by default)."""
        host = host or self.destinations.selected_host()
        app = self.selected
        if host is None or app is None or can_act(app, host) is not None:
            return None
        if self.rule_dialog is not None:
            self.rule_dialog.close()
        dialog = self.rule_dialog = RuleDialog(app, host, action, self)
        dialog.chosen.connect(self.feed.add_rule)
        dialog.show()
        return dialog

    def ask_why(self, host: HostTraffic | None = None) -> None:
        host = host or self.destinations.selected_host()
        app = self.selected
        if host is None or app is None:
            return
        self._why_for = (app, host)
        self.why.asking(app, host)
        self.why.show()
        self.why.raise_()
        # Its destinations first (the feed runs them in order): the answer then shows the
        # attempt that made the person ask, not the one listed when the row was read.
        self.feed.read_hosts(app)
        self.feed.explain(app, host)

    def take_rule_made(self, choice: RuleChoice, row: RuleRow, existing: bool) -> None:
        said = "was there already" if existing else "added"
        self.status.setText(f"rule {row.id} {said}: {row.text}")
        dialog = self.rule_dialog
        if dialog is not None and dialog.choice() == choice:
            dialog.made(row, existing)
        if self.selected == choice.app:
            self.feed.read_hosts(choice.app)  # its rules follow RulesChanged

    def take_explained(self, app: AppKey, host: HostTraffic, answer: dict[str, Any]) -> None:
        if self._why_for == (app, host):
            newest = next((h for h in self.hosts if same_place(h, host)), host)
            self.why.show_answer(app, newest, answer)

    def take_action_failed(self, message: str) -> None:
        if self.rule_dialog is not None and self.rule_dialog.isVisible():
            self.rule_dialog.refused(message)
        elif self.why.isVisible():
            self.why.failed(message)
        else:
            self.status.setText(message)

    def _host_chosen(self) -> None:
        host = self.destinations.selected_host()
        refused = None if host is None or self.selected is None else can_act(self.selected, host)
        for button in (self.allow_button, self.deny_button):
            button.setEnabled(host is not None and refused is None)
            button.setToolTip(refused or "")
        self.why_button.setEnabled(host is not None)

    def _host_menu(self, pos: QPoint) -> None:
        index = self.destinations.indexAt(pos)
        host = self.destinations.host_at(index.row()) if index.isValid() else None
        if host is None or self.selected is None:
            return
        self.destinations.selectRow(index.row())
        refused = can_act(self.selected, host)
        menu = QMenu(self)
        for action, text in ((Action.ALLOW, "Allow"), (Action.DENY, "Deny")):
            entry = menu.addAction(f"{text} this from now on…")
            entry.setEnabled(refused is None)
            entry.triggered.connect(lambda _=False, a=action, h=host: self.make_rule(a, h))
        menu.addSeparator()
        menu.addAction("Why?").triggered.connect(lambda _=False, h=host: self.ask_why(h))
        menu.popup(self.destinations.viewport().mapToGlobal(pos))

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
        self.hosts, self.rules, self.rules_for = [], [], None
        self.rule_table.setRowCount(0)
        self.tabs.setTabText(1, "Rules")
        if key is None:
            self.hosts_title.setText("Select an app to see where it went.")
            self.rules_title.setText("Select an app to see the rules that apply to it.")
            self.destinations.setRowCount(0)
        else:
            self.hosts_title.setText(f"reading where {_name(key)} went…")
            self.rules_title.setText(f"reading the rules for {_name(key)}…")
            self.feed.read_hosts(key)
            self.feed.read_rules(key)
        self._host_chosen()
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

    def _filter_changed(self, text: str) -> None:
        was = self.wanted
        self.wanted = parse_filter(text)
        self._fill_apps()
        self._fill_hosts()
        if self.wanted.needs_hosts and (not was.needs_hosts or self.recent_range is not self.range):
            self._filter_wait.start()

    def _read_recent(self) -> None:
        if self.wanted.needs_hosts:
            self.feed.read_recent(self.range)

    def hosts_of(self, key: AppKey) -> list[HostTraffic] | None:
        """Where an app went, as far as the window knows: the selected app's own rows, else
        the range's newest rows of every app (None: not read, or not among them)."""
        if key == self.selected and self.hosts:
            return self.hosts
        if self.recent_range is not self.range:
            return None
        return self.recent.get(key)

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
        if self.wanted.empty:
            return list(merged.values())
        return [a for a in merged.values() if self.wanted.keeps_app(a, self.hosts_of(a.key))]

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
        now = self._clock()
        self.apps.fill(
            self.rows(),
            self.selected,
            lambda exe: self._icon(exe, budget),
            now,
            lambda key: self.history.spark(key, self.history.last or now),
        )
        if self.wanted.needs_hosts:
            narrowed = f"filter: where apps went is read from the newest {RECENT_ROWS} attempts"
            self.filter.setStatusTip(narrowed)

    def _fill_hosts(self) -> None:
        app = self.selected
        if app is None:
            return
        shown = [h for h in self.hosts if self.wanted.keeps_host(app, h)]
        self.destinations.fill(shown, self._clock(), self.known_since)
        self._host_chosen()
        self.tabs.setTabText(0, f"Destinations ({len(shown)})")
        narrowed = f" ({len(shown)} shown by the filter)" if len(shown) != len(self.hosts) else ""
        new = len(self.destinations.new_hosts())
        fresh = f"; {new} new today" if new else ""
        self.hosts_title.setText(
            f"<b>{_name(app)}</b> ({html.escape(app.app)}, {html.escape(user_name(app.uid))}): "
            f"{len(self.hosts)} destination{'s' if len(self.hosts) != 1 else ''} in its last "
            f"{HOST_ROWS} attempts{narrowed}{fresh}"
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
    window = MonitorWindow()
    try:
        with quitting_on_signals(app):
            window.show()
            return app.exec()
    finally:
        window.feed.stop()
