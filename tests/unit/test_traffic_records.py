"""The monitor's records (snitch_notifier.traffic): parsing snitchd's answers, grouping an
app's log rows by destination, and the live history's bounds."""

from __future__ import annotations

from snitch_notifier.traffic import (
    LIVE_SECONDS,
    SPARK_SECONDS,
    AppKey,
    AppTraffic,
    LiveHistory,
    RateFrame,
    app_totals,
    group_hosts,
    group_hosts_by_app,
    human,
    parse_chart,
    parse_rates,
)

CURL = AppKey("/usr/bin/curl", 1000)


def _row(**over):
    row = {"time": 100.0, "dst": "203.0.113.7", "dport": 443, "proto": "tcp", "action": "allow"}
    return row | over


def test_hosts_group_by_name_address_and_port_with_open_flows_counted_apart() -> None:
    rows = [
        _row(host="api.example.org", bytes_out=500, bytes_in=9000),
        _row(host="api.example.org", time=200.0),  # still open: no bytes yet
        _row(host="api.example.org", dport=80, bytes_out=10, bytes_in=10),
        _row(dst="192.0.2.9", dport=25, action="deny", time=150.0),
    ]
    hosts = group_hosts(rows)
    assert [(h.host, h.port) for h in hosts] == [
        ("api.example.org", 443),
        ("api.example.org", 80),
        ("192.0.2.9", 25),
    ], "the most bytes first"
    first = hosts[0]
    assert (first.connections, first.blocked, first.bytes_out, first.open) == (2, 0, 500, 1)
    assert (first.last, first.last_action) == (200.0, "allow")
    denied = hosts[2]
    assert (denied.blocked, denied.open, denied.address) == (1, 0, "192.0.2.9"), (
        "a blocked attempt is not an open flow"
    )


def test_a_chart_is_the_apps_series_or_the_total() -> None:
    report = {
        "period": "1h",
        "start": 0.0,
        "bucket": 60,
        "total": {"app": "", "uid": -1, "points": [[0, 5, 6, 1], [60, 7, 8, 0]]},
        "apps": [
            {"app": "/usr/bin/curl", "uid": 0, "points": [[0, 1, 1, 0]]},
            {"app": "/usr/bin/curl", "uid": 1000, "points": [[60, 7, 8, 0]]},
        ],
    }
    total = parse_chart(report, None, 3600.0)
    assert total.title == "all apps" and len(total.points) == 2
    assert total.points[0].blocked == 1
    curl = parse_chart(report, CURL, 3600.0)
    assert curl.title == "curl" and [p.bytes_out for p in curl.points] == [7], "its user's"
    assert parse_chart(report, AppKey("/usr/bin/wget", 1000), 3600.0).points == ()


def test_rates_and_totals_parse_into_records() -> None:
    frame = parse_rates(
        {
            "time": 10.5,
            "seconds": 1.0,
            "apps": [
                {
                    "app": "/usr/bin/curl",
                    "uid": 1000,
                    "rate_out": 100.0,
                    "rate_in": 2.0,
                    "flows": 1,
                    "attempts": 3,
                    "blocked": 1,
                }
            ],
        }
    )
    assert frame.apps[0].key == CURL and frame.apps[0].blocked == 1
    rows = app_totals(
        [
            {
                "app": "/usr/bin/curl",
                "uid": 1000,
                "bytes_out": 5,
                "bytes_in": None,
                "connections": 2,
                "blocked": 0,
                "first_seen": 1.0,
            }
        ]
    )
    assert rows == [AppTraffic(CURL, 5, 0, 2, 0, 1.0)]


def test_the_live_history_is_bounded_and_starts_where_the_window_did() -> None:
    history = LiveHistory()
    for second in range(2 * LIVE_SECONDS):
        history.add(RateFrame(float(second), (AppTraffic(CURL, rate_out=1.0),)))
    assert len(history.total) == LIVE_SECONDS and len(history.apps[CURL]) == LIVE_SECONDS
    now = float(2 * LIVE_SECONDS - 1)
    chart = history.chart(CURL, now)
    assert chart.end - chart.start <= LIVE_SECONDS and chart.bucket == 1
    assert len(chart.points) == LIVE_SECONDS
    fresh = LiveHistory()
    fresh.add(RateFrame(1000.0, ()))
    assert fresh.chart(None, 1010.0).start == 950.0, "at least a minute, not ten empty ones"
    assert fresh.chart(None, 1010.0).known_from == 1000.0, "nothing known before it opened"
    for i in range(600):
        fresh.add(RateFrame(1001.0 + i, (AppTraffic(AppKey(f"/bin/app{i}", 0)),)))
    assert len(fresh.apps) == 500, "at most 500 apps keep a ring"


def test_sizes_read_as_people_write_them() -> None:
    assert human(999) == "999 B"
    assert human(1_500_000) == "1.5 MB"
    assert human(2048, per_second=True) == "2.0 kB/s"


def test_a_destination_keeps_its_first_time_its_verdicts_and_why_the_last_one() -> None:
    rows = [
        _row(host="api.example.org", time=300.0, action="deny", rule_id=7),
        _row(host="api.example.org", time=100.0, rule_id=2),
        _row(host="api.example.org", time=200.0, action="reject", reason="default: no agent"),
    ]
    (host,) = group_hosts(rows)
    assert (host.first, host.last, host.last_action) == (100.0, 300.0, "deny")
    assert host.actions == {"allow", "deny", "reject"}
    assert host.last_reason == "rule 7"


def test_rows_of_many_apps_group_by_app_as_the_rollups_name_them() -> None:
    rows = [
        _row(exe="/usr/bin/curl", uid=1000),
        _row(exe=None, uid=1000, dst="198.51.100.9"),
        _row(exe=None, uid=None, dst="192.0.2.9"),
    ]
    by_app = group_hosts_by_app(rows)
    assert set(by_app) == {CURL, AppKey("uid 1000", 1000), AppKey("kernel", -1)}
    assert [h.address for h in by_app[AppKey("kernel", -1)]] == ["192.0.2.9"]


def test_a_sparkline_is_the_apps_last_minute_one_pair_a_second() -> None:
    history = LiveHistory()
    moving = AppTraffic(CURL, rate_out=10.0, rate_in=20.0)
    for t in (1000.2, 1002.7):  # a second without a frame is one that moved nothing
        history.add(RateFrame(t, (moving,)))
    spark = history.spark(CURL, 1002.7)
    assert len(spark) == SPARK_SECONDS
    assert spark[-3:] == ((10.0, 20.0), (0.0, 0.0), (10.0, 20.0))
    assert history.spark(AppKey("/usr/bin/other", 0), 1002.7) == ()
