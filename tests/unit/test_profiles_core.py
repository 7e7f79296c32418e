"""Profiles without a kernel or a bus (issue 17): names and networks checked when a profile is
made (overlaps refused), which profile a network calls for, and on a real store file the rules
of a profile holding only while it is active."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest

from snitch_common.errors import ProfileError, RuleError
from snitch_common.modes import Mode
from snitch_common.records import Attribution, Flow, Process, Proto
from snitch_common.rules import parse_rule
from snitchd.firewall import Firewall
from snitchd.profiles import (
    MatchKind,
    NetMatch,
    NetworkState,
    Profile,
    check_profile,
    parse_match,
    pick_profile,
)
from snitchd.switching import Switcher
from tests.support.firewall import NOW, Clock, make_firewall

HOME_GW = "02:00:00:00:00:01"
WORK_GW = "02:00:00:00:00:02"


def test_networks_parse_and_a_mac_is_normalised() -> None:
    assert parse_match("gateway=02-00-00-00-00-AB") == NetMatch(
        MatchKind.GATEWAY, "02:00:00:00:00:ab"
    )
    assert parse_match("iface=wlan0") == NetMatch(MatchKind.IFACE, "wlan0")
    assert str(parse_match("ssid=Café Wi-Fi")) == "ssid=Café Wi-Fi"


@pytest.mark.parametrize(
    ("text", "why"),
    [("gateway=192.168.1.1", "a MAC address"), ("bssid=x", "use gateway=MAC"),
     ("ssid=", "needs a value"), ("iface=" + "x" * 16, "at most 15"),
     ("iface=eth0:1", "Linux refuses ':'"), ("iface=wlà", "Linux refuses 'à'"),
     ("iface=..", "not '.' or '..'"), ("iface=a\tb", "printable")],
)  # fmt: skip
def test_bad_networks_are_refused(text: str, why: str) -> None:
    with pytest.raises(ProfileError, match=why):
        parse_match(text)


def test_a_profile_is_checked_against_the_others_and_an_overlap_is_refused() -> None:
    home = check_profile("home", "ask", [f"gateway={HOME_GW}"], [])
    assert home == Profile("home", Mode.ASK, (NetMatch(MatchKind.GATEWAY, HOME_GW),))
    with pytest.raises(
        ProfileError, match="overlapping network match: gateway=02:00:00:00:00:01 is profile home"
    ):
        check_profile("cafe", None, ["iface=wlan0", f"gateway={HOME_GW}"], [home])
    with pytest.raises(ProfileError, match="exists already"):
        check_profile("home", None, [], [home])
    with pytest.raises(ProfileError, match="unknown mode 'quiet'"):
        check_profile("work", "quiet", [], [home])
    for bad in ("Home", "-x", "none", "a" * 33, ""):
        with pytest.raises(ProfileError, match="invalid profile name"):
            check_profile(bad, None, [], [])


def test_the_most_specific_match_picks_the_profile_and_no_match_picks_none() -> None:
    wired = Profile("office", None, (NetMatch(MatchKind.IFACE, "eth0"),))
    home = Profile("home", None, (NetMatch(MatchKind.GATEWAY, HOME_GW),))
    cafe = Profile("cafe", None, (NetMatch(MatchKind.SSID, "Cafe"),))
    profiles = [wired, home, cafe]
    assert pick_profile(profiles, NetworkState("eth0", HOME_GW)) == home  # gateway > iface
    assert pick_profile(profiles, NetworkState("eth0", HOME_GW, ssid="Cafe")) == cafe
    assert pick_profile(profiles, NetworkState("eth0", WORK_GW)) == wired
    assert pick_profile(profiles, NetworkState("wlan0", WORK_GW)) is None
    assert pick_profile(profiles, NetworkState()) is None


def test_profile_names_in_rules_round_trip_and_bad_ones_are_refused() -> None:
    rule = parse_rule("allow app=/usr/bin/curl port=443 profile=home")
    assert rule.profile == "home" and parse_rule(str(rule)) == rule
    with pytest.raises(RuleError, match="invalid profile 'Home'"):
        parse_rule("allow profile=Home")


# -- on a real store -----------------------------------------------------------------------------


def make_switcher(db: Path) -> Switcher:
    switcher = Switcher(make_firewall(db, Clock()))
    switcher.load()
    return switcher


@pytest.fixture
def switcher(tmp_path: Path) -> Iterator[Switcher]:
    s = make_switcher(tmp_path / "snitch.db")
    try:
        yield s
    finally:
        s.fw.store.close()


def winner(fw: Firewall, port: int) -> int | None:
    flow = Flow(Proto.TCP, ip_address("192.0.2.1"), 4000, ip_address("192.0.2.2"), port, "eth0")
    proc = Process(Attribution.PROCESS, pid=1, uid=1000, exe="/usr/bin/curl")
    hit = fw.rules.match(flow, proc, frozenset(), NOW)
    return None if hit is None else hit[0]


async def test_a_profile_s_rules_hold_only_while_it_is_active(
    switcher: Switcher, tmp_path: Path
) -> None:
    fw = switcher.fw
    await switcher.create_profile("home", None, [], "test")
    await switcher.create_profile("public", "silent-deny", [], "test")
    everywhere = await fw.add_rule(parse_rule("allow port=443"), "test")
    at_home = await fw.add_rule(parse_rule("allow port=80 profile=home"), "test")
    assert winner(fw, 80) is None and winner(fw, 443) == everywhere.id
    assert [i for i, _ in await fw.rule_entries()] == [everywhere.id, at_home.id]  # listed
    await switcher.activate("home", "by test")
    assert winner(fw, 80) == at_home.id and winner(fw, 443) == everywhere.id
    await switcher.activate("public", "by test")
    assert winner(fw, 80) is None and fw.modes.state.mode is Mode.SILENT_DENY
    assert fw.modes.state.by == "profile public"
    # A restart keeps the active profile, and the mode it brought.
    await switcher.activate("home", "by test")
    fw.store.close()
    again = make_switcher(tmp_path / "snitch.db")
    try:
        assert again.fw.profile == "home" and winner(again.fw, 80) == at_home.id
        assert again.fw.modes.state.mode is Mode.SILENT_DENY
    finally:
        again.fw.store.close()


async def test_a_profile_in_use_cannot_be_deleted_and_an_unknown_one_not_activated(
    switcher: Switcher,
) -> None:
    fw = switcher.fw
    await switcher.create_profile("home", None, [], "test")
    rule = await fw.add_rule(parse_rule("allow port=80 profile=home"), "test")
    with pytest.raises(ProfileError, match=f"1 rule\\(s\\) hold in it \\({rule.id}\\)"):
        await switcher.delete_profile("home", "test")
    await switcher.activate("home", "by test")
    await fw.delete_rule(rule.id, "test")
    with pytest.raises(ProfileError, match="it is active"):
        await switcher.delete_profile("home", "test")
    with pytest.raises(ProfileError, match="no profile 'work'"):
        await switcher.activate("work", "by test")
    assert fw.profile == "home"
    await switcher.activate(None, "by test")
    await switcher.delete_profile("home", "test")
    assert switcher.listed_profiles() == []


async def test_the_network_switches_to_the_profile_that_names_it(switcher: Switcher) -> None:
    fw = switcher.fw
    await switcher.create_profile("home", "ask", [f"gateway={HOME_GW}"], "test")
    await switcher.create_profile("public", "silent-deny", ["iface=wlan0"], "test")
    switcher.follow(NetworkState("eth0", HOME_GW, "192.0.2.2"))
    assert switcher._following is not None
    await switcher._following
    assert fw.profile == "home"
    switcher.follow(NetworkState("wlan0", WORK_GW, "198.51.100.2"))
    await switcher._following
    assert fw.profile == "public" and fw.modes.state.mode is Mode.SILENT_DENY
    switcher.follow(NetworkState("eth1", WORK_GW, "203.0.113.1"))  # no profile's: stays
    await switcher._following
    assert fw.profile == "public"
