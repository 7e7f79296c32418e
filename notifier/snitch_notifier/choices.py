"""The answers a person can give, as snitchd's own words, with the labels the popup shows.

The words (`allow`, `15m`, `host` …) are the daemon's (`snitchd.prompts.Scope`,
`snitchd.rules.parse_duration`); a unit test pins them to the daemon so the two cannot drift.
We do not import those modules here: `snitchd.prompts` pulls in NetfilterQueue, which a desktop
session has no use for. Defaults match `snitchctl agent`: forever, this host and port. Which
scopes make sense depends on the prompt (a domain needs a host name, a port needs TCP or UDP);
the daemon refuses the others, and the popup greys them out with the reason.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from snitchd.agent import PromptView

__all__ = [
    "DEFAULT_DURATION",
    "DEFAULT_SCOPE",
    "DURATIONS",
    "Action",
    "Answer",
    "ScopeOption",
    "domain_of",
    "scope_options",
]


class Action(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    REJECT = "reject"  # refuse at once (TCP reset, ICMP unreachable): the app fails fast


DURATIONS: tuple[tuple[str, str], ...] = (
    ("once", "once"),
    ("process", "until the app quits"),
    ("5m", "for 5 minutes"),
    ("15m", "for 15 minutes"),
    ("60m", "for 1 hour"),
    ("restart", "until restart"),
    ("forever", "forever"),
)
DEFAULT_DURATION = "forever"
DEFAULT_SCOPE = "exact"


@dataclass(frozen=True, slots=True)
class Answer:
    """What goes back to snitchd for one prompt (`Client.answer_prompt`)."""

    prompt_id: int
    action: Action
    duration: str = DEFAULT_DURATION
    scope: str = DEFAULT_SCOPE


@dataclass(frozen=True, slots=True)
class ScopeOption:
    """One entry of the scope list; `why_not` says why it is unavailable for this prompt."""

    scope: str
    label: str
    why_not: str | None = None


def domain_of(host: str) -> str:
    """The domain a `domain` answer covers, computed as snitchd does (`rule_for_answer`)."""
    return "*." + (host.split(".", 1)[1] if host.count(".") > 1 else host)


def scope_options(prompt: PromptView, app: str) -> list[ScopeOption]:
    """The five scopes in the daemon's order, labelled with this prompt's own host and port."""
    where = prompt.host or prompt.dst
    ported = prompt.proto in ("tcp", "udp")
    port = f"{prompt.port}/{prompt.proto}" if ported else prompt.proto
    named = prompt.host is not None and "." in prompt.host
    return [
        ScopeOption("exact", f"only {where} on port {port}" if ported else f"only {where}"),
        ScopeOption("host", f"{where}, any port"),
        ScopeOption(
            "domain",
            f"any host in {domain_of(prompt.host)}" if named and prompt.host else "this domain",
            None if named else "no host name is known for this address",
        ),
        ScopeOption(
            "port",
            f"any host on port {port}" if ported else "this port",
            None if ported else f"{prompt.proto or 'this protocol'} has no ports",
        ),
        ScopeOption("app", f"anything {app} connects to"),
    ]
