"""The monitor's bus side keeps trying to reach snitchd while its window is open, and says
why it cannot, instead of giving up after the first refusal."""

from __future__ import annotations

from snitch_common.client import Client
from snitch_common.errors import DaemonUnreachable
from snitch_notifier.monitorfeed import MonitorFeed


def test_the_feed_tries_again_until_stopped_and_says_why(qtbot) -> None:
    tries: list[int] = []

    async def refuse() -> Client:
        tries.append(1)
        raise DaemonUnreachable("snitchd is not running or not on this bus")

    feed = MonitorFeed(connect=refuse, retry_seconds=0.05)
    said: list[str] = []
    feed.failed.connect(said.append)
    feed.start()
    try:
        qtbot.waitUntil(lambda: len(tries) >= 3, timeout=5000)
    finally:
        feed.stop()
    assert not feed.running
    count = len(tries)
    qtbot.wait(200)
    assert len(tries) == count, "stopped means no more tries"
    qtbot.waitUntil(lambda: bool(said), timeout=2000)
    assert said[0] == "snitchd is not running or not on this bus (trying again every 0.05 s)"
