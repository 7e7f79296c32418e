"""The Network Monitor's bus side: its own connection to snitchd, in a worker thread.

A connection of its own, not the agent's: the monitor subscribes to `Rates` only while its
window is open (closing the connection ends the subscription, so a hidden window costs snitchd
nothing), and `snitch-notifier --monitor` runs it without registering an agent. The crossing
to Qt is the bridge's (`bridge.py`): requests go to the loop with `run_coroutine_threadsafe`,
answers come back as queued signals carrying records (`traffic.py`).

snitchd runs one query per uid at a time and refuses a second (`Busy`): requests here run one
after another, a refresh that finds the previous one still running is skipped, and a `Busy`
answer (the same user's `snitchctl top --live`, say) is tried again a few times.

Besides reading, it carries the window's two questions about a destination: a rule "from now
on" (`AddRuleWithNote`; the executable hashed here first, in a thread, to pin it) and "why?"
(`Explain`); their failures come back on `action_failed`, for the dialog that asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from dbus_fast import Variant
from PySide6.QtCore import QObject, Signal

from snitch_common.bus import disconnected
from snitch_common.client import Client
from snitch_common.errors import Busy, SnitchError
from snitch_notifier.bridge import RuleRow
from snitch_notifier.monitoractions import (
    RuleChoice,
    applying_rules,
    digest_of,
    explain_query,
    rule_of,
)
from snitch_notifier.traffic import (
    AppKey,
    HostTraffic,
    Range,
    app_totals,
    group_hosts,
    group_hosts_by_app,
    parse_chart,
    parse_rates,
)

__all__ = ["HOST_ROWS", "RECENT_ROWS", "RULE_NOTE", "MonitorFeed"]

log = logging.getLogger(__name__)

HOST_ROWS = 1000  # an app's newest log rows read for its destinations
RULE_NOTE = "made in the Network Monitor"  # the note of the rules it makes (list-rules shows it)
RECENT_ROWS = 2000  # every app's newest log rows in the range, read while a filter needs them
_BUSY_TRIES = 5
_BUSY_WAIT = 0.4  # seconds
_RETRY = 5.0  # seconds between attempts to reach snitchd
_AGAIN_GAP = 1.0  # seconds at least between a read and its repeat (`_once`'s again)
_PERIOD_SECONDS = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}


class MonitorFeed(QObject):
    """Every public method may be called from the GUI thread; answers arrive as signals."""

    connected = Signal()
    lost = Signal(str)  # the subscription went with the snitchd that had it: why, for people
    rates = Signal(object)  # RateFrame
    apps_read = Signal(object, object)  # Range, list[AppTraffic]
    chart_read = Signal(object, object, object)  # Range, AppKey | None, TrafficChart
    hosts_read = Signal(object, object, object)  # AppKey, list[HostTraffic], known since
    recent_read = Signal(object, object)  # Range, dict[AppKey, list[HostTraffic]]
    rules_read = Signal(object, object)  # AppKey, list[RuleRow] (those that apply to it)
    rules_changed = Signal(object)  # RulesChanged: snitchd's rules changed (ids only)
    rule_made = Signal(object, object, bool)  # RuleChoice, RuleRow, whether it existed
    explained = Signal(object, object, object)  # AppKey, HostTraffic, Explain's answer (dict)
    failed = Signal(str)  # a message people read
    action_failed = Signal(str)  # a rule or an explanation asked for could not be had

    def __init__(
        self,
        connect: Callable[[], Awaitable[Client]] = Client.connect,
        retry_seconds: float = _RETRY,
    ) -> None:
        super().__init__()
        self._connect = connect
        self._retry = retry_seconds
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Client | None = None
        self._lock: asyncio.Lock | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._refreshing = False
        self._pending: set[tuple[object, ...]] = set()  # repeated reads submitted, not done
        self._again: set[tuple[object, ...]] = set()  # asked again while pending: run once more

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="snitch-monitor", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def stop(self, timeout: float = 5.0) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
            thread.join(timeout)
        self._thread = None

    # -- requests (GUI thread) ------------------------------------------------------------------
    def refresh(self, shown: Range, app: AppKey | None, now: bool = False) -> None:
        """The app list's totals and the chart for `shown`; skipped while one is running
        (unless `now`: a range just chosen must not wait for the next turn), and before the
        connection is up (`connected` asks the window to refresh then)."""
        if (self._refreshing and not now) or self._client is None:
            return
        self._submit(lambda: self._refresh(shown, app))

    def read_hosts(self, app: AppKey) -> None:
        self._once(("hosts", app), lambda: self._hosts(app))

    def read_chart(self, shown: Range, app: AppKey | None) -> None:
        self._submit(lambda: self._queued(self._chart(shown, app)))

    def read_recent(self, shown: Range) -> None:
        """Where every app went in the range (its newest RECENT_ROWS log rows), for a filter
        by host, port or verdict."""
        self._once(("recent", shown), lambda: self._recent(shown))

    def read_rules(self, app: AppKey) -> None:
        """The rules that apply to `app`. Asked while a read of them runs, it runs once more
        after it: that read may have started before the change that made it asked."""
        self._once(("rules", app), lambda: self._rules(app), again=True)

    def add_rule(self, choice: RuleChoice) -> None:
        """Make the rule `choice` means; `rule_made` or `action_failed`."""
        self._submit(lambda: self._make_rule(choice), self.action_failed)

    def explain(self, app: AppKey, host: HostTraffic) -> None:
        """Ask snitchd why this destination gets its verdict; `explained` or `action_failed`."""
        self._submit(lambda: self._queued(self._explain(app, host)), self.action_failed)

    def _once(
        self,
        key: tuple[object, ...],
        make: Callable[[], Coroutine[Any, Any, None]],
        again: bool = False,
    ) -> None:
        """A read the window repeats: skipped while the same one still waits or runs, so a
        slow snitchd does not get a queue of them; with `again`, one more run follows it, a
        pause after (`_AGAIN_GAP`, or as long as the read took)."""
        if key in self._pending:
            if again:
                self._again.add(key)
            return
        self._pending.add(key)

        async def run() -> None:
            try:
                while True:
                    self._again.discard(key)
                    began = time.monotonic()
                    await self._queued(make())
                    if key not in self._again:
                        break
                    # Changes that keep coming (prompts answered one after another) must not
                    # keep snitchd paging 100k rules without a pause: at most half the time.
                    await asyncio.sleep(max(_AGAIN_GAP, time.monotonic() - began))
            finally:
                self._pending.discard(key)
                self._again.discard(key)

        if not self._submit(run):
            self._pending.discard(key)

    def _submit(
        self, make: Callable[[], Coroutine[Any, Any, None]], errors: Any | None = None
    ) -> bool:
        """Run `make()`'s coroutine on the worker's loop (made there only if it runs); its
        failure goes to `errors` (a signal of one message), else to `failed`. False when there
        is no worker to run it."""
        loop = self._loop
        if loop is None or not self.running:
            if errors is not None:
                errors.emit("the monitor is not connected to snitchd (is it running?)")
            return False
        asyncio.run_coroutine_threadsafe(self._guard(make, errors or self.failed), loop)
        return True

    async def _guard(self, make: Callable[[], Coroutine[Any, Any, None]], errors: Any) -> None:
        try:
            await make()
        except Exception as exc:
            if self._stop is not None and self._stop.is_set():
                # The window closed while it was asked (the connection's end surfaces as
                # dbus-fast's EOFError): nobody waits for the answer.
                return
            if isinstance(exc, SnitchError):
                log.warning("monitor request failed: %s", exc.message)
                errors.emit(exc.message)
                return
            log.exception("monitor request failed unexpectedly")
            errors.emit("internal error: see the notifier's log")

    # -- on the worker's loop -------------------------------------------------------------------
    async def _refresh(self, shown: Range, app: AppKey | None) -> None:
        self._refreshing = True
        try:
            await self._queued(self._apps(shown))
            if shown is not Range.LIVE:
                await self._queued(self._chart(shown, app))
        finally:
            self._refreshing = False

    async def _queued(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._lock is not None
        async with self._lock:
            await coro

    async def _call(self, read: Callable[[Client], Awaitable[Any]]) -> Any:
        for attempt in range(_BUSY_TRIES):
            client = self._client
            if client is None:
                raise SnitchError("the monitor is not connected to snitchd (is it running?)")
            try:
                return await read(client)
            except Busy:
                if attempt == _BUSY_TRIES - 1:
                    raise
                await asyncio.sleep(_BUSY_WAIT)
        return None

    async def _apps(self, shown: Range) -> None:
        query = {"period": Variant("s", shown.period), "limit": Variant("t", 1000)}
        rows = await self._call(lambda c: c.apps(query))
        self.apps_read.emit(shown, app_totals(rows))

    async def _chart(self, shown: Range, app: AppKey | None) -> None:
        if shown is Range.LIVE:
            return
        query = {"period": Variant("s", shown.value)}
        if app is not None:
            query["app"] = Variant("s", app.app)
        report = await self._call(lambda c: c.traffic(query))
        self.chart_read.emit(shown, app, parse_chart(report, app, time.time()))

    async def _hosts(self, app: AppKey) -> None:
        query = {"exe": Variant("s", app.app), "limit": Variant("t", HOST_ROWS)}
        rows = await self._call(lambda c: c.log(query))
        # Log filters by exe only: an admin sees every user's rows of that exe.
        mine = [r for r in rows if (-1 if r.get("uid") is None else r["uid"]) == app.uid]
        # How far back the rows reach: all of its log (0) when fewer came than were asked.
        known_since = float(rows[0]["time"]) if len(rows) >= HOST_ROWS else 0.0
        self.hosts_read.emit(app, group_hosts(mine), known_since)

    async def _recent(self, shown: Range) -> None:
        since = time.time() - (3600 if shown is Range.LIVE else _PERIOD_SECONDS[shown.period])
        query = {"since": Variant("d", since), "limit": Variant("t", RECENT_ROWS)}
        rows = await self._call(lambda c: c.log(query))
        self.recent_read.emit(shown, group_hosts_by_app(rows))

    async def _rules(self, app: AppKey) -> None:
        rows = await self._call(lambda c: c.list_rules())
        self.rules_read.emit(app, applying_rules((RuleRow.from_dict(r) for r in rows), app))

    async def _make_rule(self, choice: RuleChoice) -> None:
        digest = await asyncio.to_thread(digest_of, choice.app.app)
        rule = rule_of(choice, digest)
        client = self._client
        if client is None:
            raise SnitchError("the monitor is not connected to snitchd (is it running?)")
        record = await client.add_rule_with_note(str(rule), RULE_NOTE)
        log.info("rule added from the monitor id=%s: %s", record.get("id"), record.get("text"))
        self.rule_made.emit(choice, RuleRow.from_dict(record), bool(record.get("existing")))

    async def _explain(self, app: AppKey, host: HostTraffic) -> None:
        query = explain_query(app, host)
        answer = await self._call(lambda c: c.explain(query))
        self.explained.emit(app, host, answer)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self._ready.set()
        while not self._stop.is_set():
            if await self._session():
                continue  # a new snitchd is on the bus: subscribe to it at once
            # snitchd not running (yet), or refused: try again while the window is open.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._retry)

    async def _session(self) -> bool:
        """One connection, until the window closes or snitchd's name changes hands; whether
        another snitchd already took the name (no wait before the next session)."""
        assert self._stop is not None
        try:
            client = await self._connect()
        except SnitchError as exc:
            self.failed.emit(f"{exc.message} (trying again every {self._retry:g} s)")
            return False
        self._client = client
        owners: asyncio.Queue[str] = asyncio.Queue()
        try:
            await client.watch_daemon(owners.put_nowait)
            await client.monitor_rates(lambda signal: self.rates.emit(parse_rates(signal)))
            await client.watch_rules(self.rules_changed.emit)
            self.connected.emit()
            stopped = asyncio.ensure_future(self._stop.wait())
            owner = asyncio.ensure_future(owners.get())
            gone = disconnected(client.bus)
            waiters: set[asyncio.Future[Any]] = {stopped, owner, gone}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in (stopped, owner, gone):
                waiter.cancel()
            if stopped.done() and not stopped.cancelled():
                return False
            if owner.done() and not owner.cancelled():
                self.lost.emit("snitchd restarted" if owner.result() else "snitchd stopped")
                return bool(owner.result())
            self.lost.emit(f"lost the system bus: {gone.exception() or 'closed'}")
            return False
        except SnitchError as exc:
            self.failed.emit(f"{exc.message} (trying again every {self._retry:g} s)")
            return False
        finally:
            self._client = None
            with contextlib.suppress(Exception):
                client.close()
