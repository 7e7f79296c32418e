"""The Network Monitor window with records handed to it as its feed would (no bus here; the
lab test tests/integration/test_monitor_window.py drives it against a real snitchd)."""

from __future__ import annotations

from snitch_notifier.monitor import MonitorWindow
from snitch_notifier.traffic import AppKey, AppTraffic, Range, RateFrame

from .conftest import NOW, fixed_identity

BIG = AppKey("/usr/bin/rsync", 1000)
SMALL = AppKey("/usr/bin/curl", 1000)


def _window(qtbot, uid: int = 1000) -> MonitorWindow:
    window = MonitorWindow(identify=fixed_identity, clock=lambda: NOW, uid=uid)
    qtbot.addWidget(window)
    return window


def test_apps_sort_by_bytes_not_by_their_text(qtbot) -> None:
    """'9.0 kB' sorts after '10.0 MB' as text; the list must put 10 MB first."""
    window = _window(qtbot)
    window.take_totals(
        Range.LIVE, [AppTraffic(SMALL, bytes_out=9_000), AppTraffic(BIG, bytes_out=10_000_000)]
    )
    assert window.apps.app_keys() == [BIG, SMALL]
    assert window.apps.texts("Sent") == ["10.0 MB", "9.0 kB"]


def test_a_user_who_is_not_an_admin_is_told_the_window_shows_their_apps_only(qtbot) -> None:
    window = _window(qtbot, uid=1000)
    window.take_totals(Range.LIVE, [AppTraffic(BIG, bytes_out=1)])
    assert "your</b> apps only" in window.scope.text()
    window.take_totals(Range.LIVE, [AppTraffic(AppKey("/usr/sbin/ntpd", 0), bytes_out=1)])
    assert "every user" in window.scope.text()
    assert "every user" in _window(qtbot, uid=0).scope.text()


def test_the_selection_stays_on_its_app_when_live_rates_reorder_the_list(qtbot) -> None:
    window = _window(qtbot)
    window.apps.sortByColumn(
        window.apps.columns.index("Up"), window.apps.horizontalHeader().sortIndicatorOrder()
    )
    window.take_totals(Range.LIVE, [AppTraffic(BIG, bytes_out=5), AppTraffic(SMALL, bytes_out=1)])
    assert window.select_app(SMALL)
    assert window.selected == SMALL
    for rate in (10.0, 1e6, 5.0):
        window.take_rates(RateFrame(NOW, (AppTraffic(SMALL, rate_out=rate),)))
        rows = window.apps.selectionModel().selectedRows()
        assert [window.apps.key_at(r.row()) for r in rows] == [SMALL]
    assert window.selected == SMALL


def test_the_filter_narrows_by_app_or_user(qtbot) -> None:
    window = _window(qtbot)
    window.take_totals(Range.LIVE, [AppTraffic(BIG, bytes_out=5), AppTraffic(SMALL, bytes_out=1)])
    qtbot.keyClicks(window.filter, "rsy")
    assert window.apps.app_keys() == [BIG]
    window.filter.clear()
    assert len(window.apps.app_keys()) == 2


def test_an_answer_for_another_range_is_not_shown(qtbot) -> None:
    window = _window(qtbot)
    window.set_range(Range.DAY)
    assert window.range is Range.DAY
    window.take_totals(Range.LIVE, [AppTraffic(BIG, bytes_out=5)])
    assert window.apps.app_keys() == []


def test_an_apps_name_cannot_restyle_the_window(qtbot) -> None:
    """Paths and host names are the app's to choose: rich-text labels and the chart title
    show them as text, never as markup."""
    evil = AppKey('/tmp/<b style="color:red">blocked</b>', 1000)
    window = _window(qtbot)
    window.take_totals(Range.LIVE, [AppTraffic(evil, bytes_out=5)])
    assert window.select_app(evil)
    window.take_hosts(evil, [], 0.0)
    assert "<b style" not in window.hosts_title.text()
    assert "&lt;b style=&quot;color:red&quot;&gt;" in window.hosts_title.text()
    tip = window.apps.item(0, 0).toolTip()
    assert "<b style" not in tip and "&lt;b style" in tip
    if window.chart is not None:
        window.take_rates(RateFrame(NOW, (AppTraffic(evil, rate_out=1.0),)))
        assert "<b style" not in window.chart.chart().title()
