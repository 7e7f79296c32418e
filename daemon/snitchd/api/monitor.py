"""The service's reads of what happened: the connection log, per-app traffic and rates, and
the Decision and Rates signals, each sent to its subscriber alone.
"""

import dataclasses
import json
import time

from dbus_fast import Variant
from dbus_fast.annotations import DBusStr
from dbus_fast.service import dbus_method

from snitch_common.bus import MAX_LOG_ROWS, MAX_TOP_APPS
from snitch_common.errors import Busy, RuleError
from snitchd.api.base import ServiceBase
from snitchd.api.values import VarDict, arg, as_json, limit_of, variants
from snitchd.caller import current_caller, handled
from snitchd.logwriter.protocol import AppRate
from snitchd.queries import LogQuery, Period, read_apps, read_connections, read_top, read_traffic
from snitchd.store import Decision, decision_row

__all__ = ["MAX_SUBSCRIPTIONS", "MonitorRoom"]

MAX_SUBSCRIPTIONS = 8  # live monitors (and, apart, live rate views) a user may have open


class MonitorRoom(ServiceBase):
    """The log, top apps, traffic and the live monitors (read in workers, one query a caller)."""

    @dbus_method()
    @handled(query=True)
    async def Log(self, query: VarDict) -> DBusStr:
        """The newest `limit` rows (100; at most MAX_LOG_ROWS) older than row `before`, oldest
        first; a user who is not an admin sees only their own flows."""
        wanted = LogQuery(
            since=arg(query, "since", float),
            exe=arg(query, "exe", str),
            action=arg(query, "action", str),
            host=arg(query, "host", str),
            uid=current_caller().own_only,
            before=arg(query, "before", int),
            limit=limit_of(query, MAX_LOG_ROWS, 100),
        )
        await self.firewall.events.flush()  # what was decided before the call is in the log
        return await self.reader.run(lambda conn: as_json(read_connections(conn, wanted)))

    @dbus_method()
    @handled(query=True)
    async def Top(self, query: VarDict) -> DBusStr:
        """Per-app connections and bytes since a time (0: all of the log), the MAX_TOP_APPS
        apps with the most traffic."""
        since, uid = arg(query, "since", float), current_caller().own_only
        await self.firewall.events.flush()
        return await self.reader.run(lambda conn: as_json(read_top(conn, since, uid, MAX_TOP_APPS)))

    @dbus_method()
    @handled()
    async def Monitor(self) -> None:
        """Subscribe the caller to `Decision` signals, sent to it alone, as they happen (its
        own flows only unless it is an admin); ends when the caller leaves the bus."""
        self._subscribe(self._monitors, "live monitors")

    def _subscribe(self, table: dict[str, int | None], what: str) -> None:
        """The caller in `table`, unless its user has MAX_SUBSCRIPTIONS there already: each
        subscription is a signal marshalled and sent on the packet loop for each of the user's
        decisions, so a user opening hundreds of connections to subscribe each (the bus lets
        a user have 256) slowed every user's new connections."""
        who = current_caller()
        mine = sum(1 for name in table if self._uids.get(name) == who.uid)
        if who.name not in table and mine >= MAX_SUBSCRIPTIONS:
            raise Busy(
                f"uid {who.uid} has {MAX_SUBSCRIPTIONS} {what} open already (snitchctl "
                "monitor, snitchctl top --live, Network Monitor windows): close one first"
            )
        table[who.name] = who.own_only

    def on_decision(self, decision: Decision) -> None:
        if not self._monitors:
            return
        body = [variants(decision_row(decision))]
        for name, uid in list(self._monitors.items()):
            if uid is None or uid == decision.proc.uid:
                self._signal(name, "Decision", "a{sv}", body)

    @dbus_method()
    @handled(query=True)
    async def Traffic(self, query: VarDict) -> DBusStr:
        """Traffic over `period` (1h, 24h, 7d, 30d) from the per-app rollups, at most 180
        points a series: the total and the MAX_SERIES_APPS busiest apps (only `app` if given);
        a user who is not an admin sees only their own flows."""
        period, app = _period(query), arg(query, "app", str)
        uid, now = current_caller().own_only, time.time()
        await self.firewall.events.flush()
        return await self.reader.run(
            lambda conn: json.dumps(dataclasses.asdict(read_traffic(conn, period, now, uid, app)))
        )

    @dbus_method()
    @handled(query=True)
    async def Apps(self, query: VarDict) -> DBusStr:
        """Per app over `period` (24h unless given): bytes, attempts, blocked ones, first seen;
        the `limit` (at most MAX_TOP_APPS) apps with the most bytes."""
        period, limit = _period(query, Period.DAY), limit_of(query, MAX_TOP_APPS)
        uid, now = current_caller().own_only, time.time()
        await self.firewall.events.flush()
        return await self.reader.run(
            lambda conn: json.dumps(
                [dataclasses.asdict(a) for a in read_apps(conn, period, now, uid, limit)]
            )
        )

    @dbus_method()
    @handled()
    async def MonitorRates(self) -> None:
        """Subscribe the caller to `Rates` signals (JSON text, about once a second, its own
        apps only unless it is an admin), sent to it alone; ends when it leaves the bus."""
        self._subscribe(self._rate_watchers, "live rate views")

    def watching_rates(self) -> bool:
        """Whether anyone is subscribed to `Rates`: the log writer reads the open flows'
        counters every second only then (`logwriter.child`)."""
        return bool(self._rate_watchers)

    def on_rates(self, rates: tuple[AppRate, ...]) -> None:
        """The log writer's new rates window: one JSON text per audience (all apps for admins,
        a user's own otherwise), at most protocol-bounded (200 apps) each."""
        if not self._rate_watchers:
            return
        now = time.time()
        texts: dict[int | None, str] = {}
        for name, uid in list(self._rate_watchers.items()):
            text = texts.get(uid)
            if text is None:
                text = texts[uid] = _rates_json(rates, uid, now)
            self._signal(name, "Rates", "s", [text])


def _period(query: dict[str, Variant], default: Period = Period.HOUR) -> Period:
    text = arg(query, "period", str)
    if text is None:
        return default
    try:
        return Period(text)
    except ValueError:
        choices = ", ".join(p.value for p in Period)
        raise RuleError(f"argument 'period': {text!r} is not one of {choices}") from None


def _rates_json(rates: tuple[AppRate, ...], uid: int | None, now: float) -> str:
    apps = [
        {
            "app": r.app,
            "uid": r.uid,
            "out": r.bytes_out,
            "in": r.bytes_in,
            "rate_out": r.bytes_out / r.seconds,
            "rate_in": r.bytes_in / r.seconds,
            "flows": r.flows,
            "total_out": r.total_out,
            "total_in": r.total_in,
            "attempts": r.attempts,
            "blocked": r.blocked,
        }
        for r in rates
        if (uid is None or r.uid == uid) and r.seconds > 0
    ]
    seconds = rates[0].seconds if rates else 0.0
    return json.dumps({"time": now, "seconds": seconds, "apps": apps})
