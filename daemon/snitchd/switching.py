"""Changing the mode, and turning proposals into rules: the side of issue 17 that writes.

Every change goes the same way: the store first (in a worker thread: a locked store delays the
admin who asked, never the packet loop), then the firewall's state on the loop in one step, then
the prompts the change settles (a switch to a silent mode or `learn` decides every held flow at
once, by the new mode: none is dropped or left to time out), then the journal, an alert to the
admins' agents and a `ModeChanged` signal. A change that could not be stored changes nothing and
raises; the one exception is a time limit that ends: the mode returns in memory even if the
store fails (a pause must not outlive its limit because a disk is full), and a restart would end
it again from the stored deadline.

Changes are serialised by one lock, so a time limit that ends while an admin switches cannot
interleave with the switch.

Profiles go the same way: an admin makes, deletes or activates one, or the network changes
(`netwatch`) to one a profile names (`profiles.pick_profile`) and it becomes active by itself.
Activating one stores it, swaps in the rules in force in it (read and indexed in a worker
thread), switches to the mode it carries if it carries one, and is said in the journal, as an
alert and as a `ProfileChanged` signal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from snitch_common.errors import ProfileError, ProposalNotFound, SnitchError, StoreError
from snitch_common.modes import Mode, ModeState
from snitch_common.rules import RuleRecord
from snitchd.decide import Verdict
from snitchd.events import Alert
from snitchd.firewall import Firewall
from snitchd.journal import Event, journal_fields
from snitchd.modes import Switch, expired, switched
from snitchd.profiles import MatchKind, NetworkState, Profile, check_profile, pick_profile
from snitchd.prompts import Prompt
from snitchd.proposals import Proposal

__all__ = ["Switcher"]

log = logging.getLogger(__name__)


class Switcher:
    """Mode changes and proposal decisions for one firewall."""

    def __init__(self, firewall: Firewall) -> None:
        self.fw = firewall
        self.lock = asyncio.Lock()
        self.listeners: list[Callable[[Switch], None]] = []
        self.changes = 0  # mode changes since start
        self.mode_error = ""  # why the stored mode was not taken at start, "" if it was
        self.profiles: dict[str, Profile] = {}
        self.network = NetworkState()
        self.profile_listeners: list[Callable[[str | None, str | None, str], None]] = []
        self.ssid_of: Callable[[], Awaitable[str | None]] | None = None  # NetworkManager's
        self._following: asyncio.Task[None] | None = None

    def load(self) -> None:
        """At start, on the calling thread: the stored mode and proposals. A stored mode that
        does not read is replaced by `ask` (what snitch did before modes) and said; a time
        limit that ended while snitchd was stopped ends at the first `tick`, with its alert."""
        fw = self.fw
        try:
            state = fw.store.load_mode()
        except StoreError as exc:
            self.mode_error = exc.message
            log.warning("stored mode not taken, starting in mode ask: %s", exc)
            state = None
        if state is not None:
            fw.modes.state = state
        proposals, next_id = fw.store.load_proposals()
        fw.modes.book.load(proposals, next_id)
        self.profiles = {p.name: p for p in fw.store.load_profiles()}
        active = fw.store.setting("profile")
        if active is not None and active in self.profiles:
            fw.profile = active
            fw.reload_rules()
        elif active is not None:
            log.warning("stored profile %s is gone: starting with no profile", active)
        log.info(
            "mode %s profile=%s proposals=%d",
            fw.modes.state.describe(fw.clock()), fw.profile or "-", len(fw.modes.book),
        )  # fmt: skip

    @property
    def state(self) -> ModeState:
        return self.fw.modes.state

    async def set_mode(self, mode: Mode, seconds: float | None, by: str) -> Switch:
        """Switch to `mode`, for `seconds` or with no time limit. Raises StoreError (and
        changes nothing) if the store cannot take it."""
        async with self.lock:
            now = self.fw.clock()
            new = switched(self.state, mode, now, seconds, by)
            await asyncio.to_thread(self.fw.store.save_mode, new)
            return self._take(new, by)

    async def tick(self, now: float) -> None:
        """Once a second (the sweeper): end a time limit that is over (wall-clock: a suspend
        that outlasted it ends it at the first tick after resume), and write the proposals
        counted since the last tick."""
        if expired(self.state, now) is not None:
            async with self.lock:
                new = expired(self.state, now)
                if new is not None:
                    try:
                        await asyncio.to_thread(self.fw.store.save_mode, new)
                    except StoreError as exc:
                        log.warning("mode change not stored (it holds until restart): %s", exc)
                    self._take(new, "its time limit ended")
        await self.flush_proposals()

    def _take(self, new: ModeState, why: str) -> Switch:
        """On the loop: the new state in force, held flows settled, everyone told."""
        fw = self.fw
        old = fw.modes.state
        fw.modes.state = new
        fw.attempts.clear()  # a retry is decided by the new mode, not as remembered
        self.changes += 1
        change = Switch(old, new, why)
        now = fw.clock()

        def settle(prompt: Prompt) -> Verdict | None:
            return fw.mode_verdict(prompt.flow, prompt.proc, prompt.host, now)

        settled = fw.broker.settle_open(settle) if new.mode is not Mode.ASK else 0
        log.info(
            "mode changed from=%s to=%s by=%s until=%s settled=%d",
            old.mode.value, new.mode.value, why, new.until, settled,
            extra=journal_fields(Event.MODE, kind=new.mode.value),
        )  # fmt: skip
        held = (
            f"; {settled} held flow{'s' if settled != 1 else ''} settled by it" if settled else ""
        )
        fw.alert(
            Alert(
                "mode-changed",
                f"mode {new.describe(now)} (was {old.mode.value}), {why}{held}",
                now,
            )
        )
        for listener in self.listeners:
            try:
                listener(change)
            except Exception:
                log.exception("mode listener failed")
        return change

    # -- proposals -----------------------------------------------------------------------------

    async def flush_proposals(self) -> None:
        """Write what the book changed since the last write (in a worker thread); a failed
        write is kept for the next one."""
        book = self.fw.modes.book
        changed, removed = book.drain()
        if not changed and not removed:
            return
        try:
            await asyncio.to_thread(self.fw.store.write_proposals, changed, removed, book.next_id)
        except SnitchError as exc:
            book.undrain(changed, removed)
            log.warning("proposals not written, kept for the next try: %s", exc)

    def proposals(self, uid: int | None = None) -> list[Proposal]:
        return self.fw.modes.book.listed(uid)

    def _check(self, ids: Iterable[int]) -> list[Proposal]:
        """The proposals of `ids`, each still one to take: it exists, and no rule with the
        same text exists (accepted by hand meanwhile). Raises before anything changes."""
        chosen = self.fw.modes.book.get(ids)
        held = {str(rule): rule_id for rule_id, rule in self.fw.rules.snapshot().values()}
        stale = [(p.id, held[str(p.rule)]) for p in chosen if str(p.rule) in held]
        if stale:
            said = ", ".join(f"proposal {pid} is rule {rid}" for pid, rid in stale)
            raise ProposalNotFound(
                f"cannot accept: {said} already (reject it: snitchctl reject-proposals "
                f"{' '.join(str(pid) for pid, _ in stale)}); nothing was changed"
            )
        return chosen

    async def accept(self, ids: list[int] | None, by: str) -> list[RuleRecord]:
        """Turn proposals (None: all of them) into rules, in id order. All are checked before
        the first is added; should the store fail midway, those added so far are rules and
        no longer proposals, the others stay proposed, and the error is raised."""
        async with self.lock:
            book = self.fw.modes.book
            chosen = self._check([p.id for p in book.listed()] if ids is None else ids)
            made: list[RuleRecord] = []
            try:
                for p in chosen:
                    record = await self.fw.add_rule(p.rule, f"proposal {p.id} accepted by {by}")
                    book.remove([p.id])
                    made.append(record)
            finally:
                if made:
                    self.fw.modes.full_alerted = False
                    log.info("proposals accepted count=%d by=%s", len(made), by)
                await self.flush_proposals()
            return made

    async def reject(self, ids: list[int] | None, by: str) -> list[Proposal]:
        """Drop proposals (None: all of them); unknown ids change nothing and raise."""
        async with self.lock:
            book = self.fw.modes.book
            chosen = book.listed() if ids is None else book.get(ids)
            book.remove(p.id for p in chosen)
            self.fw.modes.full_alerted = False
            log.info("proposals rejected count=%d by=%s", len(chosen), by)
            await self.flush_proposals()
            return chosen

    # -- profiles ------------------------------------------------------------------------------

    def listed_profiles(self) -> list[Profile]:
        return [self.profiles[name] for name in sorted(self.profiles)]

    def check_exists(self, name: str) -> None:
        if name not in self.profiles:
            known = ", ".join(sorted(self.profiles)) or "none yet"
            raise ProfileError(
                f"no profile {name!r} (profiles: {known}; make one: snitchctl profile create "
                f"{name})"
            )

    async def create_profile(
        self, name: str, mode: str | None, networks: list[str], by: str
    ) -> Profile:
        """Make a profile; a bad name or mode, a taken name or a network another profile
        claims raise `ProfileError` and change nothing."""
        async with self.lock:
            profile = check_profile(name, mode, networks, self.profiles.values())
            profile = Profile(profile.name, profile.mode, profile.networks, self.fw.clock())
            await asyncio.to_thread(self.fw.store.save_profile, profile)
            self.profiles[name] = profile
        log.info("profile created name=%s mode=%s networks=%s by=%s", name,
                 profile.mode.value if profile.mode else "-",
                 ",".join(map(str, profile.networks)) or "-", by)  # fmt: skip
        if profile.networks:
            self.follow(self.network)  # it may be for the network we are on
        return profile

    async def delete_profile(self, name: str, by: str) -> Profile:
        """Delete a profile that is neither active nor named by a rule (else say which, and
        what to do, and change nothing)."""
        async with self.lock:
            self.check_exists(name)
            if self.fw.profile == name:
                raise ProfileError(
                    f"cannot delete profile {name}: it is active (activate another first, or: "
                    "snitchctl profile deactivate)"
                )
            entries = await self.fw.rule_entries()
            used = [rule_id for rule_id, rule in entries if rule.profile == name]
            if used:
                raise ProfileError(
                    f"cannot delete profile {name}: {len(used)} rule(s) hold in it "
                    f"({', '.join(map(str, used[:10]))}); delete them first (snitchctl "
                    "list-rules)"
                )
            await asyncio.to_thread(self.fw.store.delete_profile, name)
            profile = self.profiles.pop(name)
        log.info("profile deleted name=%s by=%s", name, by)
        return profile

    async def activate(self, name: str | None, why: str) -> Profile | None:
        """Make `name` (None: no profile) the active profile, then its mode the mode."""
        async with self.lock:
            if name is not None:
                self.check_exists(name)
            fw = self.fw
            old = fw.profile
            profile = self.profiles.get(name) if name is not None else None
            await asyncio.to_thread(fw.store.set_settings, (("profile", name),))
            await fw.use_profile(name)
            now = fw.clock()
            log.info(
                "profile changed from=%s to=%s %s", old or "-", name or "-", why,
                extra=journal_fields(Event.PROFILE, kind=name or "-"),
            )  # fmt: skip
            fw.alert(
                Alert(
                    "profile-changed",
                    f"profile {name or '(none)'} active (was {old or '(none)'}), {why}",
                    now,
                )
            )
            for listener in self.profile_listeners:
                try:
                    listener(old, name, why)
                except Exception:
                    log.exception("profile listener failed")
            mode = profile.mode if profile is not None else None
            if mode is not None and (mode is not self.state.mode or self.state.until is not None):
                new = switched(self.state, mode, now, None, f"profile {name}")
                await asyncio.to_thread(fw.store.save_mode, new)
                self._take(new, f"profile {name}")
            return profile

    def follow(self, state: NetworkState) -> None:
        """On the loop: the network changed (`netwatch`); the profile it calls for becomes
        active, in a task (a newer change cancels an older one's wait)."""
        self.network = state
        if not self.fw.config.follow_network:
            return
        if self._following is not None and not self._following.done():
            self._following.cancel()
        self._following = asyncio.get_running_loop().create_task(
            self._follow(state), name="profile-follow"
        )

    async def _follow(self, state: NetworkState) -> None:
        try:
            wants_ssid = any(
                m.kind is MatchKind.SSID for p in self.profiles.values() for m in p.networks
            )
            if self.ssid_of is not None and wants_ssid:
                ssid = await self.ssid_of()
                state = NetworkState(state.iface, state.gateway_mac, state.gateway, ssid)
                self.network = state
            picked = pick_profile(self.profiles.values(), state)
            if picked is None or picked.name == self.fw.profile:
                return
            await asyncio.shield(self.activate(picked.name, f"network: {state.describe()}"))
        except SnitchError as exc:
            log.warning("profile not switched for the network: %s", exc)
        except Exception:  # a background task: say it, never end the daemon
            log.exception("profile not switched for the network")
