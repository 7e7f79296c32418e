"""Profiles: named rule sets (`profile=NAME` in a rule), each maybe with a mode and the networks
it is for; which profile a network calls for (issue 17).

A profile names its networks by the default route's gateway (its MAC address: an address such
as 192.168.1.1 is on every home router, its MAC is not), by the outgoing interface, or by the
Wi-Fi SSID NetworkManager reports. When the network changes (`netwatch`), the profile whose
match is the most specific wins: an SSID beats a gateway, a gateway an interface; two profiles
may not claim the same match (refused when made). No network matching any profile changes
nothing: the laptop that leaves the café for an unknown network stays in `public`. Pure: no I/O.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from snitch_common.errors import ProfileError, RuleError
from snitch_common.modes import Mode, parse_mode
from snitch_common.rules import PROFILE_NAME_RE, parse_iface

__all__ = [
    "MatchKind",
    "NetMatch",
    "NetworkState",
    "Profile",
    "check_profile",
    "parse_match",
    "pick_profile",
]

_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_MAX_MATCHES = 32  # networks one profile names, at most


class MatchKind(enum.Enum):
    """How a profile names a network; the order is specificity, most specific first."""

    SSID = "ssid"
    GATEWAY = "gateway"
    IFACE = "iface"


@dataclass(frozen=True, slots=True)
class NetMatch:
    kind: MatchKind
    value: str

    def __str__(self) -> str:
        return f"{self.kind.value}={self.value}"


@dataclass(frozen=True, slots=True)
class NetworkState:
    """What the network is now: the default route's interface and its gateway's MAC (None
    while unknown: no default route, or no neighbour entry yet), the Wi-Fi SSID (None without
    NetworkManager or Wi-Fi)."""

    iface: str | None = None
    gateway_mac: str | None = None
    gateway: str | None = None  # its address, for people to read
    ssid: str | None = None

    def matches(self, match: NetMatch) -> bool:
        value = {
            MatchKind.SSID: self.ssid,
            MatchKind.GATEWAY: self.gateway_mac,
            MatchKind.IFACE: self.iface,
        }[match.kind]
        return value is not None and value == match.value

    def describe(self) -> str:
        parts = []
        if self.ssid is not None:
            parts.append(f"Wi-Fi {self.ssid!r}")
        if self.gateway is not None:
            parts.append(f"gateway {self.gateway} ({self.gateway_mac or 'MAC unknown'})")
        if self.iface is not None:
            parts.append(f"via {self.iface}")
        return ", ".join(parts) or "no default route"


@dataclass(frozen=True, slots=True)
class Profile:
    """A named rule set: its rules say `profile=NAME`; `mode` (None: leave the mode as it is)
    is switched to when it becomes active; `networks` make it active by themselves."""

    name: str
    mode: Mode | None = None
    networks: tuple[NetMatch, ...] = ()
    created: float = 0.0


def parse_match(text: str) -> NetMatch:
    """`gateway=MAC`, `iface=NAME` or `ssid=NAME`; the error says which part is wrong."""
    key, sep, value = text.partition("=")
    try:
        kind = MatchKind(key.strip().lower())
    except ValueError:
        raise ProfileError(
            f"invalid network {text!r}: use gateway=MAC, iface=NAME or ssid=NAME"
        ) from None
    if not sep or not value:
        raise ProfileError(f"invalid network {text!r}: {kind.value}= needs a value")
    if kind is MatchKind.GATEWAY:
        value = value.lower().replace("-", ":")
        if not _MAC_RE.fullmatch(value):
            raise ProfileError(f"invalid network {text!r}: a MAC address is aa:bb:cc:dd:ee:ff")
    elif kind is MatchKind.IFACE:
        try:
            parse_iface(value)  # the same names as a rule's iface=: what Linux would take
        except RuleError as exc:
            raise ProfileError(f"invalid network {text!r}: {exc.message}") from None
    elif kind is MatchKind.SSID and len(value.encode()) > 32:
        raise ProfileError(f"invalid network {text!r}: an SSID has at most 32 bytes")
    return NetMatch(kind, value)


def check_profile(
    name: str, mode: str | None, networks: Iterable[str], others: Iterable[Profile]
) -> Profile:
    """A new profile from its words, checked against the others: a bad name, an unknown mode,
    a taken name or a network another profile claims raise `ProfileError`."""
    if not PROFILE_NAME_RE.fullmatch(name) or name == "none":
        raise ProfileError(
            f"invalid profile name {name!r}: 1-32 of a-z, 0-9, _ and -, starting with a letter "
            "or digit ('none' is taken: it means no profile)"
        )
    matches = tuple(dict.fromkeys(parse_match(n) for n in networks))
    if len(matches) > _MAX_MATCHES:
        raise ProfileError(f"profile {name}: at most {_MAX_MATCHES} networks")
    for other in others:
        if other.name == name:
            raise ProfileError(f"profile {name} exists already (see: snitchctl profile list)")
        taken = [m for m in matches if m in other.networks]
        if taken:
            raise ProfileError(
                f"cannot create profile {name}: overlapping network match: "
                f"{', '.join(map(str, taken))} is profile {other.name}'s already (one network, "
                "one profile: delete or change that one first)"
            )
    try:
        parsed = parse_mode(mode) if mode else None
    except Exception as exc:
        raise ProfileError(f"profile {name}: {exc}") from None
    return Profile(name, parsed, matches)


def pick_profile(profiles: Iterable[Profile], state: NetworkState) -> Profile | None:
    """The profile the network calls for: the one with the most specific match (SSID, then
    gateway, then interface), or None when no profile names this network."""
    best: tuple[int, Profile] | None = None
    order = list(MatchKind)
    for profile in profiles:
        for match in profile.networks:
            if state.matches(match):
                rank = order.index(match.kind)
                if best is None or rank < best[0]:
                    best = (rank, profile)
    return None if best is None else best[1]
