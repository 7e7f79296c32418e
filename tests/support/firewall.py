"""A `Firewall` without a kernel or a bus, on a real store file, for unit tests: a clock the test
advances, and the firewall wired to its broker the way snitchd wires them. The packet side
(attributor) is absent; the event log is whatever recorder the test passes."""

from __future__ import annotations

from pathlib import Path

from snitchd.config import Config
from snitchd.firewall import Firewall
from snitchd.prompts import Broker
from snitchd.store import Store

__all__ = ["NOW", "Clock", "make_firewall"]

NOW = 1_700_000_000.0


class Clock:
    """Time as the daemon reads it (`clock()`), standing at `now` until the test moves it."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def make_firewall(
    db: Path, clock: Clock, config: Config | None = None, log: object = None
) -> Firewall:
    """A firewall on the store file `db`, its broker attached (admin: uid 0); the caller closes
    `fw.store`."""
    store = Store(db)
    broker = Broker(clock=clock, timeout=5, max_open=10, is_admin=lambda uid: uid == 0)
    config = config if config is not None else Config(database=str(db))
    fw = Firewall(config, store, None, log, broker, clock=clock)  # type: ignore[arg-type]
    broker.attach(fw)
    return fw
