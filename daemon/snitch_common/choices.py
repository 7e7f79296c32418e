"""The scope and reach lists the agents offer: the shared answer vocabulary
(`snitch_common.answers`), labelled with this prompt's own host, port and profile.

Which scopes make sense depends on the prompt (a domain needs a host name, a port needs TCP or
UDP, all but the destination's own two need a known app, a container is named by itself); the
daemon refuses the others, the popup greys them out with the reason, and the terminal agent
leaves them out of its help and says the reason when one is typed. Where the rule holds (every
profile, or the one active when asked) is offered only while a profile is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from ipaddress import ip_address, ip_network

from snitch_common.answers import (
    APP_SCOPES,
    NETWORK_PREFIX,
    NO_APP,
    REACHES,
    Reach,
    Scope,
    domain_of,
)
from snitch_common.bus import PromptView

__all__ = ["ReachOption", "ScopeOption", "duration_why_not", "reach_options", "scope_options"]


@dataclass(frozen=True, slots=True)
class ScopeOption:
    """One entry of the scope list; `why_not` says why it is unavailable for this prompt."""

    scope: Scope
    label: str
    why_not: str | None = None


def scope_options(prompt: PromptView, app: str) -> list[ScopeOption]:
    """The scopes in the daemon's order, labelled with this prompt's own host, port, script and
    parent."""
    # Only a name this very process resolved is offered (issue 15); else the address.
    where = prompt.rule_host or prompt.dst
    ported = prompt.proto in ("tcp", "udp")
    port = f"{prompt.port}/{prompt.proto}" if ported else prompt.proto
    named = prompt.rule_host is not None and "." in prompt.rule_host
    script = _trusted_script(prompt)
    parent = prompt.parents[0][1] if prompt.parents else None
    if parent is not None and not parent.startswith("/"):
        parent = None
    options = [
        ScopeOption(Scope.EXACT, f"only {where} on port {port}" if ported else f"only {where}"),
        # Its rule names no protocol (`_covered`): TCP, UDP, ICMP and the rest.
        ScopeOption(
            Scope.HOST, f"{where}, any port or protocol" if ported else f"{where}, any protocol"
        ),
        ScopeOption(
            Scope.DOMAIN,
            f"any host in {domain_of(prompt.rule_host)}"
            if named and prompt.rule_host
            else "this domain",
            None if named else _no_name(prompt),
        ),
        ScopeOption(
            Scope.PORT,
            f"any host on port {port}" if ported else "this port",
            None if ported else f"{prompt.proto or 'this protocol'} has no ports",
        ),
        ScopeOption(
            Scope.APP,
            f"anything {app} connects to" + (", whatever script it runs" if prompt.script else ""),
        ),
        ScopeOption(
            Scope.SCRIPT,
            f"anything {os.path.basename(script)} connects to" if script else "this script",
            None if script else _no_script(prompt),
        ),
        ScopeOption(
            Scope.PARENT,
            f"anything {app} connects to when started by {os.path.basename(parent)}"
            if parent
            else "this app when started by its parent",
            None if parent else "its parent's executable could not be verified",
        ),
        ScopeOption(
            Scope.ANY_APP,
            f"any app to {where} on port {port}" if ported else f"any app to {where}",
        ),
        ScopeOption(Scope.NETWORK, f"anything {app} connects to in {_network(prompt.dst)}"),
        ScopeOption(
            Scope.CONTAINER,
            f"anything container {prompt.container_name} connects to"
            if prompt.container_name
            else "this container",
            None if prompt.container_name else "this connection is not from a container",
        ),
    ]
    if not prompt.app_known:  # the kernel's, or a sender not found
        # Its rules name no app: "only this destination" holds for every app too, say so.
        options = [
            replace(o, why_not=o.why_not or NO_APP)
            if o.scope in APP_SCOPES
            else replace(o, label=f"{o.label}, from any app")
            if o.scope is Scope.EXACT
            else o
            for o in options
        ]
    elif prompt.container:
        options = [_for_container(o, prompt) for o in options]
    return options


def _for_container(option: ScopeOption, prompt: PromptView) -> ScopeOption:
    """A container's rules name the container, never an executable (`_container_rule`):
    the app's own scopes are refused, and "any app" would be the container's rule to this
    destination, the same as "only"."""
    if option.scope in (Scope.APP, Scope.SCRIPT, Scope.PARENT):
        why = "a container's processes are named by their container: answer for it instead"
        return replace(option, why_not=option.why_not or why)
    if option.scope is Scope.ANY_APP:
        return replace(option, why_not="for a container it is the same rule as the first")
    if option.scope is Scope.NETWORK:
        box = f"container {prompt.container_name}" if prompt.container_name else "it"
        return replace(option, label=f"anything {box} connects to in {_network(prompt.dst)}")
    return option


def duration_why_not(prompt: PromptView, duration: str) -> str | None:
    """Why snitchd refuses `duration` for this prompt whatever the scope, or None: "until
    the app quits" ends with the app's process, and a rule naming no app (the kernel's flows,
    a sender not found, a container's) has none to end with."""
    if duration == "process" and (prompt.exe is None or prompt.container):
        return "'until the app quits' needs an app: choose a time, or forever"
    return None


@dataclass(frozen=True, slots=True)
class ReachOption:
    """One entry of the "In" list: where the answer's rule holds (issue 17)."""

    reach: Reach
    label: str


def reach_options(prompt: PromptView) -> list[ReachOption]:
    """Every profile, or only the profile active when the prompt was asked; none when no
    profile was active (a rule then holds everywhere, as it always did)."""
    if not prompt.profile:
        return []
    return [ReachOption(reach, label.format(prompt.profile)) for reach, label in REACHES]


def _network(dst: str) -> str:
    """The network a `network` answer covers, as text: 203.0.113.0/24, 2001:db8::/64."""
    try:
        address = ip_address(dst)
    except ValueError:
        return "this network"
    return str(ip_network(f"{address}/{NETWORK_PREFIX[address.version]}", strict=False))


def _no_name(prompt: PromptView) -> str:
    if prompt.host is not None and prompt.host != prompt.rule_host:
        return f"{prompt.host} was looked up by another program, not this one"
    return "no host name is known for this address"


def _trusted_script(prompt: PromptView) -> str | None:
    if prompt.script in (None, "inline code"):
        return None
    if any(n.startswith("script not trusted") for n in prompt.notes):
        return None
    return prompt.script


def _no_script(prompt: PromptView) -> str:
    if prompt.script is None:
        return f"{os.path.basename(prompt.exe or '') or 'this app'} runs no script"
    if prompt.script == "inline code":
        return "inline code has no script to name"
    return next(n for n in prompt.notes if n.startswith("script not trusted"))
