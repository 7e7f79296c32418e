"""The rules snitchd holds, and every change to them: the rule keeping half of the firewall
(issue 12), beside its packet path (`firewall`).

Rule changes never make the loop wait: the store is written from a worker thread, then the one
rule is added to or taken from the `RuleSet` on the loop, between two packets (µs, whatever the
number of rules); the next new flow already sees it. Only a change made outside snitchd (sqlite3
by hand) reads the rules whole, in a worker thread, and swaps the new set in. Rule changes are
serialised by one asyncio lock, so the D-Bus caller waits for a slow store, and packets do not.

Here too: the rules.d files synced into the store, rules that expire, profiles switched, and
open flows cut when a rule (or a list) makes them denied. Each held change is also copied to the
queue reader processes when there are some (`mirror`, `snitchd.readers`).

`Rulebook` holds no state of its own: `Firewall` (its subclass) makes it all in its
`__init__`; the annotations below say what the rule keeping reads and writes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Protocol, TypeVar

from snitch_common.errors import RuleNotFound, StoreError
from snitch_common.records import Flow, Process
from snitch_common.rulefile import RuleLine
from snitch_common.rules import Action, Lifetime, Rule, RuleRecord, list_place
from snitchd.config import Config
from snitchd.connmark import ConnMarks
from snitchd.decide import RuleSet, StricterRules, Verdict, decide
from snitchd.dnswatch import DnsWatch
from snitchd.events import Alert, EventLog
from snitchd.fastpath import FastPath
from snitchd.flowcut import CutResult, FlowCutter
from snitchd.journal import Event, journal_fields
from snitchd.netfilter import ALLOW_MARK, MARK_MASK
from snitchd.places import Places
from snitchd.procs import Attributor, Limits, Lookup, process_alive
from snitchd.rulefiles import FileRead, read_rules_dir
from snitchd.rulenews import RuleNews
from snitchd.store import (
    Decision,
    FileSync,
    RuleLoad,
    Store,
    Twin,
    UnparsableRule,
    keep_unexpired,
)

__all__ = ["CutFlow", "RuleMirror", "Rulebook"]

# The firewall's logger: rule changes were logged under that name before the move (issue 12),
# and admins' journal filters and the tests' expected lines name it.
log = logging.getLogger("snitchd.firewall")

T = TypeVar("T")


class _Cutting(Protocol):
    """The one counter the rule keeping counts (`firewall.Counters.cut`)."""

    cut: int


class RuleMirror(Protocol):
    """Where the held rules are copied as they change (`snitchd.readers`): each call comes on
    the loop, before the change is answered, so the next flow any reader decides sees it."""

    def hold(self, record: RuleRecord) -> None: ...
    def release(self, rule_id: int) -> None: ...
    def whole(self, profile: str | None, rules: tuple[tuple[int, Rule], ...]) -> None: ...
    def forget(self, flow: Flow) -> None: ...  # a cut flow: no reader keeps its verdict


@dataclass(frozen=True, slots=True)
class CutFlow:
    """An open flow cut because a rule now denies it (`cut_flows`)."""

    flow: Flow
    proc: Process
    rule_id: int
    action: Action
    reset: bool  # its TCP socket was destroyed: the peer got a reset, the program an error


# Open flows judged per turn of the loop while looking for those a new rule covers (each is
# one attribution and one rule match, µs): the loop serves packets between two turns.
_CUT_BATCH = 64


class Rulebook:
    """The held rules and their changes; `Firewall` is the one subclass, and it makes the
    state (see the module docstring)."""

    config: Config
    store: Store
    attributor: Attributor
    events: EventLog
    clock: Callable[[], float]
    marks: ConnMarks | None
    counters: _Cutting
    places: Places
    rules: RuleSet
    dns: DnsWatch
    cutter: FlowCutter
    profile: str | None
    rules_error: str
    files_error: str
    disabled: dict[int, RuleRecord]
    mirror: RuleMirror | None
    fast: FastPath | None
    news: RuleNews
    _stricter: StricterRules
    _pinned: dict[str, frozenset[str]]
    _pins: dict[str, dict[str, int]]
    _expirable: dict[int, RuleRecord]
    _disabled_version: int
    _dormant: dict[int, RuleRecord]
    _dormant_version: int
    _changing: asyncio.Lock
    _replay: list[RuleRecord | int] | None
    _tasks: set[asyncio.Task[object]]
    _entries: tuple[object, list[tuple[int, Rule]]]

    def alert(self, alert: Alert) -> None:
        raise NotImplementedError  # the firewall's: to the journal and the agents

    def _end_kept(self) -> None:
        """The held rules (or how processes are described) changed: what the kernel kept by
        the old ones passes nothing more (`fastpath`), before the change is answered."""
        if self.fast is not None:
            self.fast.bump()

    def _lookup_limits(self) -> Limits:
        raise NotImplementedError  # the firewall's, from its config

    def _forget_in_flight(self, flow: Flow) -> None:
        raise NotImplementedError  # the firewall's: its verdicts of flows in flight

    async def check_outside_change(self, now: float) -> None:
        """Another process may have written the rules (sqlite3 by hand, or malware): if so,
        alert, then follow the store, which stays the one source of truth. snitchd's own
        writes are not news (the store tells them apart). The rules are read, parsed and
        indexed in a worker thread; the loop only swaps the new set in."""
        async with self._changing:
            if not await asyncio.to_thread(self.store.changed_outside):
                return
            replay: list[RuleRecord | int] = []
            self._replay = replay
            try:
                loaded = await asyncio.to_thread(self._load, self.rules, self.profile)
            except UnparsableRule as exc:
                # Fail closed: the rules held stay (a deny that no longer parses still
                # denies); the next change to the store is read again.
                self.store.adopt_version(exc.version)
                self.rules_error = exc.message
                self.alert(Alert("rules-unreadable", f"{exc.message}; the last good rules "
                                 "stay in force", now))  # fmt: skip
                return
            finally:
                self._replay = None
            self.rules_error = ""
            load, added, removed = self._take(loaded)
            gc.freeze()  # long-lived, as at start (main): out of the collector's full passes
            # Prompt answers (which do not wait for the lock) made while the rules were read:
            # whichever side of the read they fell, the held set ends as the store is.
            for change in replay:
                if isinstance(change, RuleRecord):
                    added.discard(change.id)
                    if change.id not in self.rules:
                        self._hold(change)
                else:
                    removed.discard(change)
                    if change in self.rules:
                        self._release(change)
            self.store.adopt_version(load.version)
            log.info("rules reloaded from the store count=%d", len(self.rules))
        if added or removed:
            self.alert(
                Alert(
                    "rules-changed",
                    f"rules were changed outside snitch: {len(added)} added or changed, "
                    f"{len(removed)} removed (see: snitchctl list-rules)",
                    now,
                )
            )

    def _take(self, loaded: _Loaded) -> tuple[RuleLoad, set[int], set[int]]:
        """Swap in what `_load` read (on the loop, between packets); the load and which ids
        were added and removed."""
        load, rules, stricter, (expirable, pins), added, removed, dormant = loaded
        self.rules, self._stricter = rules, stricter
        self._expirable, self._pins = expirable, pins
        self._pinned = {exe: frozenset(hashes) for exe, hashes in pins.items()}
        self.disabled = {r.id: r for r in load.records if not r.enabled}
        self._disabled_version += 1
        self._expirable.update((i, r) for i, r in self.disabled.items() if _expires(r.rule))
        self._dormant, self._dormant_version = dormant, self._dormant_version + 1
        if self.mirror is not None:
            self.mirror.whole(self.profile, self.held_rules())
        self._end_kept()
        self.news.everything()
        return load, added, removed

    def held_rules(self) -> tuple[tuple[int, Rule], ...]:
        """The rules in force, as copied to the queue readers."""
        return tuple(self.rules.snapshot().values())

    def _load(self, held: RuleSet, profile: str | None) -> _Loaded:
        """In a worker thread: the store's rules that are on and in force in `profile` (None:
        no profile), indexed and tracked, which ids differ from `held`, and the rules (on) of
        the other profiles. The load's records keep the rules that are off."""
        before = held.snapshot()
        load = self.store.load_rules()
        dormant = {r.id: r for r in load.records if r.enabled and not _in_force(r.rule, profile)}
        enabled = [r for r in load.records if r.enabled and r.id not in dormant]
        rules = RuleSet(((r.id, r.rule) for r in enabled), places=self.places)
        added: set[int] = set()
        for r in enabled:
            old = before.pop(r.id, None)
            if old is None or (old[1] is not r.rule and old[1] != r.rule):
                added.add(r.id)
        # A for=once rule is never held, so it is no news either.
        added = {i for i in added if i in rules}
        stricter = StricterRules(
            ((r.id, r.rule) for r in enabled if r.id in rules), places=self.places
        )
        return load, rules, stricter, _tracking(enabled), added, set(before), dormant

    def reload_rules(self) -> None:
        """Read every rule and index them, on the calling thread: at start, before the loop
        runs packets (afterwards, `check_outside_change` does it in a worker thread)."""
        load = self.store.load_rules()
        self.disabled = {r.id: r for r in load.records if not r.enabled}
        self._disabled_version += 1
        self._dormant = {
            r.id: r for r in load.records if r.enabled and not _in_force(r.rule, self.profile)
        }
        self._dormant_version += 1
        live = [r for r in load.records if r.enabled and r.id not in self._dormant]
        self.rules = RuleSet(((r.id, r.rule) for r in live), places=self.places)
        self._stricter = StricterRules(
            ((r.id, r.rule) for r in live if r.id in self.rules), places=self.places
        )
        self._expirable, self._pins = _tracking(live)
        self._expirable.update((i, r) for i, r in self.disabled.items() if _expires(r.rule))
        self._pinned = {exe: frozenset(hashes) for exe, hashes in self._pins.items()}
        self.store.adopt_version(load.version)
        if self.mirror is not None:
            self.mirror.whole(self.profile, self.held_rules())
        self._end_kept()
        log.debug("rules loaded count=%d", len(self.rules))

    def _hold(self, record: RuleRecord) -> None:
        """Put one rule in the held set (on the loop, between packets); a rule that is off is
        only listed, a rule of a profile not active is kept aside."""
        if self.mirror is not None:
            self.mirror.hold(record)
        self._end_kept()
        self._unhold(record.id)
        self.news.changed(record.id)
        if not record.enabled:
            self.disabled[record.id] = record
            self._disabled_version += 1
            if _expires(record.rule):  # off or on, its time still runs out
                self._expirable[record.id] = record
            return
        rule = record.rule
        if not _in_force(rule, self.profile):
            self._dormant[record.id] = record
            self._dormant_version += 1
            if self._replay is not None:
                self._replay.append(record)
            return
        self.rules.add((record.id, rule))
        if record.id not in self.rules:
            return  # for=once: never held
        self._stricter.add(record.id, rule)
        if _expires(rule):
            self._expirable[record.id] = record
        if rule.exe is not None and rule.sha256 is not None:
            hashes = self._pins.setdefault(rule.exe, {})
            hashes[rule.sha256] = hashes.get(rule.sha256, 0) + 1
            self._pinned[rule.exe] = frozenset(hashes)
        if self._replay is not None:
            self._replay.append(record)

    def _release(self, rule_id: int) -> None:
        """Take one rule out of the held set (on the loop, between packets)."""
        if self.mirror is not None:
            self.mirror.release(rule_id)
        self._end_kept()
        self.news.removed(rule_id)
        self._unhold(rule_id)

    def _unhold(self, rule_id: int) -> None:
        if self.disabled.pop(rule_id, None) is not None:
            self._disabled_version += 1
        if self._dormant.pop(rule_id, None) is not None:
            self._dormant_version += 1
            if self._replay is not None:
                self._replay.append(rule_id)
            return
        entry = self.rules.remove(rule_id)
        if entry is None:
            return
        self._stricter.remove(rule_id)
        self._expirable.pop(rule_id, None)
        rule = entry[1]
        if rule.exe is not None and rule.sha256 is not None:
            hashes = self._pins[rule.exe]
            hashes[rule.sha256] -= 1
            if not hashes[rule.sha256]:
                del hashes[rule.sha256]
            if hashes:
                self._pinned[rule.exe] = frozenset(hashes)
            else:
                del self._pins[rule.exe], self._pinned[rule.exe]
        if self._replay is not None:
            self._replay.append(rule_id)

    def _rules_key(self) -> tuple[RuleSet, int, int, int]:
        """Names the rule set as it is now (and the rules that are off or of another profile,
        which `rule_entries` lists too): caches built from it compare this."""
        return (self.rules, self.rules.version, self._disabled_version, self._dormant_version)

    async def rule_entries(self) -> list[tuple[int, Rule]]:
        """The rules held, by id, as one list made once per rule change: a slice of it is a
        consistent page for `ListRules`. Sorted in a worker: at 100k rules, sorting on the loop
        stalled it ~100 ms (bench/disturb.py)."""
        source, entries = self._entries
        key = self._rules_key()
        if source != key:
            snapshot = self.rules.snapshot()
            snapshot.update((i, (i, r.rule)) for i, r in self.disabled.items())
            snapshot.update({i: (i, r.rule) for i, r in self._dormant.items()})  # all profiles'
            entries = await asyncio.to_thread(_by_id, snapshot)
            self._entries = (key, entries)
        return entries

    async def add_rule(self, rule: Rule, origin: str) -> RuleRecord:
        """Store the rule (in a worker thread: a locked store delays only this caller), then
        hold it. Raises StoreError (store locked, unwritable) or RuleError."""
        return (await self.add_new_rule(rule, origin))[0]

    async def add_new_rule(
        self, rule: Rule, origin: str, note: str = "", *, dedup: bool = False
    ) -> tuple[RuleRecord, bool]:
        """`add_rule`, with a note; with `dedup`, a rule equal to one there already is not
        added: that one is returned, and False. A new deny or reject rule cuts the open flows
        it now covers (unless keep-open=yes), in the background."""

        async def change() -> tuple[RuleRecord, bool]:
            async with self._changing:
                record, added = await asyncio.to_thread(
                    self.store.added_rule, rule, self.clock(), origin, note, dedup=dedup
                )
                if added:
                    self._hold(record)
            if added:
                log.info(
                    "rule added id=%d origin=%s: %s", record.id, origin, record.rule,
                    extra=journal_fields(Event.RULE_ADDED, rule_id=record.id, exe=record.rule.exe),
                )  # fmt: skip
                self._cut_soon([record], origin)
            return record, added

        return await self._finish(change())

    async def delete_rule(self, rule_id: int, origin: str) -> RuleRecord:
        """Delete the rule from the store (in a worker thread), then stop holding it. Raises
        RuleNotFound, RuleFromFile or StoreError."""

        async def change() -> RuleRecord:
            async with self._changing:
                record = await asyncio.to_thread(self.store.delete_rule, rule_id)
                self._release(rule_id)
            log.info(
                "rule deleted id=%d origin=%s: %s", rule_id, origin, record.rule,
                extra=journal_fields(Event.RULE_DELETED, rule_id=rule_id, exe=record.rule.exe),
            )  # fmt: skip
            return record

        return await self._finish(change())

    async def edit_rule(
        self, rule_id: int, rule: Rule | None, note: str | None, origin: str
    ) -> RuleRecord:
        """New text (None: keep it) and/or a new note (None: keep it) for a rule, same id. An
        edit that makes a deny or reject rule cuts the open flows it now covers."""

        async def change() -> RuleRecord:
            async with self._changing:
                if rule is None:
                    assert note is not None
                    record = await asyncio.to_thread(self.store.set_note, rule_id, note)
                else:
                    record = await asyncio.to_thread(
                        self.store.edit_rule, rule_id, rule, self.clock(), note
                    )
                self._hold(record)
            log.info("rule edited id=%d origin=%s: %s", rule_id, origin, record.rule)
            if rule is not None:
                self._cut_soon([record], origin)
            return record

        return await self._finish(change())

    async def set_rule_enabled(self, rule_id: int, enabled: bool, origin: str) -> RuleRecord:
        """Switch a rule on or off; switched on, a deny or reject rule cuts the open flows it
        now covers."""

        async def change() -> RuleRecord:
            async with self._changing:
                record = await asyncio.to_thread(self.store.set_enabled, rule_id, enabled)
                self._hold(record)
            log.info(
                "rule %s id=%d origin=%s: %s",
                "enabled" if enabled else "disabled",
                rule_id,
                origin,
                record.rule,
            )
            if enabled:
                self._cut_soon([record], origin)
            return record

        return await self._finish(change())

    async def import_rules(
        self, lines: list[RuleLine], origin: str, *, dry_run: bool
    ) -> tuple[list[RuleRecord], list[Twin]]:
        """Add every rule not there yet, with its note, in one store transaction (all or
        nothing), then hold them; `dry_run` only says what would be added. Returns (added,
        the lines whose rule was there already)."""

        async def change() -> tuple[list[RuleRecord], list[Twin]]:
            async with self._changing:
                added, twins = await asyncio.to_thread(
                    self.store.import_rules, lines, self.clock(), origin, dry_run=dry_run
                )
                if not dry_run:
                    for record in added:
                        self._hold(record)
            if not dry_run:
                log.info("rules imported origin=%s added=%d", origin, len(added))
                self._cut_soon(added, origin)
            return added, twins

        return await self._finish(change())

    # -- rules.d files -------------------------------------------------------------------------

    def load_rule_files_now(self) -> None:
        """At start, before the loop runs packets: the rules.d files into the store, then the
        held set follows what changed (the rules were read whole when the firewall was made)."""
        for sync in self._sync_files(self.clock()):
            for record in sync.removed:
                self._release(record.id)
            for record in sync.added:
                self._hold(record)
            self.news.changed(*sync.renoted)

    async def reload_rule_files(self) -> None:
        """On reload (SIGHUP): read the files and update the store in a worker thread, then
        hold what changed; a refused file keeps its old rules."""

        async def change() -> None:
            async with self._changing:
                synced = await asyncio.to_thread(self._sync_files, self.clock())
                added: list[RuleRecord] = []
                for sync in synced:
                    for record in sync.removed:
                        self._release(record.id)
                    for record in sync.added:
                        self._hold(record)
                    self.news.changed(*sync.renoted)
                    added += sync.added
            self._cut_soon(added, "rules files")

        await self._finish(change())

    def _sync_files(self, now: float) -> list[FileSync]:
        """Read `rules_dir` and make the store's file rules match it. Every refused file is
        logged as an error with its reason (file and line) and keeps its rules."""
        folder = self.config.rules_dir
        files, exists = read_rules_dir(folder)
        errors: list[str] = []
        synced: list[FileSync] = []
        refused = [f for f in files if f.error]
        for read in refused:
            log.error("rules file refused, its old rules stay: %s", read.error)
            errors.append(read.error)
        if any(f.name == "*" for f in refused):
            self.files_error = "; ".join(errors)
            return synced  # the folder itself is unsafe or unreadable: change nothing
        good: list[FileRead] = [f for f in files if not f.error]
        present = {f.name for f in files}
        for read in good:
            sync = self.store.sync_file(read.name, list(read.rules), now)
            synced.append(sync)
        for gone in sorted(self.store.file_names() - present):
            synced.append(self.store.sync_file(gone, [], now))
        for sync in synced:
            if sync.added or sync.removed or sync.renoted:
                log.info(
                    "rules file loaded name=%s added=%d removed=%d kept=%d renoted=%d",
                    sync.name,
                    len(sync.added),
                    len(sync.removed),
                    sync.kept,
                    len(sync.renoted),
                )
        if not exists:
            log.debug("no rules folder %s", folder)
        self.files_error = "; ".join(errors)
        return synced

    # -- cutting open flows ----------------------------------------------------------------------

    def _cut_soon(self, records: list[RuleRecord], origin: str) -> None:
        """Start `cut_flows` for the deny and reject rules among `records` that are on and
        may cut, in the background: the caller of a rule change does not wait for it."""
        ids = {
            r.id
            for r in records
            if r.enabled and r.rule.action is not Action.ALLOW and not r.rule.keep_open
        }
        self._cut_ids_soon(ids, origin)

    def _cut_ids_soon(self, ids: set[int], origin: str, because: str = "") -> None:
        if not ids or self.marks is None:
            return
        cutting = self._cut_logged(ids, origin, because)
        task = asyncio.get_running_loop().create_task(cutting, name="cut")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cut_logged(self, rule_ids: set[int], origin: str, because: str) -> None:
        try:
            await self.cut_flows(rule_ids, origin, because)
        except Exception:
            log.exception("cutting open flows failed rules=%s", sorted(rule_ids))

    async def cut_flows(
        self, rule_ids: Collection[int], why: str, because: str = ""
    ) -> list[CutFlow]:
        """Cut the open flows that snitch let out and that one of `rule_ids` now denies or
        rejects, as the held rules decide them now (a more specific allow keeps its flow;
        keep-open=yes keeps them all). The one entry point for anything that makes rules
        stricter (a rule added, edited or enabled; a list that grows).

        The conntrack dump and the cuts run in a worker thread; on the loop, the flows are
        attributed and decided in batches of `_CUT_BATCH`, as new packets would be. Each cut
        is logged (INFO) and written to the connection log with reason "cut: rule N", and
        `because` (what changed, where it was not the rule itself: "list ads updated").
        """
        wanted = set(rule_ids)
        flows = await asyncio.to_thread(self.cutter.allowed_flows, ALLOW_MARK, MARK_MASK)
        chosen: list[tuple[Flow, Process, int, Action, str | None]] = []
        for i in range(0, len(flows), _CUT_BATCH):
            batch = flows[i : i + _CUT_BATCH]
            for flow in batch:
                proc = await self._owner_of(flow)
                now = self.clock()
                names, host = self.dns.names_for(flow.dst, proc, now)
                outcome = decide(flow, proc, self.rules, now, names)
                if (
                    isinstance(outcome, Verdict)
                    and outcome.rule_id in wanted
                    and outcome.action is not Action.ALLOW
                ):
                    rule_id = outcome.rule_id
                    assert rule_id is not None
                    held = self.rules.get(rule_id)
                    if held is not None and not held[1].keep_open:
                        chosen.append((flow, proc, rule_id, outcome.action, host))
            await asyncio.sleep(0)
        if not chosen:
            return []
        results = await asyncio.to_thread(self.cutter.cut, [c[0] for c in chosen])
        now = self.clock()
        out: list[CutFlow] = []
        for (flow, proc, rule_id, action, host), result in zip(chosen, results, strict=True):
            if not (result.reset or result.deleted):
                if result.error:
                    log.warning("open flow not cut %s rule=%d: %s", flow, rule_id, result.error)
                continue
            out.append(_cut_record(result, proc, rule_id, action))
            self._forget_in_flight(flow)
            self.counters.cut += 1
            log.info(
                "open flow cut rule=%d why=%s reset=%s: %s from %s",
                rule_id,
                why,
                result.reset,
                flow,
                proc.describe(),
            )
            reason = f"cut: rule {rule_id} now {action.value}s this open flow"
            if because:
                reason += f" ({because})"
            self.events.record(Decision(now, flow, proc, action, rule_id, reason, host))
        return out

    async def _owner_of(self, flow: Flow) -> Process:
        """Who holds an open flow, as a packet of it would be attributed (a TCP flow's
        socket is still there; a UDP flow's may be gone: then the kernel's)."""
        try:
            found = self.attributor.begin(flow, self._lookup_limits())
        except OSError:
            return Process.kernel()
        if isinstance(found, Lookup):
            return await asyncio.shield(found.future)  # a packet of the flow may wait for it too
        return found

    async def _finish(self, change: Awaitable[T]) -> T:
        """Run a rule change to its end even if its caller goes (a D-Bus call cancelled at
        shutdown): a rule written to the store must also be held, or the two would differ
        without anything telling."""
        task: asyncio.Task[T] = asyncio.ensure_future(change)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    async def use_profile(self, profile: str | None) -> None:
        """Make `profile` (None: none) the active one: the rules in force are read and indexed
        for it in a worker thread, then swapped in on the loop, between two packets. Held
        prompts stay open: the next flow is decided by the new rules."""
        async with self._changing:
            loaded = await asyncio.to_thread(self._load, self.rules, profile)
            self.profile = profile
            load, _, _ = self._take(loaded)
            self.store.adopt_version(load.version)
        log.info("profile in force profile=%s rules=%d", profile or "-", len(self.rules))

    async def expire_rules(self) -> None:
        """Delete the rules whose time or process is up: the check (which reads /proc for
        per-process rules) and the deletes in a worker thread, then each is taken out."""
        async with self._changing:
            if not self._expirable:
                return
            candidates = list(self._expirable.values())
            gone = await asyncio.to_thread(self._expire, candidates, self.clock())
            for record in gone:
                self._release(record.id)
                log.info("rule expired id=%d: %s", record.id, record.rule)

    def _expire(self, candidates: list[RuleRecord], now: float) -> list[RuleRecord]:
        """In a worker thread. A store that fails (locked) stops the round; the rest are
        tried again at the next sweep."""
        keep = keep_unexpired(now, process_alive)
        gone: list[RuleRecord] = []
        for record in candidates:
            if keep(record):
                continue
            try:
                self.store.delete_rule(record.id)
            except RuleNotFound:
                pass  # deleted meanwhile by someone else: gone all the same
            except StoreError as exc:
                log.warning("rule expiry postponed id=%d: %s", record.id, exc)
                break
            gone.append(record)
        return gone

    def _list_loaded(self, name: str) -> None:
        """A new copy of list `name` was swapped in: the open flows a deny or reject rule
        naming it now covers are cut, as for a rule made stricter (`cut_flows`)."""
        place = list_place(name)
        naming = [(i, r) for i, r in self.rules.snapshot().values() if r.place == place]
        self.news.changed(*(i for i, _ in naming))  # what they match changed
        ids = {i for i, rule in naming if rule.action is not Action.ALLOW and not rule.keep_open}
        self._cut_ids_soon(ids, f"list {name}", because=f"list {name} updated")


