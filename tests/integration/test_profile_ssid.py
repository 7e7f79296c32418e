"""A profile that names a Wi-Fi SSID (issue 17), against a NetworkManager on the lab's bus.

The NetworkManager here is a fake below the bus line: it serves the three properties snitchd
reads (the primary connection, its type and access point, the SSID) and says when its primary
connection changes, as NetworkManager does; snitchd, its D-Bus calls and its switching are real.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import pytest
from dbus_fast import Message, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusObjectPath, DBusSignature, DBusStr
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property

from conftest import MODE_ALERT, PROFILE_ALERT, Lab, forge
from tests.integration import fakebus

NM = "org.freedesktop.NetworkManager"
ACTIVE = "/org/freedesktop/NetworkManager/ActiveConnection/1"
AP = "/org/freedesktop/NetworkManager/AccessPoint/1"


class Manager(ServiceInterface):
    def __init__(self) -> None:
        super().__init__(NM)

    @dbus_property(access=PropertyAccess.READ)
    def PrimaryConnection(self) -> DBusObjectPath:
        return ACTIVE


class ActiveConnection(ServiceInterface):
    def __init__(self) -> None:
        super().__init__(f"{NM}.Connection.Active")

    @dbus_property(access=PropertyAccess.READ)
    def Type(self) -> DBusStr:
        return "802-11-wireless"

    @dbus_property(access=PropertyAccess.READ)
    def SpecificObject(self) -> DBusObjectPath:
        return AP


class AccessPoint(ServiceInterface):
    def __init__(self, ssid: str) -> None:
        super().__init__(f"{NM}.AccessPoint")
        self.ssid = ssid

    @dbus_property(access=PropertyAccess.READ)
    def Ssid(self) -> Annotated[bytes, DBusSignature("ay")]:
        return self.ssid.encode()


@pytest.fixture
def running(lab: Lab) -> Lab:
    lab.expect_log(MODE_ALERT, PROFILE_ALERT)
    lab.start_daemon()
    return lab


@pytest.fixture
async def wifi(running: Lab) -> AsyncIterator[tuple[MessageBus, AccessPoint]]:
    """NetworkManager on the lab's bus, connected to the Wi-Fi "Café Wi-Fi"."""
    assert running.bus is not None
    ap = AccessPoint("Café Wi-Fi")
    objects = {"/org/freedesktop/NetworkManager": Manager(), ACTIVE: ActiveConnection(), AP: ap}
    bus = await fakebus.serve(running.bus, NM, objects)
    try:
        yield bus, ap
    finally:
        bus.disconnect()


async def wait_for_profile(lab: Lab, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    report: dict[str, Any] = lab.ctl_json("profile", "list")
    while report["active"] != name and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        report = lab.ctl_json("profile", "list")
    return report


async def test_the_wifi_ssid_picks_the_profile_over_the_interface(
    running: Lab, wifi: tuple[MessageBus, AccessPoint]
) -> None:
    lab = running
    _, ap = wifi
    lab.ctl_json("profile", "create", "cafe", "--ssid", "Café Wi-Fi", "--mode", "silent-deny")
    lab.ctl_json("profile", "create", "lan", "--iface", "veth0")
    lab.ns(lab.client, "ip", "route", "add", "default", "via", "192.0.2.2")
    report = await wait_for_profile(lab, "cafe")
    assert report["active"] == "cafe" and report["network"]["ssid"] == "Café Wi-Fi"
    assert lab.ctl_json("mode")["mode"] == "silent-deny"
    # The laptop joins another Wi-Fi. Before NetworkManager says so, uid 65534 does, in a
    # signal addressed to snitchd: snitchd does not read the network again for it.
    ap.ssid = "Elsewhere"
    forge(lab)
    await asyncio.sleep(1.0)  # a read it started would have switched in well under this
    report = lab.ctl_json("profile", "list")
    assert report["active"] == "cafe" and report["network"]["ssid"] == "Café Wi-Fi"
    # NetworkManager says its primary connection changed.
    manager_bus, _ = wifi
    manager_bus.send(
        Message.new_signal(
            "/org/freedesktop/NetworkManager",
            "org.freedesktop.DBus.Properties",
            "PropertiesChanged",
            "sa{sv}as",
            [NM, {"PrimaryConnection": Variant("o", ACTIVE)}, []],
        )
    )
    report = await wait_for_profile(lab, "lan")
    assert report["active"] == "lan" and report["network"]["ssid"] == "Elsewhere"
    assert (
        "alert profile-changed: profile cafe active (was (none)), network: Wi-Fi 'Café Wi-Fi'"
        in lab.log_text()
    )
