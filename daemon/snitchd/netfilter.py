"""Kernel rules that divert new outbound flows to our queue: the first step of the packet path.

A backend builds its commands as data (`Plan`) and applies them in one atomic batch. We own our
chains only: we add one jump to each, replace our chains whole, and remove exactly what we added
(including the stale jumps of a crashed run). Never flush anything else.

The queue rule sits in the *mangle* table: a queued packet we accept continues to the next table
(filter), so the admin's own OUTPUT rules still apply after ours. "Reject" cannot happen in mangle,
so the verdict marks the packet and a rule of ours in *filter* rejects marked packets (TCP RST,
ICMP port unreachable) — the program fails fast instead of timing out.

A decided flow is never queued again (issue 12): the verdict is kept on the flow's conntrack
entry (its connmark), and rules before the queue rule act on it for every later packet,
whatever its conntrack state: allowed → RETURN (on to the admin's rules, never to us), denied →
DROP, rejected → on to filter, which rejects it. Without this a one-way UDP flow, conntrack NEW
until a reply, sent each datagram through Python and the log. An allowed flow's connmark is set
here, in the kernel: the verdict is NF_REPEAT with `ALLOW_MARK` on the packet, so the packet
runs through mangle again, where the first rules copy that mark to its conntrack entry and take
it off the packet (routing and the admin's rules never see it). This spares a ctnetlink update
per allowed flow (two system calls on the packet loop) and leaves no moment when the flow is
allowed but not yet marked. A denied or rejected verdict is a repeat too, with its own mark,
which our rules act on (drop; on to the reject rule); a refused packet goes no further, so
`connmark.ConnMarks` creates its entry over ctnetlink. Every verdict passing our rules again
is also how the socket match learns which sockets were decided (`socketmatch`): a conntrack
entry is a tuple, and a datagram of another socket on it is decided afresh.

Mark layout, the same in the packet mark and the connmark: snitch owns the bits of `MARK_MASK`
(the high 16) and leaves the low 16 to others; every match and write is masked. Our bits hold
one of three values: `ALLOW_MARK`, `DENY_MARK`, `REJECT_MARK` (0x5A1 and a letter: A, D, E).
A whole 16-bit pattern, not one bit per verdict, so another program's use of those bits is
unlikely to read as a verdict of ours. Only `REJECT_MARK` ever leaves our chain on a packet
(the first packet of a rejected flow, for the filter rule); `ALLOW_MARK` is taken off in the
hook that saw it, because a mark changed past it sends the packet through routing again (policy
routing by fwmark: tests/integration/test_connmark.py has a route that refuses our mark).

Forwarded flows (issue 16): a container or guest behind a local bridge, veth or tap device sends
through the FORWARD hook, never OUTPUT. `NetSpec.forward_from` lists the input interfaces that
count as local containers (iptables names, `+` for any suffix: `docker0`, `br-+`, `virbr+`...);
a new flow coming in on one of them goes to the same queue from mangle FORWARD (snitchd tells it
apart by the hook), behind the same decided-flow rules. Interfaces not listed are outside
networks: traffic merely routed between two of them is never queued, and neither are flows
*into* a container (a published port, DNAT'd in PREROUTING: it arrives on the outside interface)
nor replies (conntrack ESTABLISHED). Rejects of forwarded flows go through the same reject chain,
jumped to from filter FORWARD. By name, not by link kind (bridge, veth, tun per netlink): a rule
by name covers the container started after snitchd, and only root names links on the host.

This kernel has xt NFQUEUE but not nft `queue` (DESIGN.md), so iptables is the first backend; a
native nftables backend fits the same `Backend` protocol.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from snitch_common.errors import BackendFailed, BackendUnavailable
from snitch_common.records import SYSTEM_UID_MAX
from snitch_common.rules import Action

__all__ = [
    "ALLOW_MARK",
    "DENY_MARK",
    "MARK_MASK",
    "NOTE_SENDER_PIN",
    "NO_FAST",
    "NO_SOCKETS",
    "OTHER_SOCKET_PIN",
    "OVER_LIMIT_PIN",
    "REJECT_MARK",
    "UNASKED_MARK",
    "UNDECIDED_PIN",
    "VERDICT_PINS",
    "Backend",
    "Chains",
    "IptablesBackend",
    "NetSpec",
    "Plan",
    "Step",
    "fast_lines",
    "install_lines",
    "limit_script",
    "run_tool",
    "select_backend",
    "socket_lines",
    "verdict_mark",
]

log = logging.getLogger(__name__)

MARK_MASK = 0xFFFF0000
ALLOW_MARK = 0x5A1A0000
DENY_MARK = 0x5A1D0000
REJECT_MARK = 0x5A1E0000
UNASKED_MARK = 0x5A150000  # an incoming DNS answer of no conntrack reply flow (dnswatch)
# Unasked answers looked at, at most, per second: enough to count and alert, while a flood of
# forged answers costs the packet loop nothing (the rest pass unseen).
UNASKED_LIMIT = "--limit 50/second --limit-burst 100"
_VERDICT_MARKS = {Action.ALLOW: ALLOW_MARK, Action.DENY: DENY_MARK, Action.REJECT: REJECT_MARK}
COMMENT = "snitch"
LIMIT_TABLE = "snitch_limit"  # nft, inet family: the per-user limits of new flows, DNS queries
_NO_LIMIT = (
    "the per-user limits of new flows and DNS queries (nft table snitch_limit) are off, so one "
    "user can fill the queues"
)
_NO_NF_TABLES = f"{_NO_LIMIT}: nft needs the kernel's nf_tables (modprobe nf_tables)"
QUEUE_CHAIN = "SNITCH_QUEUE"
REJECT_CHAIN = "SNITCH_REJECT"
DNS_CHAIN = "SNITCH_DNS"
DNS_QUERY_CHAIN = "SNITCH_DNSQ"
FORWARD_CHAIN = "SNITCH_FORWARD"
FORWARD_QUEUE_CHAIN = "SNITCH_FWDQ"  # jumped to from FORWARD_CHAIN only: its limits, the queue
DNS_FORWARD_CHAIN = "SNITCH_DNSFQ"  # jumped to from DNS_QUERY_CHAIN: a forwarded query's limits
# Their hashlimit tables (/proc/net/ipt_hashlimit/), named these and the rate: the kernel gives
# a new rule the live table of its name, with that table's rate, so a reload that changed the
# rate under one name would keep the old one.
FORWARD_LIMIT, DNS_FORWARD_LIMIT = "snfwd", "sndnsq"
AGGREGATE_MAX = 10000  # the limit match's fastest rate, a second (XT_LIMIT_SCALE)
SOCKET_CHAIN = "SNITCH_SOCKETS"  # jumped to from QUEUE_CHAIN only
FAST_CHAIN = "SNITCH_FAST"  # likewise, for TCP SYNs: the fast path's match (`fast_lines`)
UNDECIDED_PIN, OVER_LIMIT_PIN = "undecided", "over-limit"  # its programs, in `NetSpec.sockets`
OTHER_SOCKET_PIN = "other-socket"  # a verdict's repeat sent by a socket snitchd did not name
NOTE_SENDER_PIN = "note-sender"  # notes the socket of a flow's datagram queued whole
# and one per verdict: the packet's socket was given this one
VERDICT_PINS = {ALLOW_MARK: "allowed", DENY_MARK: "denied", REJECT_MARK: "rejected"}
NO_SOCKETS = (
    "the socket match (SNITCH_SOCKETS) is off, so a datagram's verdict is kept per conntrack "
    "tuple, not per socket"
)
_NO_XT_BPF = f"{NO_SOCKETS}: the kernel needs the bpf match (modprobe xt_bpf)"
NO_FAST = "the fast path (SNITCH_FAST) is off, so every new flow is queued"
_NO_FAST_XT_BPF = f"{NO_FAST}: the kernel needs the bpf match (modprobe xt_bpf)"
_TABLES = ("mangle", "filter")
_OWN = (
    ("mangle", "OUTPUT", QUEUE_CHAIN),
    ("filter", "OUTPUT", REJECT_CHAIN),
    ("mangle", "FORWARD", FORWARD_CHAIN),
    ("filter", "FORWARD", REJECT_CHAIN),
    ("mangle", "INPUT", DNS_CHAIN),
    ("mangle", "POSTROUTING", DNS_QUERY_CHAIN),
    ("mangle", QUEUE_CHAIN, SOCKET_CHAIN),  # after QUEUE_CHAIN, the chain that jumps to it
    ("mangle", QUEUE_CHAIN, FAST_CHAIN),  # likewise
    ("mangle", FORWARD_CHAIN, FORWARD_QUEUE_CHAIN),  # likewise
    ("mangle", DNS_QUERY_CHAIN, DNS_FORWARD_CHAIN),  # likewise
)


def verdict_mark(action: Action) -> int:
    """Our bits of the mark for a verdict (see the layout above)."""
    return _VERDICT_MARKS[action]


@dataclass(frozen=True, slots=True)
class NetSpec:
    """`dns_queue`: where DNS is copied for name snooping (`dnswatch`): the queries leaving
    (to port 53, in POSTROUTING, so only queries every filter let out) and the answers
    arriving (from port 53, any interface): those of a conntrack reply flow, and at most
    `UNASKED_LIMIT` others, marked `UNASKED_MARK`. They always bypass when nobody reads, since
    they decide nothing."""

    queue: int
    fail_open: bool
    intercept_loopback: bool = False
    dns_queue: int | None = None
    forward_from: tuple[str, ...] = ()
    # Queues `queue` … `queue + queues - 1`, one reader process each (issue 21), chosen by the
    # CPU that sends the packet (`--queue-balance` with `--queue-cpu-fanout`): the balance's
    # own hash is of the addresses only (not the ports), so every connection from this machine
    # to one server would go to one reader. A flow whose packets leave from two CPUs may reach
    # two readers: each decides it alike, and the main process logs it once (`readers`).
    queues: int = 1
    # New flows a second one user (uid above `SYSTEM_UID_MAX`) may start; 0: no limit.
    per_user: int = 0
    # Where the socket match's programs are pinned (`socketmatch`); "": none, verdicts per
    # tuple only.
    sockets: str = ""
    # DNS queries a second one such user may send to the DNS queue; 0: no limit.
    dns_per_user: int = 0
    # Where the fast path's socket filter is pinned (`fastpath`); "": no fast path.
    fast: str = ""


@dataclass(frozen=True, slots=True)
class Chains:
    """Our chains and jumps for one tool, as iptables-restore lines, by table."""

    mangle: tuple[str, ...]
    filter: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Step:
    """A command and its input. One with `without` set is not needed to filter: when it fails
    snitchd goes on, with a warning that says what is missing (`without`)."""

    argv: tuple[str, ...]
    stdin: str
    without: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    """Steps to run in order, and what is lost before any runs (this machine cannot have it)."""

    steps: tuple[Step, ...]
    lost: tuple[str, ...] = ()


class Backend(Protocol):
    name: str
    families: tuple[str, ...]  # the tools, one per address family ("iptables", "ip6tables")

    def probe(self) -> None: ...
    def plan_install(self, spec: NetSpec) -> Plan: ...
    def plan_remove(self) -> Plan: ...
    def apply(self, plan: Plan) -> tuple[str, ...]: ...


def run_tool(argv: tuple[str, ...], stdin: str = "") -> str:
    """A netfilter tool's output (in the C locale); raises BackendFailed, saying why, when it
    cannot run, takes over 30 s or fails."""
    env = {**os.environ, "LANG": "C", "LC_ALL": "C"}
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, env=env, timeout=30, check=False
        )
    except OSError as exc:
        raise BackendFailed(f"cannot run {argv[0]}: {exc.strerror}") from None
    except subprocess.TimeoutExpired:
        raise BackendFailed(f"{argv[0]} did not finish in 30 s (xtables lock held?)") from None
    if done.returncode != 0:
        raise BackendFailed(f"{' '.join(argv)} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _explain_kernel_error(message: str) -> str:
    if "NFQUEUE" in message:
        return (
            "the kernel lacks the NFQUEUE target (xt_NFQUEUE, CONFIG_NETFILTER_XT_TARGET_NFQUEUE): "
            "try `modprobe xt_NFQUEUE nfnetlink_queue`, or install a kernel with netfilter queue "
            "support"
        )
    if "connmark" in message:
        return "the kernel lacks connmark matching: try `modprobe xt_connmark`"
    if "conntrack" in message:
        return "the kernel lacks conntrack matching: try `modprobe xt_conntrack`"
    if "REJECT" in message:
        return "the kernel lacks the REJECT target: try `modprobe ipt_REJECT ip6t_REJECT`"
    return message


class IptablesBackend:
    """iptables / ip6tables (nft or legacy flavour, whichever `iptables` is)."""

    name = "iptables"

    def __init__(self, families: tuple[str, ...] | None = None) -> None:
        if families is None:
            v6 = Path("/proc/net/if_inet6").exists()
            families = ("iptables", "ip6tables") if v6 else ("iptables",)
        self.families = families
        self.legacy = False  # iptables-legacy rather than iptables-nft (`probe`)

    def probe(self) -> None:
        for tool in self.families:
            for suffix in ("-save", "-restore"):
                if shutil.which(tool + suffix) is None:
                    raise BackendUnavailable(
                        f"{tool}{suffix} not found: install the iptables package "
                        "(apt-get install iptables)"
                    )
            try:
                run_tool((tool + "-save", "-t", "mangle"))
            except BackendFailed as exc:
                raise BackendUnavailable(
                    f"{tool} cannot read the mangle table ({exc}); is snitchd root, and does the "
                    "kernel have iptable_mangle / nft_compat?"
                ) from None
        version = run_tool((self.families[0], "--version")).strip()
        self.legacy = "legacy" in version
        log.info("backend probed name=%s version=%r", self.name, version)

    def _remove_lines(self, tool: str, keep: frozenset[str] = frozenset()) -> dict[str, list[str]]:
        """Lines that undo a previous run; chains in `keep` stay because they are about to be
        redeclared (a `:CHAIN` line of iptables-restore empties an existing chain). Each table
        is read once: an iptables-save run costs tens of ms, at every start, reload and stop."""
        saved = {table: run_tool((tool + "-save", "-t", table)).splitlines() for table in _TABLES}
        lines: dict[str, list[str]] = {table: [] for table in _TABLES}
        drop: dict[tuple[str, str], None] = {}
        for table, hook, chain in _OWN:
            lines[table] += [  # our jumps, as `-D` lines
                "-D" + line[2:]
                for line in saved[table]
                if line.startswith(f"-A {hook} ") and line.endswith(f"-j {chain}")
            ]
            if chain not in keep and any(line.startswith(f":{chain} ") for line in saved[table]):
                drop[(table, chain)] = None
        # Every jump first: a chain jumped to from two hooks (the reject chain, from OUTPUT
        # and FORWARD) can only be deleted once neither jump is left.
        for table, chain in drop:
            lines[table] += [f"-F {chain}", f"-X {chain}"]
        return lines

    def plan_install(self, spec: NetSpec) -> Plan:
        steps, lost = [], []
        if spec.sockets and self.legacy:
            # iptables-legacy rewrites a whole table on every change, and the kernel checks
            # each match again then: the bpf match's program (an fd of the process that added
            # it) no longer opens, so every later change of mangle, ours or the admin's, fails.
            lost.append(f"{NO_SOCKETS}: not with iptables-legacy (use iptables-nft)")
            spec = replace(spec, sockets="")
        if spec.fast and self.legacy:  # the same reason
            lost.append(f"{NO_FAST}: not with iptables-legacy (use iptables-nft)")
            spec = replace(spec, fast="")
        for tool in self.families:
            redeclared = {QUEUE_CHAIN, REJECT_CHAIN} | (
                {DNS_CHAIN, DNS_QUERY_CHAIN} if spec.dns_queue is not None else set()
            )
            if spec.dns_queue is not None and spec.dns_per_user > 0:
                redeclared.add(DNS_FORWARD_CHAIN)
            if spec.forward_from:
                redeclared.add(FORWARD_CHAIN)
                if spec.per_user > 0:
                    redeclared.add(FORWARD_QUEUE_CHAIN)
            if spec.sockets:
                redeclared.add(SOCKET_CHAIN)
            if spec.fast:
                redeclared.add(FAST_CHAIN)
            old = self._remove_lines(tool, frozenset(redeclared))
            new = install_lines(tool, spec)
            text = _restore_text(
                {"mangle": old["mangle"] + [*new.mangle], "filter": old["filter"] + [*new.filter]}
            )
            restore = (tool + "-restore", "--noflush", "-w", "5")
            steps.append(Step(restore, text))
            if spec.sockets:
                sockets = _restore_text({"mangle": socket_lines(spec)})
                steps.append(Step(restore, sockets, _NO_XT_BPF))
            if spec.fast:
                fast = _restore_text({"mangle": fast_lines(spec)})
                steps.append(Step(restore, fast, _NO_FAST_XT_BPF))
        if spec.per_user > 0 or spec.dns_per_user > 0 or self._limit_table():
            if shutil.which("nft") is None:
                lost.append(f"{_NO_LIMIT}: nft not found (apt-get install nftables)")
            else:
                script = limit_script(spec.per_user, spec.dns_per_user)
                steps.append(Step(("nft", "-f", "-"), script, _NO_NF_TABLES))
        return Plan(tuple(steps), tuple(lost))

    def _limit_table(self) -> bool:
        """Whether our nft table is there (from this run or an earlier one)."""
        if shutil.which("nft") is None:
            return False
        try:
            run_tool(("nft", "list", "table", "inet", LIMIT_TABLE))
        except BackendFailed:
            return False
        return True

    def plan_remove(self) -> Plan:
        steps = []
        for tool in self.families:
            lines = self._remove_lines(tool)
            if any(lines.values()):
                steps.append(
                    Step((tool + "-restore", "--noflush", "-w", "5"), _restore_text(lines))
                )
        if self._limit_table():
            steps.append(Step(("nft", "-f", "-"), limit_script(0), _NO_NF_TABLES))
        return Plan(tuple(steps))

    def apply(self, plan: Plan) -> tuple[str, ...]:
        """Run the plan's steps in order; returns what is lost (the plan's own, and the
        `without` of each optional step that failed), each said in a warning too."""
        lost = list(plan.lost)
        for text in lost:
            log.warning("%s", text)
        for step in plan.steps:
            try:
                run_tool(step.argv, step.stdin)
            except BackendFailed as exc:
                if step.without:
                    log.warning("%s: %s", step.without, exc)
                    lost.append(step.without)
                    continue
                raise BackendFailed(_explain_kernel_error(str(exc))) from None
        return tuple(lost)


def install_lines(tool: str, spec: NetSpec) -> Chains:
    """Our chains and jumps for `tool` ("iptables" or "ip6tables"): pure, so unit tests read the
    rules without a kernel."""
    unreach = "icmp6-port-unreachable" if tool == "ip6tables" else "icmp-port-unreachable"
    target = _target(spec)
    marked, ct_rejected = _has("mark", REJECT_MARK), _has("connmark", REJECT_MARK)
    # The socket chain, empty until its own step fills it, declared first: our chain jumps to it.
    queue = [f":{SOCKET_CHAIN} - [0:0]"] if spec.sockets else []
    queue += [f":{FAST_CHAIN} - [0:0]"] if spec.fast else []
    queue.append(f":{QUEUE_CHAIN} - [0:0]")
    if not spec.intercept_loopback:
        queue.append(f"-A {QUEUE_CHAIN} -o lo -j RETURN")
    queue += [
        *_decided_lines(QUEUE_CHAIN, [f"-j NFQUEUE {target}"], bool(spec.sockets), bool(spec.fast)),
        f"-A {QUEUE_CHAIN} -m conntrack --ctstate NEW -j NFQUEUE {target}",
        f"-I OUTPUT 1 -m comment --comment {COMMENT} -j {QUEUE_CHAIN}",
    ]
    reject = [f":{REJECT_CHAIN} - [0:0]"]
    for match in (marked, ct_rejected):  # the decided packet, then the rest of its flow
        reject += [
            f"-A {REJECT_CHAIN} -p tcp {match} -j REJECT --reject-with tcp-reset",
            f"-A {REJECT_CHAIN} {match} -j REJECT --reject-with {unreach}",
        ]
    reject.append(f"-I OUTPUT 1 -m comment --comment {COMMENT} -j {REJECT_CHAIN}")
    if spec.dns_queue is not None:
        queue += _dns_lines(spec.dns_queue, spec.dns_per_user)
    if spec.forward_from:
        to_queue = f"-j {FORWARD_QUEUE_CHAIN}" if spec.per_user > 0 else f"-j NFQUEUE {target}"
        again = [f"-i {name} {to_queue}" for name in spec.forward_from]
        if spec.per_user > 0:
            queue += _limited_queue_lines(
                FORWARD_QUEUE_CHAIN, FORWARD_LIMIT, spec.per_user, f"NFQUEUE {target}"
            )
        queue += [f":{FORWARD_CHAIN} - [0:0]", *_decided_lines(FORWARD_CHAIN, again)]
        queue += [
            f"-A {FORWARD_CHAIN} -i {name} -m conntrack --ctstate NEW --ctdir ORIGINAL {to_queue}"
            for name in spec.forward_from
        ]
        queue.append(f"-I FORWARD 1 -m comment --comment {COMMENT} -j {FORWARD_CHAIN}")
        reject.append(f"-I FORWARD 1 -m comment --comment {COMMENT} -j {REJECT_CHAIN}")
    return Chains(tuple(queue), tuple(reject))


def _limited_queue_lines(chain: str, table: str, per_source: int, target: str) -> list[str]:
    """`chain`: the way to a queue (`target`) for packets with no socket here, past two limits.
    A forwarded packet has no uid on this machine (the nft limits count sockets' uids), so each
    source address may send `per_source` a second, as a user may (hashlimit, its table named
    `table` and the rate); without it, a user in the docker group ran a connect flood in a
    container and filled the queue every flow waits in. A container with NET_RAW (Docker's
    default) can forge a new source for every packet, so all sources together may send four
    times as many (the limit match, at most `AGGREGATE_MAX`): such a container can crowd out
    the other containers, never the host's own packets. The rest are dropped."""
    together = min(4 * per_source, AGGREGATE_MAX)
    each = f"{per_source}/sec --hashlimit-burst {per_source} --hashlimit-mode srcip"
    return [
        f":{chain} - [0:0]",
        f"-A {chain} -m hashlimit --hashlimit-above {each} --hashlimit-name {table}{per_source} "
        "-j DROP",
        f"-A {chain} -m limit --limit {together}/sec --limit-burst {together} -j {target}",
        f"-A {chain} -j DROP",
    ]


def _decided_lines(
    chain: str, queues: list[str], sockets: bool = False, fast: bool = False
) -> list[str]:
    """The rules before a queue rule. Every verdict is a repeat of this hook with its mark on
    the packet (`firewall`). An allowed packet's first rule keeps the allow on the conntrack
    entry and a later one takes it off the packet again, so routing and the admin's rules
    never see it (the mangle hook routes the packet again with its own mark), in the kernel, in
    the same step as the verdict; a denied one is dropped, a rejected one goes on to the reject
    rule (filter). Then decided flows, whatever their conntrack state: a one-way UDP flow stays
    NEW.

    Except a TCP SYN, which is queued (`queues`: the matches and target of the queue rule)
    whatever its entry says, unless it is a decided packet coming back: a conntrack entry is
    a tuple, not a socket, and a SYN on the ports of a flow decided before (a closed socket's,
    its entry alive for 120 s) is taken by conntrack as that flow's retransmission. So any user
    could deny everyone's connects to a place by trying it from each local port (root's
    connects then waited out their timeout: bench.disturb window 11), and a program could take
    another's allow by connecting from the ports of its unanswered SYNs. snitchd gives a
    connect's own retransmissions the verdict of its first SYN (`firewall._in_flight`).

    `sockets`: other packets of a decided flow, and decided packets coming back, go through
    `SOCKET_CHAIN` first, where the ones of a socket snitchd did not decide are queued
    (`socketmatch`): datagrams have no SYN. First of all: a verdict for another socket must
    not be kept on the entry.

    `fast`: a SYN goes through `FAST_CHAIN` first, where the fast path (`fastpath`) may give it
    the allow mark, as a verdict would, for the rules after."""
    verdicts = (ALLOW_MARK, DENY_MARK, REJECT_MARK)
    allowed_now, denied_now, rejected_now = (_has("mark", mark) for mark in verdicts)
    ct_allowed, ct_denied, ct_rejected = (_has("connmark", mark) for mark in verdicts)
    undecided = " ".join(f"-m mark ! --mark {mark:#x}/{MARK_MASK:#x}" for mark in verdicts)
    return [
        *([f"-A {chain} ! -p tcp -j {SOCKET_CHAIN}"] if sockets else []),
        *([f"-A {chain} -p tcp --syn {undecided} -j {FAST_CHAIN}"] if fast else []),
        f"-A {chain} {allowed_now} -j CONNMARK --set-xmark {ALLOW_MARK:#x}/{MARK_MASK:#x}",
        *(f"-A {chain} -p tcp --syn {undecided} {queue}" for queue in queues),
        f"-A {chain} {allowed_now} -j MARK --set-xmark 0/{MARK_MASK:#x}",
        f"-A {chain} {denied_now} -j DROP",
        f"-A {chain} {rejected_now} -j RETURN",
        f"-A {chain} {ct_allowed} -j RETURN",
        f"-A {chain} {ct_denied} -j DROP",
        f"-A {chain} {ct_rejected} -j RETURN",
    ]


def fast_lines(spec: NetSpec) -> list[str]:
    """`FAST_CHAIN`'s rule (mangle), a step of its own as `socket_lines`: the fast path's socket
    filter (`fastpath`, pinned at `spec.fast`) matches the SYN of a connect the kernel may pass
    by a rule's earlier allow, and the allow mark goes on it, as on a verdict's repeat."""
    return [
        f":{FAST_CHAIN} - [0:0]",
        f"-A {FAST_CHAIN} -m bpf --object-pinned {spec.fast} "
        f"-j MARK --set-xmark {ALLOW_MARK:#x}/{MARK_MASK:#x}",
    ]


def socket_lines(spec: NetSpec) -> list[str]:
    """`SOCKET_CHAIN`'s rules (mangle), a step of their own so that a kernel or iptables
    without the bpf match leaves the chain empty, and snitchd filtering by tuple (`without`).
    The programs (`socketmatch`, pinned in `spec.sockets`) drop a packet carrying a verdict
    for another uid's socket than the one that sent it (snitchd names the sender by its tuple,
    which a shared port makes ambiguous), learn from the others (they never match one), and
    answer for a packet of a flow with a verdict on its entry: passed on if its socket was
    given that verdict (one lookup, the common case); dropped if its user is past the limit,
    else queued, if its socket is undecided; else its socket was given another verdict (two
    live sockets share the flow's port), and the entry is set to it, for the connmark rules
    after. Any other packet is undecided, and the rules after take it as before: a flow
    without our mark is queued whole when new, and a packet conntrack does not track has no
    entry to inherit a verdict from. A datagram's socket is noted whenever it is queued,
    by the queue rule's program, or by the last rule's for a new flow's (its program never
    matches), so that snitchd names the socket that sent it."""

    def pinned(name: str) -> str:
        return f"-m bpf --object-pinned {spec.sockets}/{name}"

    none = f"0/{MARK_MASK:#x}"
    decided = f"-m mark --mark {none} -m connmark ! --mark {none}"
    return [
        f":{SOCKET_CHAIN} - [0:0]",
        f"-A {SOCKET_CHAIN} -m mark ! --mark {none} {pinned(OTHER_SOCKET_PIN)} -j DROP",
        f"-A {SOCKET_CHAIN} -m mark ! --mark {none} {pinned(UNDECIDED_PIN)} -j RETURN",
        *(
            f"-A {SOCKET_CHAIN} -m mark --mark {none} {_has('connmark', mark)} {pinned(name)} "
            "-j RETURN"
            for mark, name in VERDICT_PINS.items()
        ),
        f"-A {SOCKET_CHAIN} {decided} {pinned(OVER_LIMIT_PIN)} -j DROP",
        f"-A {SOCKET_CHAIN} {decided} {pinned(UNDECIDED_PIN)} -j NFQUEUE {_target(spec)}",
        *(
            f"-A {SOCKET_CHAIN} {decided} {pinned(name)} "
            f"-j CONNMARK --set-xmark {mark:#x}/{MARK_MASK:#x}"
            for mark, name in VERDICT_PINS.items()
        ),
        f"-A {SOCKET_CHAIN} -m mark --mark {none} -m connmark --mark {none} "
        f"-m conntrack --ctstate NEW {pinned(NOTE_SENDER_PIN)} -j RETURN",
    ]


def _target(spec: NetSpec) -> str:
    """The queue rule's target options: one queue, or the readers' queues, and the bypass."""
    bypass = " --queue-bypass" if spec.fail_open else ""
    if spec.queues > 1:
        return (
            f"--queue-balance {spec.queue}:{spec.queue + spec.queues - 1} --queue-cpu-fanout"
            + bypass
        )
    return f"--queue-num {spec.queue}{bypass}"


def _has(kind: str, mark: int) -> str:
    """The match of a packet (`mark`) or flow (`connmark`) carrying one of our marks, masked."""
    return f"-m {kind} --mark {mark:#x}/{MARK_MASK:#x}"


def _dns_lines(number: int, per_source: int = 0) -> list[str]:
    """The DNS chains (see `NetSpec`). Answers: a reply of a flow conntrack saw leave (our
    query) is queued as asked; any other UDP answer is marked unasked, rate-limited, and queued
    for counting only (a forged TCP answer cannot get past the handshake). Queries: in
    POSTROUTING, because a queued packet we accept leaves its table at once (NF_ACCEPT), so a
    recorder in mangle OUTPUT would skip the decision rules after it; appended, so the admin's
    own mangle POSTROUTING rules run first. A forwarded query (a container's: no socket here,
    so not counted by the nft limit of a user's queries) goes past `per_source` a second per
    source address first (`_limited_queue_lines`; 0: no limit)."""
    dns = f"NFQUEUE --queue-num {number} --queue-bypass"
    reply = "-m conntrack --ctstate ESTABLISHED --ctdir REPLY"
    unasked = f"{UNASKED_MARK:#x}/{MARK_MASK:#x}"
    queries = ["-p udp --dport 53", "-p tcp --dport 53 -m conntrack --ctstate ESTABLISHED"]
    limited = []
    if per_source > 0:
        limited = _limited_queue_lines(DNS_FORWARD_CHAIN, DNS_FORWARD_LIMIT, per_source, dns)
        forwarded = f"-m owner ! --socket-exists -j {DNS_FORWARD_CHAIN}"
        limited += [f"-A {DNS_QUERY_CHAIN} {match} {forwarded}" for match in queries]
    return [
        f":{DNS_CHAIN} - [0:0]",
        f"-A {DNS_CHAIN} -p udp --sport 53 {reply} -j {dns}",
        f"-A {DNS_CHAIN} -p tcp --sport 53 {reply} -j {dns}",
        f"-A {DNS_CHAIN} -p udp --sport 53 -m limit {UNASKED_LIMIT} -j MARK --set-xmark {unasked}",
        f"-A {DNS_CHAIN} -p udp --sport 53 -m mark --mark {unasked} -j {dns}",
        f"-I INPUT 1 -m comment --comment {COMMENT} -j {DNS_CHAIN}",
        f":{DNS_QUERY_CHAIN} - [0:0]",
        *limited,
        *(f"-A {DNS_QUERY_CHAIN} {match} -j {dns}" for match in queries),
        f"-A POSTROUTING -m comment --comment {COMMENT} -j {DNS_QUERY_CHAIN}",
    ]


def limit_script(per_user: int, queries_per_user: int = 0) -> str:
    """The nft script that sets the per-user limits of new flows and DNS queries (none when
    both are 0).

    iptables cannot count per uid (hashlimit keys on addresses and ports only); nft keys a
    dynamic set on the socket's uid. The table hooks OUTPUT just before mangle, where our queue
    rule is, so what one user starts past its rate is dropped before it can fill the queue that
    every user's new flows wait in: a user making 135k connects a second had the kernel drop
    1.3M packets for want of room, root's among them (bench.disturb window 11). System uids
    (resolvers, daemons, root) are not limited. What counts is what our rules queue: a TCP SYN
    (always queued, even on the ports of a decided flow: a flooder's connects reuse its own
    ports within a few seconds), and any other packet of a flow with no verdict yet (a one-way
    UDP flow stays conntrack NEW, but its datagrams after the first carry their verdict on the
    entry: a stream of 10k datagrams a second is one flow). A packet with no socket has no uid
    and is not counted. The first lines empty the table of an earlier run, whatever its
    state.

    DNS queries are counted apart, every packet to port 53 (what `_dns_lines` copies to the
    DNS queue, one for every user): a user's flood of queries on one decided flow is no new
    flow, and it filled that queue, so other users' queries waited or were lost."""
    lines = [f"table inet {LIMIT_TABLE}", f"delete table inet {LIMIT_TABLE}"]
    if per_user <= 0 and queries_per_user <= 0:
        return "\n".join(lines) + "\n"
    users = "type uid; size 65536; flags dynamic,timeout; timeout 60s;"
    lines.append(f"table inet {LIMIT_TABLE} {{")
    if per_user > 0:
        lines.append(f"  set users {{ {users} }}")
    if queries_per_user > 0:
        lines.append(f"  set queriers {{ {users} }}")
    lines += [
        "  chain output {",
        "    type filter hook output priority mangle - 10; policy accept;",
        f"    meta skuid <= {SYSTEM_UID_MAX} return",
    ]
    if queries_per_user > 0:
        lines.append("    meta l4proto { tcp, udp } th dport 53 jump query")
    if per_user > 0:
        lines += [
            "    ct state != new return",
            "    tcp flags & (fin | syn | rst | ack) == syn jump count",
            f"    ct mark and {MARK_MASK:#x} != 0 return",
            "    jump count",
        ]
    lines.append("  }")
    for chain, users_set, rate in (
        ("query", "queriers", queries_per_user),
        ("count", "users", per_user),
    ):
        if rate > 0:
            lines += [
                f"  chain {chain} {{",
                f"    update @{users_set} {{ meta skuid limit rate over {rate}/second burst "
                f"{rate} packets }} counter drop",
                "  }",
            ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _restore_text(tables: dict[str, list[str]]) -> str:
    out: list[str] = []
    for table, lines in tables.items():
        if lines:
            out += [f"*{table}", *lines, "COMMIT"]
    return "\n".join(out) + "\n"


def select_backend(preferred: str = "auto") -> Backend:
    """Probe backends in a fixed order; the first that works is used and logged once."""
    candidates: list[Backend] = [IptablesBackend()]
    errors: list[str] = []
    for backend in candidates:
        if preferred not in ("auto", backend.name):
            continue
        try:
            backend.probe()
        except BackendUnavailable as exc:
            errors.append(f"{backend.name}: {exc}")
            continue
        log.info("backend selected name=%s", backend.name)
        return backend
    raise BackendUnavailable("no firewall backend works: " + "; ".join(errors))
