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
    them (held, queue_dropped, user_dropped, queued_total), empty when it cannot be read.
    DNS (`dnswatch`): answers believed, skipped (not DNS), unasked (replying to no query of
    ours: forged, or very late), untrusted (from a server that is not a resolver), duplicates,
    unowned (the asking socket was gone); queries seen leaving, and those pushed out unanswered
    by the bounds; the resolvers known now; the name cache's estimated bytes and its bound.
    `rules_error` says why the rules in use are the last good set and not the store's (a rule
    changed outside snitch does not parse), `log_error` why the connection log is not being
    written (a corrupt page, a full disk); both "" when all is well."""

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
    agents_refused: int
    prompts_open: int
    prompts_asked: int
    prompts_timed_out: int
    prompts_over_quota: int
    prompt_packets_held: int
    prompt_packets_dropped: int
    rules_error: str
    seen: int
    accepted: int
    dropped: int
    rejected: int
    errors: int
    by_default: int
    dns_answers: int
    dns_skipped: int
    dns_unasked: int
    dns_untrusted: int
    dns_duplicates: int
    dns_unowned: int
    dns_queries: int
    dns_queries_pushed_out: int
    dns_resolvers: int
    names_bytes: int
    names_max_bytes: int
    log_rows_written: int
    log_rows_dropped: int
    log_writer_pid: int
    log_writer_starts: int
    log_error: str
    kernel: tuple[tuple[str, int], ...] = ()
    running: bool = True
    attribution: str = ""  # which path finds owners: "bpf (cgroup …)" or "proc (why …)"
    forwarded: int = 0  # packets of containers' and guests' flows, of `seen` (issue 16)


def status_of(firewall: Firewall, backend: str, agents_refused: int = 0) -> Status:
    fw, c, d = firewall, firewall.counters, firewall.dns.counters
    return Status(
        version=__version__,
        backend=backend,
        fail_mode=fw.config.fail_mode.value,
        default_action=fw.config.default_action.value,
        queue=fw.config.queue,
        database=fw.store.path,
        started=c.started,
        rules=len(fw.rules),
        names_known=len(fw.dns.names),
        agents=len(fw.broker.agents),
        agents_refused=agents_refused,
        prompts_open=len(fw.broker.open),
        prompts_asked=fw.broker.asked,
        prompts_timed_out=fw.broker.timed_out,
        prompts_over_quota=fw.broker.over_quota,
        prompt_packets_held=fw.broker.held,
        prompt_packets_dropped=fw.broker.packets_dropped,
        rules_error=fw.rules_error,
        seen=c.seen,
        forwarded=c.forwarded,
        accepted=c.accepted,
        dropped=c.dropped,
        rejected=c.rejected,
        errors=c.errors,
        by_default=c.by_default,
        dns_answers=d.answers,
        dns_skipped=d.skipped,
        dns_unasked=d.unasked,
        dns_untrusted=d.untrusted,
        dns_duplicates=d.duplicates,
        dns_unowned=d.unowned,
        dns_queries=d.queries,
        dns_queries_pushed_out=fw.dns.asked.pushed_out,
        dns_resolvers=len(fw.dns.resolvers.addresses),
        names_bytes=fw.dns.names.bytes,
        names_max_bytes=fw.dns.names.max_bytes,
        log_rows_written=fw.events.written,
        log_rows_dropped=fw.events.dropped,
        log_writer_pid=fw.events.writer_pid or 0,
        log_writer_starts=fw.events.writer_starts,
        log_error=fw.events.last_error,
        attribution=fw.attributor.path,
        kernel=tuple(kernel_stats(fw.config.queue).items()),
    )
