"""A packet held by a queue reader process, as the main process's prompts hold it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from snitch_common.records import Flow, Process
from snitchd.decide import Verdict

__all__ = ["Handed"]


@dataclass(frozen=True, slots=True)
class Handed:
    """Stands for a packet a reader holds (`ticket`) in the prompt broker, which gives it a
    verdict (`apply`, through `Firewall.apply`) or drops it past a prompt's share (`drop`).
    `send` reaches the reader that holds it; if that reader died meanwhile, it does nothing:
    the kernel dropped the packet with the reader's queue, and the program retries."""

    ticket: int
    send: Callable[[int, tuple[Verdict, Flow, Process, str | None] | None], None]

    def apply(self, verdict: Verdict, flow: Flow, proc: Process, host: str | None) -> None:
        """As `Firewall.apply`: the reader logs the verdict for `flow` and `proc` (a prompt's
        own, for each packet it held), as snitchd does with one queue."""
        self.send(self.ticket, (verdict, flow, proc, host))

    def drop(self) -> None:
        self.send(self.ticket, None)