def _cut_record(result: CutResult, proc: Process, rule_id: int, action: Action) -> CutFlow:
    return CutFlow(result.flow, proc, rule_id, action, result.reset)


def _in_force(rule: Rule, profile: str | None) -> bool:
    """Whether a rule holds while `profile` is active (None: no profile): a rule of no
    profile holds in every one."""
    return rule.profile is None or rule.profile == profile


def _expires(rule: Rule) -> bool:
    return rule.until is not None or rule.lifetime is Lifetime.PROCESS


_Tracking = tuple[dict[int, RuleRecord], dict[str, dict[str, int]]]
_Loaded = tuple[
    RuleLoad,
    RuleSet,
    StricterRules,
    _Tracking,
    set[int],
    set[int],
    dict[int, RuleRecord],
]


def _tracking(records: list[RuleRecord]) -> _Tracking:
    """The rules that may expire, and the hashes each app's rules pin (with how many pin
    each), for a rule set read whole."""
    expirable = {
        r.id: r for r in records if _expires(r.rule) and r.rule.lifetime is not Lifetime.ONCE
    }
    pins: dict[str, dict[str, int]] = {}
    for r in records:
        if r.rule.exe is not None and r.rule.sha256 is not None:
            hashes = pins.setdefault(r.rule.exe, {})
            hashes[r.rule.sha256] = hashes.get(r.rule.sha256, 0) + 1
    return expirable, pins


def _by_id(rules: dict[int, tuple[int, Rule]]) -> list[tuple[int, Rule]]:
    return [rules[rule_id] for rule_id in sorted(rules)]
