"""The service's modes, proposals and profiles (issue 17)."""

import asyncio
import json

from dbus_fast import Variant
from dbus_fast.annotations import DBusDouble, DBusStr
from dbus_fast.service import dbus_method, dbus_signal

from snitch_common.errors import ModeError, ProfileError
from snitch_common.modes import MAX_FOR_SECONDS, ModeState, parse_mode
from snitchd.api.base import ServiceBase
from snitchd.api.values import VarDict, arg, record_plain
from snitchd.caller import current_caller, handled
from snitchd.modes import Switch
from snitchd.profiles import Profile
from snitchd.proposals import Proposal, listed

__all__ = ["ModesRoom"]


class ModesRoom(ServiceBase):
    """Modes and the proposals `learn` makes (issue 17), and network profiles."""

    @dbus_method()
    @handled()
    async def GetMode(self) -> VarDict:
        """The mode in force (`mode`, `since`, `by`; `until` and `previous` for a time limit,
        `until` 0 without), whether the caller may switch it (`may_switch`: admins only), and
        how many proposals the caller may see."""
        who = current_caller()
        fw = self.firewall
        book = fw.modes.book
        count = len(book) if who.admin else book.count_of(who.uid)
        return _mode_dict(fw.modes.state, fw.clock()) | {
            "may_switch": Variant("b", who.admin),
            "proposals": Variant("x", count),
        }

    @dbus_method()
    @handled(admin="switch modes")
    async def SetMode(self, mode: DBusStr, seconds: DBusDouble) -> VarDict:
        """Switch to `mode` for `seconds` (0: until switched again); open prompts are settled
        by the new mode at once. Returns the new state as GetMode does."""
        wanted = parse_mode(mode)
        if not 0 <= seconds <= MAX_FOR_SECONDS:
            raise ModeError(f"invalid time limit {seconds} s: give 0 (none) up to 366 days")
        by = f"by uid {current_caller().uid}"
        change = await self.switcher.set_mode(wanted, seconds or None, by)
        return _mode_dict(change.new, self.firewall.clock())

    @dbus_signal()
    def ModeChanged(self, state: dict[str, Variant]) -> VarDict:
        """Sent to everyone when the mode changes (its new state, as GetMode, with `was`
        and `why`): the mode is no secret, and every agent shows it."""
        return state

    def on_mode_changed(self, change: Switch) -> None:
        state = _mode_dict(change.new, self.firewall.clock())
        state["was"] = Variant("s", change.old.mode.value)
        state["why"] = Variant("s", change.why)
        self.ModeChanged(state)

    @dbus_method()
    @handled(query=True)
    async def ListProposals(self) -> DBusStr:
        """The proposals `learn` mode made (JSON: id, rule text, uid, count, first_seen,
        last_seen), by id; a user who is not an admin sees those of their own flows only."""
        uid = current_caller().own_only
        by_id = self.firewall.modes.book.snapshot()  # sorted, filtered, encoded in a worker
        return await asyncio.to_thread(
            lambda: json.dumps([_proposal_plain(p) for p in listed(by_id, uid)])
        )

    @dbus_method()
    @handled(admin="accept proposals")
    async def AcceptProposals(self, query: VarDict) -> DBusStr:
        """Turn proposals into rules: `ids` (at), or `all` (b) true. Unknown ids, or a
        proposal that is a rule already, change nothing and raise. Returns the new rules as
        ListRules does (JSON)."""
        by = f"uid {current_caller().uid}"
        made = await self.switcher.accept(_proposal_ids(query), by)
        return json.dumps([record_plain(r) for r in made])

    @dbus_method()
    @handled(admin="reject proposals")
    async def RejectProposals(self, query: VarDict) -> DBusStr:
        """Drop proposals: `ids` (at), or `all` (b) true; returns those dropped (JSON)."""
        by = f"uid {current_caller().uid}"
        dropped = await self.switcher.reject(_proposal_ids(query), by)
        return json.dumps([_proposal_plain(p) for p in dropped])

    @dbus_method()
    @handled()
    async def ListProfiles(self) -> DBusStr:
        """The profiles (JSON: name, mode, networks, active) and the network now (`network`:
        iface, gateway, gateway_mac, ssid), for anyone: they hold no one's secrets."""
        sw, fw = self.switcher, self.firewall
        net = sw.network
        return json.dumps(
            {
                "profiles": [_profile_plain(p, fw.profile) for p in sw.listed_profiles()],
                "active": fw.profile,
                "network": {
                    "iface": net.iface,
                    "gateway": net.gateway,
                    "gateway_mac": net.gateway_mac,
                    "ssid": net.ssid,
                    "describe": net.describe(),
                },
            }
        )

    @dbus_method()
    @handled(admin="create profiles")
    async def CreateProfile(self, query: VarDict) -> DBusStr:
        """`name` (s), `mode` (s, optional), `networks` (as: gateway=MAC, iface=NAME,
        ssid=NAME). Returns the profile (JSON)."""
        name = arg(query, "name", str) or ""
        networks = query["networks"].value if "networks" in query else []
        if not isinstance(networks, list) or not all(isinstance(n, str) for n in networks):
            raise ProfileError("argument 'networks': expected a list of strings")
        by = f"uid {current_caller().uid}"
        made = await self.switcher.create_profile(name, arg(query, "mode", str), networks, by)
        return json.dumps(_profile_plain(made, self.firewall.profile))

    @dbus_method()
    @handled(admin="delete profiles")
    async def DeleteProfile(self, name: DBusStr) -> None:
        await self.switcher.delete_profile(name, f"uid {current_caller().uid}")

    @dbus_method()
    @handled(admin="switch profiles")
    async def ActivateProfile(self, name: DBusStr) -> None:
        """Make `name` the active profile ("" for none); its mode, if it has one, follows."""
        await self.switcher.activate(name or None, f"by uid {current_caller().uid}")

    @dbus_signal()
    def ProfileChanged(self, change: dict[str, Variant]) -> VarDict:
        """Sent to everyone when the active profile changes: `profile`, `was` ("" for none),
        `why`."""
        return change

    def on_profile_changed(self, old: str | None, new: str | None, why: str) -> None:
        self.ProfileChanged(
            {
                "profile": Variant("s", new or ""),
                "was": Variant("s", old or ""),
                "why": Variant("s", why),
            }
        )


