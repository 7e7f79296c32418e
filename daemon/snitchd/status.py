"""What `snitchctl status` shows, as one record the daemon builds from its parts.

The D-Bus layer turns this record into `a{sv}` in one place and reads nothing else of the
firewall for it. Everything here is a counter or a setting already in memory (and one small
/proc file of the kernel's queue counters): it is cheap enough for the packet loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from snitch_common import __version__
from snitch_common.modes import Mode
from snitchd.config import reader_count
from snitchd.firewall import Firewall
from snitchd.limitdrops import LimitDrops
from snitchd.queue import kernel_stats
from snitchd.socketmatch import SocketDrops

__all__ = ["Status", "current_status"]


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
    sockets: str = ""  # a datagram's verdict kept "per socket (pin)" or "per tuple: why"
    # Datagrams the socket match dropped in the kernel: of users past their limit on the way
    # to the queue, and verdicts given for another uid's socket (a shared port).
    datagrams_over_limit: int = 0
    datagrams_other_socket: int = 0
    # Dropped by the kernel's rate limits before the queues (`limitdrops`, read at most once a
    # second): new flows past new_flows_per_user, DNS queries past dns_queries_per_user.
    flows_over_limit: int = 0
    dns_queries_over_limit: int = 0
    rules_files_error: str = ""  # why a rules.d file was refused at the last load (issue 18)
    flows_cut: int = 0  # open flows cut because a rule added or enabled later denies them
    retries: int = 0  # new flows counted as retries of a blocked attempt (attempts)
    attempts_remembered: int = 0
    routing: tuple[str, ...] = ()  # which agent gets whose prompts, in order (the API fills it)
    # Issue 17: the mode in force (`mode_until` 0: no time limit; `mode_previous` comes back
    # then), the active profile ("" for none), the proposals kept and those left out (no room),
    # and the flows no rule covered that each mode decided since start.
    mode: str = "ask"
    mode_until: float = 0.0
    mode_previous: str = ""
    profile: str = ""
    proposals: int = 0
    proposals_left_out: int = 0
    decided_silent_allow: int = 0
    decided_silent_deny: int = 0
    decided_learn: int = 0
    # Decided flows by how their owner was found (`Source`), and rows waiting for the log
    # writer: for the metrics (issue 20).
    attributed_bpf: int = 0
    attributed_sock_diag: int = 0
    attributed_uid_only: int = 0
    attributed_kernel: int = 0
    log_backlog: int = 0
    forwarded: int = 0  # packets of containers' and guests' flows, of `seen` (issue 16)
    fast: int = 0  # connects the kernel passed by a rule's earlier allow, of `seen` (`fastpath`)
    fast_path: str = ""  # "on", or "off: why"


async def current_status(firewall: Firewall, backend: str, agents_refused: int = 0) -> Status:
    """The daemon's status, with the kernel's rate-limit counters read anew when the last
    reading is over a second old (in a thread: they take tool runs)."""
    if firewall.limit_drops is not None:
        await firewall.limit_drops.refresh()
    return _status_of(firewall, backend, agents_refused)


def _status_of(firewall: Firewall, backend: str, agents_refused: int = 0) -> Status:
    fw, c, d = firewall, firewall.counters, firewall.dns.counters
    drops = fw.socket_match.dropped() if fw.socket_match is not None else SocketDrops(0, 0)
    limited = fw.limit_drops.last if fw.limit_drops is not None else LimitDrops()
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
        fast=c.fast,
        fast_path=fw.fast_path,
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
        sockets=fw.sockets,
        datagrams_over_limit=drops.over_limit,
        flows_over_limit=limited.flows,
        dns_queries_over_limit=limited.queries,
        datagrams_other_socket=drops.other_socket,
        attributed_bpf=c.attributed.get("bpf", 0),
        attributed_sock_diag=c.attributed.get("sock_diag", 0),
        attributed_uid_only=c.attributed.get("uid-only", 0),
        attributed_kernel=c.attributed.get("kernel", 0),
        log_backlog=fw.events.backlog,
        kernel=tuple(kernel_stats(fw.config.queue, reader_count(fw.config)).items()),
        rules_files_error=fw.files_error,
        flows_cut=c.cut,
        retries=c.retries,
        attempts_remembered=len(fw.attempts),
        mode=fw.modes.state.mode.value,
        mode_until=fw.modes.state.until or 0.0,
        mode_previous=fw.modes.state.previous.value if fw.modes.state.previous else "",
        profile=fw.profile or "",
        proposals=len(fw.modes.book),
        proposals_left_out=fw.modes.book.left_out,
        decided_silent_allow=fw.modes.decided[Mode.SILENT_ALLOW],
        decided_silent_deny=fw.modes.decided[Mode.SILENT_DENY],
        decided_learn=fw.modes.decided[Mode.LEARN],
    )
