"""The scope list the popup shows: the shared answer vocabulary (`snitch_common.answers`),
labelled with this prompt's own host and port.

Which scopes make sense depends on the prompt (a domain needs a host name, a port needs TCP or
UDP); the daemon refuses the others, and the popup greys them out with the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from snitch_common.answers import Scope, domain_of
from snitch_common.bus import PromptView

__all__ = ["ScopeOption", "scope_options"]


@dataclass(frozen=True, slots=True)
class ScopeOption:
    """One entry of the scope list; `why_not` says why it is unavailable for this prompt."""

    scope: Scope
    label: str
    why_not: str | None = None


def scope_options(prompt: PromptView, app: str) -> list[ScopeOption]:
    """The scopes in the daemon's order, labelled with this prompt's own host, port, script and
    parent."""
    where = prompt.host or prompt.dst
    ported = prompt.proto in ("tcp", "udp")
    port = f"{prompt.port}/{prompt.proto}" if ported else prompt.proto
    named = prompt.host is not None and "." in prompt.host
    script = _trusted_script(prompt)
    parent = prompt.parents[0][1] if prompt.parents else None
    if parent is not None and not parent.startswith("/"):
        parent = None
    return [
        ScopeOption(Scope.EXACT, f"only {where} on port {port}" if ported else f"only {where}"),
        ScopeOption(Scope.HOST, f"{where}, any port"),
        ScopeOption(
            Scope.DOMAIN,
            f"any host in {domain_of(prompt.host)}" if named and prompt.host else "this domain",
            None if named else "no host name is known for this address",
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
            Scope.CONTAINER,
            f"anything container {prompt.container_name} connects to"
            if prompt.container_name
            else "this container",
            None if prompt.container_name else "this connection is not from a container",
        ),
    ]


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
