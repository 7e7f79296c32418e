"""What `snitchctl status` shows, as one record the daemon builds from its parts.

The D-Bus layer turns this record into `a{sv}` in one place and reads nothing else of the
firewall for it. Everything here is a counter or a setting already in memory (and one small
/proc file of the kernel's queue counters): it is cheap enough for the packet loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from snitch_common import __version__
from snitchd.firewall import Firewall
from snitchd.queue import kernel_stats

__all__ = ["Status", "status_of"]


@dataclass(frozen=True, slots=True)
class Status:
    """The daemon at one moment. `kernel` holds the queue's counters as the kernel reports
    them (held, queue_dropped, user_dropped, queued_total), empty when it cannot be read."""

    version: str
    backend: str
    fail_mode: str
    default_action: str
    queue: int
    database: str
    started: float
    rules: int
    names_known: int
    agents: int
    prompts_open: int
    prompts_asked: int
    prompts_timed_out: int
    seen: int
    accepted: int
    dropped: int
    rejected: int
    errors: int
    by_default: int
    dns_answers: int
    dns_skipped: int
    log_rows_written: int
    log_rows_dropped: int
    log_writer_pid: int
    log_writer_starts: int
    kernel: tuple[tuple[str, int], ...] = ()
    running: bool = True
    attribution: str = ""  # which path finds owners: "bpf (cgroup …)" or "proc (why …)"


def status_of(firewall: Firewall, backend: str) -> Status:
    fw, c = firewall, firewall.counters
    return Status(
        version=__version__,
        backend=backend,
        fail_mode=fw.config.fail_mode,
        default_action=fw.config.default_action.value,
        queue=fw.config.queue,
        database=fw.store.path,
        started=c.started,
        rules=len(fw.rules),
        names_known=len(fw.names),
        agents=len(fw.broker.agents),
        prompts_open=len(fw.broker.open),
        prompts_asked=fw.broker.asked,
        prompts_timed_out=fw.broker.timed_out,
        seen=c.seen,
        accepted=c.accepted,
        dropped=c.dropped,
        rejected=c.rejected,
        errors=c.errors,
        by_default=c.by_default,
        dns_answers=c.dns_answers,
        dns_skipped=c.dns_skipped,
        log_rows_written=fw.events.written,
        log_rows_dropped=fw.events.dropped,
        log_writer_pid=fw.events.writer_pid or 0,
        log_writer_starts=fw.events.writer_starts,
        attribution=fw.attributor.path,
        kernel=tuple(kernel_stats(fw.config.queue).items()),
    )