def _profile_plain(p: Profile, active: str | None) -> dict[str, object]:
    return {
        "name": p.name,
        "mode": p.mode.value if p.mode is not None else None,
        "networks": [str(m) for m in p.networks],
        "active": p.name == active,
        "created": p.created,
    }


def _mode_dict(state: ModeState, now: float) -> dict[str, Variant]:
    out = {
        "mode": Variant("s", state.mode.value),
        "since": Variant("d", state.since),
        "by": Variant("s", state.by),
        "until": Variant("d", state.until or 0.0),
        "describe": Variant("s", state.describe(now)),
    }
    if state.previous is not None:
        out["previous"] = Variant("s", state.previous.value)
    return out


def _proposal_plain(p: Proposal) -> dict[str, object]:
    return {
        "id": p.id,
        "text": str(p.rule),
        "uid": p.uid,
        "count": p.count,
        "first_seen": p.first_seen,
        "last_seen": p.last_seen,
    }


def _proposal_ids(query: dict[str, Variant]) -> list[int] | None:
    """`ids` or `all`, exactly one of them: None stands for all. An empty list is refused, so
    that a script whose list came out empty does not accept everything."""
    every = arg(query, "all", bool)
    if "ids" in query:
        value = query["ids"].value
        if every or not isinstance(value, list) or not value:
            raise ModeError("give proposal ids, or all, not both and not an empty list")
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
            raise ModeError("argument 'ids': expected a list of proposal ids")
        return [int(i) for i in value]
    if not every:
        raise ModeError("give proposal ids, or all (see: snitchctl proposals)")
    return None
