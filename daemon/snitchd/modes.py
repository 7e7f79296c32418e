"""The mode in force, and what it makes of a flow that no rule covers (issue 17).

On the packet path after `decide`: a flow a rule covers is decided by the rule, whatever the
mode; one that no rule covers goes to a person in `ask` mode (the broker), and is decided here
in the other modes: allowed (`silent-allow`, `learn`) or denied (`silent-deny`), and in `learn`
also noted as a proposal (`proposals`). Everything here is memory and arithmetic (a dict look-up
and a rule made from the flow), cheap enough for the packet loop; storing the mode and the
proposals is the firewall's, from a worker thread. Time comes in as `now`: a time-limited mode
ends at a wall-clock deadline, checked by whoever calls `due` (the sweeper, once a second, and
so within a second of a resume from suspend).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from snitch_common.answers import Answer, Scope, rule_for_answer
from snitch_common.errors import PromptError
from snitch_common.modes import Mode, ModeState
from snitch_common.records import Flow, Process
from snitch_common.rules import Action
from snitchd.decide import Verdict
from snitchd.proposals import Proposal, ProposalBook

__all__ = ["Modes", "Switch", "expired", "switched"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Switch:
    """One change of mode: from what, to what (the new state), and why."""

    old: ModeState
    new: ModeState
    why: str  # "by uid 0", "time limit over", "profile work"


def switched(state: ModeState, mode: Mode, now: float, seconds: float | None, by: str) -> ModeState:
    """The state after switching to `mode`, for `seconds` or with no limit. A time-limited
    switch made while another time limit runs returns, when it ends, to the mode from before
    both (pausing twice does not make the pause the mode to come back to); a switch with no
    limit forgets every limit."""
    if seconds is None:
        return ModeState(mode, now, by)
    back = state.previous if state.until is not None else state.mode
    return ModeState(mode, now, by, now + seconds, back or Mode.ASK)


def expired(state: ModeState, now: float) -> ModeState | None:
    """The state once `state`'s time limit is over, or None while it runs (or has none)."""
    if state.until is None or now < state.until:
        return None
    return ModeState(state.previous or Mode.ASK, now, "time limit")


class Modes:
    """The mode in force, the proposals `learn` makes, and how many flows each mode decided."""

    def __init__(self, state: ModeState, book: ProposalBook, pin_root: bool = True) -> None:
        self.state = state
        self.book = book
        self.pin_root = pin_root
        self.decided: dict[Mode, int] = dict.fromkeys(Mode, 0)
        self.full_alerted = False  # the book filled up: said once, until it has room again

    @property
    def mode(self) -> Mode:
        return self.state.mode

    def verdict(
        self, flow: Flow, proc: Process, host: str | None, now: float
    ) -> tuple[Verdict | None, Proposal | None]:
        """For a flow no rule covers: None in `ask` mode (a person, or the default, decides),
        else the mode's verdict; in `learn`, with the proposal it noted (None: no room, or
        nothing to propose for this flow)."""
        mode = self.state.mode
        if mode is Mode.ASK:
            return None, None
        self.decided[mode] += 1
        if mode is Mode.SILENT_DENY:
            return Verdict(Action.DENY, None, "mode silent-deny: no rule covers it"), None
        if mode is Mode.SILENT_ALLOW:
            return Verdict(Action.ALLOW, None, "mode silent-allow: no rule covers it"), None
        proposal = self._propose(flow, proc, host, now)
        why = f"proposal {proposal.id}" if proposal is not None else "not proposed"
        return Verdict(Action.ALLOW, None, f"mode learn: no rule covers it ({why})"), proposal

    def _propose(self, flow: Flow, proc: Process, host: str | None, now: float) -> Proposal | None:
        """The narrowest rule for this flow's app and destination, noted. A flow of no known
        app (the kernel's, or a sender not found) or of an executable whose identity is in
        doubt makes none: a rule could not name who sent it."""
        if proc.exe is None or not proc.verified or proc.tampered:
            return None
        try:
            rule = rule_for_answer(
                flow,
                proc,
                host,
                Answer(0, Action.ALLOW, "forever", Scope.EXACT),
                admin=True,
                pin_root=self.pin_root,
            )
        except PromptError as exc:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("no proposal for %s: %s", flow, exc)
            return None
        return self.book.note(rule, proc.uid, now)
