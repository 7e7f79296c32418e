"""The new-app alert's memory is bounded per user (`snitchd.knownapps`): a user making paths
without end (hard links under long names) held 80 MB of snitchd per 20,000 and an alert each.
The firewall runs for real, on a real store; the alerts are the broker's, as agents get them."""

from __future__ import annotations

import logging
from ipaddress import ip_address
from pathlib import Path

import pytest

from snitch_common.records import Attribution, Flow, Process, Proto
from snitchd.config import Config
from snitchd.knownapps import NEW_APPS_PER_UID, KnownApps
from tests.support.firewall import Clock, EventRecorder, Packet, make_firewall

FLOW = Flow(Proto.TCP, ip_address("192.0.2.1"), 40000, ip_address("203.0.113.7"), 443, "eth0")


def test_each_user_adds_at_most_its_share() -> None:
    apps = KnownApps(["/usr/bin/curl"])  # as the store knew them
    assert "/usr/bin/curl" in apps
    added = [apps.add(f"/home/u/{i}", 1000) for i in range(NEW_APPS_PER_UID + 5)]
    assert added.count(True) == NEW_APPS_PER_UID and added[-1] is False
    assert apps.add("/usr/bin/wget", 1001)  # another user is not held back
    assert len(apps) == NEW_APPS_PER_UID + 2


def test_a_user_s_endless_new_paths_stop_being_announced(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    fw = make_firewall(tmp_path / "snitch.db", clock, Config(database=str(tmp_path / "s.db")),
                       EventRecorder())  # fmt: skip
    alerts: list[str] = []
    fw.broker.alert = lambda alert: alerts.append(alert.kind)  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.WARNING):
            for i in range(NEW_APPS_PER_UID + 50):
                exe = f"/home/u/{'x' * 200}{i}"
                proc = Process(Attribution.PROCESS, pid=7, uid=1000, exe=exe, verified=True)
                fw._decide(Packet(), FLOW, proc)  # type: ignore[arg-type]
        assert alerts.count("new-app") == NEW_APPS_PER_UID
        assert len(fw.known_apps) == NEW_APPS_PER_UID
        said = [r.getMessage() for r in caplog.records if "not announced" in r.getMessage()]
        assert len(said) == 1 and said[0].startswith("uid 1000 has started 1000 new programs")
    finally:
        fw.store.close()
