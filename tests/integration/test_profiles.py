"""Profiles in the lab (issue 17): the default route moves from one gateway to another (the
lab's two veth pairs, two MAC addresses) and snitchd switches profile by itself, with its
mode, its rules and an alert; profiles made, listed, activated by hand; bad input refused."""

from __future__ import annotations

import time
from typing import Any

import pytest

from conftest import MODE_ALERT, PROFILE_ALERT, Lab

NOBODY = 65534


@pytest.fixture
def running(lab: Lab) -> Lab:
    lab.expect_log(MODE_ALERT, PROFILE_ALERT)
    lab.start_daemon()
    return lab


def mac_of(lab: Lab, ns: str, dev: str) -> str:
    return lab.ns(ns, "cat", f"/sys/class/net/{dev}/address").stdout.strip()


def profiles(lab: Lab) -> dict[str, Any]:
    report: dict[str, Any] = lab.ctl_json("profile", "list")
    return report


def wait_for_profile(lab: Lab, name: str) -> dict[str, Any]:
    """Bounded: netwatch reads the state within ~0.2 s of a route change."""
    report = profiles(lab)
    deadline = time.monotonic() + 20
    while report["active"] != name and time.monotonic() < deadline:
        time.sleep(0.1)
        report = profiles(lab)
    return report


def test_the_profile_follows_the_default_route_to_another_gateway(running: Lab) -> None:
    lab = running
    home_mac, public_mac = mac_of(lab, lab.server, "veth0"), mac_of(lab, lab.server, "veth1")
    assert home_mac != public_mac
    lab.ctl_json("profile", "create", "home", "--mode", "ask", "--gateway", home_mac)
    lab.ctl_json("profile", "create", "public", "--mode", "silent-deny", "--gateway", public_mac)
    home_rule = lab.ctl_json("add-rule", "--profile", "home", "allow port=80")
    assert home_rule["text"] == "allow port=80 profile=home"
    # The kernel learns both gateways' MACs as a machine does: by talking to them.
    lab.add_rule("allow proto=icmp")
    for gateway in ("192.0.2.2", "198.51.100.2"):
        lab.ns(lab.client, "ping", "-c", "1", "-W", "2", gateway)

    lab.ns(lab.client, "ip", "route", "add", "default", "via", "192.0.2.2")
    report = wait_for_profile(lab, "home")
    assert report["active"] == "home"
    assert report["network"]["gateway_mac"] == home_mac
    assert report["network"]["iface"] == "veth0"
    assert lab.py("tcp", "192.0.2.2", 80) == "connected"  # the home rule holds
    assert lab.py("tcp", "192.0.2.2", 443) == "timeout"  # ask, no agent: the default (deny)

    lab.ns(lab.client, "ip", "route", "replace", "default", "via", "198.51.100.2")
    report = wait_for_profile(lab, "public")
    assert report["active"] == "public" and report["network"]["gateway_mac"] == public_mac
    state = lab.ctl_json("mode")
    assert (state["mode"], state["by"]) == ("silent-deny", "profile public")
    assert lab.py("tcp", "192.0.2.2", 80) == "timeout"  # the home rule is dormant
    assert "allow port=80 profile=home" in [r["text"] for r in lab.ctl_json("list-rules")]
    log = lab.log_text()
    said = "alert profile-changed: profile {} active (was {}), network: gateway {} ({}), via {}"
    assert said.format("home", "(none)", "192.0.2.2", home_mac, "veth0") in log
    assert said.format("public", "home", "198.51.100.2", public_mac, "veth1") in log
    row = lab.log_rows()[-1]
    assert (row["profile"], row["mode"]) == ("public", "silent-deny")


def test_profiles_by_hand_and_bad_input_change_nothing(running: Lab) -> None:
    lab = running
    lab.ctl_json("profile", "create", "work", "--iface", "veth1")
    done = lab.ctl("profile", "create", "other", "--iface", "veth1")
    assert done.returncode == 1 and "overlapping network match: iface=veth1" in done.stderr
    for argv, why in (
        (("profile", "activate", "nowhere"), "no profile 'nowhere'"),
        (("profile", "create", "x", "--mode", "quiet"), "unknown mode 'quiet'"),
        (("profile", "create", "y", "--gateway", "192.0.2.2"), "a MAC address"),
        (("add-rule", "--profile", "nowhere", "allow port=22"), "no profile 'nowhere'"),
    ):
        done = lab.ctl(*argv)
        assert done.returncode == 1 and why in done.stderr, (argv, done.stderr)
    assert [p["name"] for p in profiles(lab)["profiles"]] == ["work"]
    assert lab.ctl_json("list-rules") == []
    assert lab.ctl("profile", "activate", "work", uid=NOBODY).returncode == 4
    assert profiles(lab)["active"] is None
    lab.ctl_json("profile", "activate", "work")
    assert profiles(lab)["active"] == "work" and lab.ctl_json("status")["profile"] == "work"
    assert lab.ctl("profile", "delete", "work").returncode == 1  # active
    lab.ctl_json("profile", "deactivate")
    lab.ctl_json("profile", "delete", "work")
    assert profiles(lab)["profiles"] == []
