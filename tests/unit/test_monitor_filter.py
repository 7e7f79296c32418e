"""The Network Monitor's filter box (issue 19: "one filter box (app, host or domain, port,
verdict, user) over everything"): what each kind of word keeps, and that the words of one
filter must meet in one destination."""

from __future__ import annotations

import pytest

from snitch_notifier.monitorfilter import Field, Term, parse_filter
from snitch_notifier.traffic import AppKey, AppTraffic, HostTraffic

CURL = AppTraffic(AppKey("/usr/bin/curl", 0), connections=5, blocked=1)
SSH = AppTraffic(AppKey("/usr/bin/ssh", 0), connections=3)
API = HostTraffic(
    "api.example.org", "203.0.113.7", 443, "tcp", 4, 0, 10, 20, 1.0, "allow",
    actions=frozenset({"allow"}),
)  # fmt: skip
ADS = HostTraffic(
    "ads.example.net", "198.51.100.9", 80, "tcp", 1, 1, 0, 0, 2.0, "deny",
    actions=frozenset({"deny"}),
)  # fmt: skip
DNS = HostTraffic(
    "192.0.2.2", "192.0.2.2", 53, "udp", 1, 1, 0, 0, 3.0, "reject",
    actions=frozenset({"reject"}),
)  # fmt: skip
HOSTS = {CURL.key: [API, ADS], SSH.key: [DNS]}


def _apps(text: str) -> list[str]:
    wanted = parse_filter(text)
    return [a.key.app for a in (CURL, SSH) if wanted.keeps_app(a, HOSTS[a.key])]


def _hosts(text: str, app: AppTraffic = CURL) -> list[str]:
    wanted = parse_filter(text)
    return [h.host for h in HOSTS[app.key] if wanted.keeps_host(app.key, h)]


def test_keys_narrow_a_word_and_unknown_keys_are_plain_words() -> None:
    assert parse_filter("host:*.example.org PORT:443 2001:db8::1").terms == (
        Term(Field.HOST, "example.org"),
        Term(Field.PORT, "443"),
        Term(Field.ANY, "2001:db8::1"),
    )
    assert parse_filter("  ").empty


@pytest.mark.parametrize(
    ("text", "apps", "curl_hosts"),
    [
        ("", ["/usr/bin/curl", "/usr/bin/ssh"], ["api.example.org", "ads.example.net"]),
        ("curl", ["/usr/bin/curl"], ["api.example.org", "ads.example.net"]),
        ("app:ssh", ["/usr/bin/ssh"], []),
        ("user:root", ["/usr/bin/curl", "/usr/bin/ssh"], ["api.example.org", "ads.example.net"]),
        ("host:example.org", ["/usr/bin/curl"], ["api.example.org"]),
        ("198.51.100", ["/usr/bin/curl"], ["ads.example.net"]),
        ("port:53", ["/usr/bin/ssh"], []),
        ("port:443/udp", [], []),
        ("verdict:deny", ["/usr/bin/curl"], ["ads.example.net"]),
        ("blocked", ["/usr/bin/curl", "/usr/bin/ssh"], ["ads.example.net"]),
        ("verdict:reject", ["/usr/bin/ssh"], []),
        ("curl allow", ["/usr/bin/curl"], ["api.example.org"]),
    ],
)
def test_each_kind_of_word_keeps_what_it_names(
    text: str, apps: list[str], curl_hosts: list[str]
) -> None:
    assert _apps(text) == apps
    assert _hosts(text) == curl_hosts


def test_the_words_must_meet_in_one_destination() -> None:
    """curl went to example.org (allowed) and was denied elsewhere: not "denied on
    example.org"."""
    assert _apps("host:example.org verdict:deny") == []
    assert _apps("host:example.net verdict:deny") == ["/usr/bin/curl"]


def test_without_its_destinations_an_app_matches_verdicts_by_its_totals() -> None:
    wanted = parse_filter("verdict:blocked")
    assert wanted.needs_hosts
    assert wanted.keeps_app(CURL, None)
    assert not wanted.keeps_app(SSH, None)
    assert not parse_filter("host:example.org").keeps_app(CURL, None)
    assert not parse_filter("app:curl").needs_hosts
