"""Who sent a flow: the step between packet decoding and the rules (`packet` → `procs` → `decide`).

The kernel holds a new flow's first packet while we look, so the packet loop does only what is
bounded whatever a user does: one sock_diag exact request (uid and socket inode, ~4 µs; a
connecting TCP socket on the `bpf` path: one map read instead), a cached owner checked by one
readlink, a cached process checked by one read of its comm (both through its /proc directory,
kept open: `details.ProcFds`).
Everything else — a /proc/*/fd scan for an unseen socket, psutil details of an unseen process,
the sha256 of its executable — is a worker job (`worker`), and `begin` returns a `Lookup` whose
future the packet waits on; later packets of the flow join it. Jobs run in one line per user,
so a user with 300k fds slows their own lookups only. A lookup that takes longer than its
deadline is answered uid-only (`Lookup.late`; the firewall then decides as strictly as the owner
could have been), and a digest that is not ready in time is left unknown (`Lookup.hash_late`).

Two ways to the owner (`Source`, in the log and the prompt): with the BPF recorder (`bpf`, where
the kernel has cgroup BPF and BTF), the record kept under a connecting TCP flow itself, else
sock_diag's socket cookie, finds who created, connected or sent on the socket *when they did*,
so a process that exec'd, exited or passed the socket on since is still named right; without it
(`sock_diag`), the socket's holder is read from /proc now, and the proc connector (`execs`)
tells when that holder exec'd since the packet could have been sent: the firewall then decides
by the stricter of the old and the new identity.

It must never guess: a socket we cannot tie to a process yields `uid-only`, no socket at all
yields `kernel`, never somebody else's name. It must never call `psutil.net_connections()` (5 ms
per call: it reads every socket of the system).

Forwarded flows (issue 16: a container's or guest's, queued in FORWARD) start at
`begin_forwarded`: the source address and input interface name a network namespace
(`netns`, found and entered once in the worker), whose own sock_diag the loop asks as it asks
ours; the socket's holder is found among that namespace's processes (worker), and its container
from its cgroup (`containers`). A source that no namespace holds, or a socket that is not there,
is never guessed: the flow is "kernel" (no process, no container), so no container rule allows it.
A source no namespace holds may be a virtual machine's: its tap's holder (`guests`) names it.

Whole lookup, warm cache: ~14 µs median, 22 µs p99 (bench/bench_procs.py, 10k sockets in 500
processes, Python 3.11); a miss costs the loop the same plus a hand-off to the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snitch_common.errors import BackendUnavailable
from snitch_common.recent import Recent
from snitch_common.records import Attribution, Flow, Process, Proto, Source
from snitch_common.rules import DEFAULT_INTERPRETERS
from snitchd.containers import Names, container_of
from snitchd.procs.bpf import Owner, Recorder, RecorderMaps, build_object, cgroup2_root
from snitchd.procs.details import Details, ProcFds, Stat, exe_id, process_alive, read_stat
from snitchd.procs.execs import ExecWatch
from snitchd.procs.guests import Taps, bridge_port, holds_tap
from snitchd.procs.hashes import Hashes, Hashing
from snitchd.procs.netns import Netns, NetnsTable
from snitchd.procs.owners import NEED_SCAN, Owners
from snitchd.procs.sockdiag import Found, SockDiag
from snitchd.procs.worker import Job, Worker

if TYPE_CHECKING:
    from snitchd.socketmatch import QueuedSenders

__all__ = ["Attributor", "Limits", "Lookup", "process_alive", "start_attributor"]

log = logging.getLogger(__name__)

_PROCS_MAX = 4096
_PENDING_PER_UID = 256  # lookups one user may have waiting; beyond, answered late at once

# An exec this long before the packet was read may still have followed the connect (the packet
# waited in the queue or for the worker): the flow is then decided by the stricter identity.
_EXEC_WINDOW_NS = 250_000_000
_AROUND_MAX = 256

# pid, start ticks, comm, uid; or "bpf", pid, start, exec count, dev, ino, uid
_ProcKey = tuple[object, ...]
# a process, its name at read, its other names; what `_exec_checked` made of them
_Around = tuple[Process, str | None, tuple[str, ...], Process, tuple[Process, ...], str]


@dataclass(frozen=True, slots=True)
class Limits:
    """How long a held packet waits: `timeout` for the whole lookup, and for the sha256 of an
    executable larger than `max_hash_bytes`, `hash_wait` (both in seconds)."""

    timeout: float = 2.0
    max_hash_bytes: int = 256 << 20
    hash_wait: float = 1.0


@dataclass(slots=True, eq=False)
class Lookup:
    """A lookup handed to the worker. The packets of its flow wait for `future` (on the loop).

    `late`: the owner was not found in time and the answer is uid-only; `hash_late`: the process
    is known but its executable's digest was not ready in time (sha256 None). `also`: another
    identity of the same process (it exec'd around the connect) that the flow must not be
    decided more leniently than; `note` says why, for the log.
    """

    uid: int
    inode: int
    future: asyncio.Future[Process]
    started: float
    late: bool = False
    hash_late: bool = False
    given_up: bool = False  # read by the worker: stop scanning
    partial: Process | None = None
    key: _ProcKey | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    read_ns: int = 0
    owner: Owner | None = None
    also: tuple[Process, ...] = ()
    note: str | None = None
    counted: bool = False  # in its user's count of pending lookups
    fallback: Process | None = None  # the answer when it runs out of time (else uid-only)
    exe: ExeId | None = None  # what its process ran when it was described (`_Known`)


# The (device, inode) of a process's executable, taken before it is described.
ExeId = tuple[int, int]


@dataclass(frozen=True, slots=True)
class _Known:
    """A described process in the cache, and the executable it ran then (None: unreadable, or
    a BPF key, which holds it): a process keeps its pid, start time and, for an executable of
    the same name, its comm across an exec, which is all the cache key holds;
    `Attributor._known` checks it still runs what it was seen running."""

    proc: Process
    exe: ExeId | None
    at_ns: int  # when it was kept (CLOCK_MONOTONIC): an exec seen since makes it stale


class Attributor:
    """Answers `begin(flow)` on the loop, and `lookup(flow)` whole, from caches it bounds."""

    def __init__(
        self,
        *,
        hash_exe: bool = True,
        threads: int = 2,
        interpreters: tuple[str, ...] = DEFAULT_INTERPRETERS,
        recorder: Recorder | None = None,
        execs: ExecWatch | None = None,
        names: Names | None = None,
    ) -> None:
        """`recorder`: the BPF recorder (the `bpf` path); `execs`: the proc connector, for the
        `sock_diag` path's exec-after-connect check. Both are closed by `close`."""
        self._hash_exe = hash_exe
        self.recorder = recorder
        self.execs = execs
        self.path = "bpf" if recorder is not None else "proc"
        if recorder is not None:
            self.path = f"bpf (cgroup {recorder.cgroup})"
        self._diag = SockDiag()
        # The socket match's notes of which socket each queued datagram came from (None:
        # without the match, a datagram is named by its tuple alone).
        self.senders: QueuedSenders | None = None
        self._owners = Owners()
        self._details = Details(interpreters)
        self._kept = ProcFds()  # the loop's own: begin and begin_forwarded only
        self.hashes = Hashes()  # public for the queue readers, which share their digests
        self._worker = Worker(threads)
        self._lock = threading.Lock()
        self._procs: Recent[_ProcKey, _Known] = Recent(_PROCS_MAX)
        self._pending: dict[tuple[int, int], Lookup] = {}
        self._per_uid: dict[int, int] = {}
        self._names = names
        self._netns: NetnsTable | None = None  # made at the first forwarded flow
        self._taps = Taps()
        # (input interface, source address, MAC) → a guest's process, its tap holder's (pid, fd)
        self._guests: dict[tuple[int, bytes, bytes], tuple[Process, int, int, str]] = {}
        # pid → the last identities `_exec_checked` gave a process that exec'd around its
        # connect (process, name at read, other names, chosen, also, note): a program's flows
        # in the window after it exec'd share them (and its one log line), the loop's own.
        self._around: dict[int, _Around] = {}

    def close(self) -> None:
        self._worker.close()
        self.hashes.close()
        self._diag.close()
        self._kept.close()
        if self._netns is not None:
            self._netns.close()
        if self.recorder is not None:
            self.recorder.close()
        if self.execs is not None:
            self.execs.close()

    def forget(self) -> None:
        """Drop every cache (the benchmark's cold runs)."""
        self._owners.clear()
        self.hashes.clear()
        with self._lock:
            self._procs.clear()

    # -- on the loop ----------------------------------------------------------------------------
    def begin(self, flow: Flow, limits: Limits, *, noted: bool = False) -> Process | Lookup:
        """Who sent `flow`, if the loop can tell at once; else the `Lookup` to wait for. Raises
        OSError only when sock_diag itself fails (the packet loop then applies the fail mode):
        a missing socket is an answer, not an error. `noted`: the packet came from the flow
        queue, whose rules noted its socket just before (`_sender`); elsewhere (the DNS
        queue's copy of a query, an open flow cut) the flow's note may be another socket's,
        from long before, on the same ports."""
        read_ns = time.monotonic_ns()
        if self.recorder is not None and flow.proto is Proto.TCP:
            # A connecting socket's record under the flow itself: no sock_diag request.
            connected = self.recorder.find_connected(flow)
            if connected is not None:
                return self._begin_recorded(*connected, limits)
        found = self._diag.find(flow)
        senders = self.senders
        if noted and found is not None and senders is not None and flow.proto is not Proto.TCP:
            found = self._sender(senders, flow, found)
        if found is None:
            if self.recorder is not None and flow.proto is not Proto.TCP:
                gone = self.recorder.find_released(flow)
                if gone is not None:  # sent its datagram and exited (or closed the socket)
                    return self._begin_recorded(gone.uid, 0, gone, limits)
            return Process.kernel()
        uid, inode, cookie = found
        if self.recorder is not None and cookie:
            owner = self.recorder.find(cookie, flow)
            if owner is not None:
                return self._begin_recorded(uid, inode, owner, limits)
        if inode == 0:  # closed by its process, or an fd-less kernel socket
            return Process.uid_only(uid)
        pending = self._pending.get((uid, inode))
        if pending is not None:
            return pending
        kept = self._kept
        pid = self._owners.find_now(inode, uid, kept.holds)
        if pid is None:
            return Process.uid_only(uid)
        stat = None
        if pid != NEED_SCAN:
            # The process `holds` saw with the socket (its /proc directory kept open), not
            # whichever has its pid by now: its start ticks and its comm now (an exec changes it).
            seen = kept.identity(pid)
            if seen is None:
                return Process.uid_only(uid)
            proc = self._known((pid, seen[0], seen[1], uid), pid, self._kept.exe_id)
            if proc is not None:
                return self._exec_checked(proc, read_ns)
            stat = kept.read(pid)  # a first sight: the whole stat, for the worker
            if stat is None:
                return Process.uid_only(uid)
        lookup = self._hand_off(uid, inode, None if pid == NEED_SCAN else pid, stat, limits)
        lookup.read_ns = read_ns
        return lookup

    def _sender(self, senders: QueuedSenders, flow: Flow, found: Found) -> Found:
        """The socket that sent a queued datagram, where `found` (sock_diag's, by the flow's
        tuple) may be another: two sockets can share a port (SO_REUSEADDR), and the lookup
        answers with the better match, a connected socket. A user's socket connected to where
        a service's unconnected one sends (mDNS) was named for each of the service's datagrams,
        and each was dropped (its repeat came from another uid's socket, `socketmatch`). The
        socket match notes the socket of the last datagram queued on the flow: when sock_diag
        named another, the sender is the flow's unconnected socket if it is the one noted, else
        it is known by its uid alone (the BPF recorder may still know it by its cookie)."""
        sender = senders.find(flow)
        if sender is None or sender.cookie == found[2]:
            return found
        unconnected = self._diag.find_unconnected(flow)
        if unconnected is not None and unconnected[2] == sender.cookie:
            return unconnected
        return sender.uid, 0, sender.cookie

    def begin_forwarded(
        self, flow: Flow, ifindex: int, limits: Limits, mac: bytes = b""
    ) -> Process | Lookup:
        """Who sent `flow`, forwarded to us from interface `ifindex` (issue 16): as `begin`,
        but in the network namespace the source address lives in; failing that, a virtual
        machine behind a tap (`guests`), by the frame's source `mac`. Never raises for a
        namespace that is gone: no socket found is an answer ("kernel")."""
        table = self._netns
        if table is None:
            table = self._netns = NetnsTable()
        ns = table.cached(ifindex, flow.src)
        held = None  # a namespace read through /proc: asked in the worker only
        stale = False  # the socket is not in a namespace that has died: the address moved
        if ns is not None and ns.on_loop:
            found = ns.find(flow)
            if found is not None:
                return self._begin_in(ns, found, limits)
            stale = not ns.alive()
        elif ns is not None:
            held = ns
        guest = self._guests.get((ifindex, flow.src.packed, mac[:6])) if mac else None
        if guest is not None and holds_tap(guest[1], guest[2], guest[3]):
            return guest[0]
        if held is None and not stale and table.looked_lately(ifindex, flow.src, time.monotonic()):
            return Process.kernel()
        # Unknown source, or a socket not where it was: the address may be a new namespace's.
        loop = asyncio.get_running_loop()
        lookup = Lookup(-1, 0, loop.create_future(), time.monotonic())
        lookup.fallback = Process.kernel()
        job = self._resolve_forwarded(lookup, table, flow, ifindex, held, mac)
        self._submit_lookup(lookup, job, limits)
        return lookup

    def _begin_in(self, ns: Netns, found: tuple[int, int, int], limits: Limits) -> Process | Lookup:
        """The socket was found in the container's namespace: its holder as on the local path
        (the owners cache: the holder's pid and fd checked by one readlink; a known process by
        one /proc stat read), else a worker job."""
        uid, inode, _cookie = found
        if inode == 0:
            return Process.kernel()  # closed, or a kernel socket of the container: nobody to name
        pending = self._pending.get((uid, inode))
        if pending is not None:
            return pending
        pid = self._owners.find_now(inode, uid, self._kept.holds)
        if pid is None:
            return Process.kernel()
        if pid != NEED_SCAN:
            seen = self._kept.identity(pid)
            if seen is None:
                return Process.kernel()
            proc = self._known(("netns", pid, seen[0], seen[1], uid), pid, self._kept.exe_id)
            if proc is not None:
                return proc
        loop = asyncio.get_running_loop()
        lookup = Lookup(uid, inode, loop.create_future(), time.monotonic())
        lookup.fallback = Process.kernel()
        self._pending[(uid, inode)] = lookup
        held = None if pid == NEED_SCAN else pid
        self._submit_lookup(lookup, self._holder_in(lookup, ns.inode, uid, inode, held), limits)
        return lookup

    def _submit_lookup(self, lookup: Lookup, job: Job, limits: Limits) -> None:
        """Hand a forwarded flow's job to the worker, in its socket owner's line (a namespace
        yet to be found: the line of uid -1, shared by every such source)."""
        uid = lookup.uid
        if self._per_uid.get(uid, 0) >= _PENDING_PER_UID:
            lookup.late = True
            self._finish(lookup, lookup.fallback or Process.kernel())
            return
        loop = asyncio.get_running_loop()
        self._per_uid[uid] = self._per_uid.get(uid, 0) + 1
        lookup.counted = True
        lookup.timers.append(loop.call_later(limits.timeout, self._give_up, lookup))

        def done(result: Any, error: BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._resolved, lookup, limits, result, error)

        self._worker.submit(("forwarded", uid), job, done)

    def _resolve_forwarded(
        self,
        lookup: Lookup,
        table: NetnsTable,
        flow: Flow,
        ifindex: int,
        ns: Netns | None,
        mac: bytes = b"",
    ) -> Job:
        """Worker: the namespace holding the source (`ns` when already known), then the socket
        there, then its holder; with no namespace holding it, a guest behind a tap."""
        yield
        found = ns.find(flow) if ns is not None and ns.readable() else None
        if (
            found is None
            and ns is not None
            and ns.readable()
            and table.looked_lately(ifindex, flow.src, time.monotonic())
        ):
            return Process.kernel(), None  # (a spoofed-source flood costs no scans here either)
        if found is None:
            ns = yield from table.resolve(ifindex, flow.src, lambda: lookup.given_up)
            found = ns.find(flow) if ns is not None else None
        if ns is None and mac:
            guest = yield from self._guest(lookup, ifindex, flow, mac[:6])
            return guest, None
        if ns is None or found is None or found[1] == 0:
            return Process.kernel(), None
        uid, inode, _cookie = found
        pid = self._owners.find_now(inode, uid)
        if pid is None:
            return Process.kernel(), None
        held = None if pid == NEED_SCAN else pid
        proc = yield from self._holder_in(lookup, ns.inode, uid, inode, held)
        return proc

    def _guest(self, lookup: Lookup, ifindex: int, flow: Flow, mac: bytes) -> Job:
        """Worker: the hypervisor process holding the tap a frame from `mac` came in on (the
        input interface itself, or the bridge port the MAC was learnt on), and the machine its
        cgroup names. A tap held by anything that is no container or VM (a VPN's tap) names
        nobody: its relayed traffic is not that program's own."""
        try:
            ifname = socket.if_indextoname(ifindex)
        except OSError:
            return Process.kernel()
        tap = bridge_port(ifname, mac) or ifname
        held = yield from self._taps.holder(tap, lambda: lookup.given_up)
        if held is None:
            return Process.kernel()
        pid, fd = held
        stat = read_stat(pid)
        container = container_of(pid, self._names)
        if stat is None or container is None:
            return Process.kernel()
        proc = self._details.describe(pid, _uid_of(pid), stat)
        if proc is None:
            return Process.kernel()
        proc = dataclasses.replace(proc, container=dataclasses.replace(container, pid=None))
        with self._lock:
            self._guests[(ifindex, flow.src.packed, mac)] = (proc, pid, fd, tap)
            while len(self._guests) > _PROCS_MAX:
                del self._guests[next(iter(self._guests))]
        return proc

    def _holder_in(
        self, lookup: Lookup, ns_inode: int, uid: int, inode: int, pid: int | None
    ) -> Job:
        """Worker: the process holding socket `inode` (`pid` if known, else looked for among
        namespace `ns_inode`'s processes), and its container. Its executable is not hashed (it
        is the container's file; no app rule matches it). Not found: "kernel", not uid-only (a
        uid inside a container names no one)."""
        yield
        assert self._netns is not None
        if pid is None:
            held = yield from self._netns.owner(ns_inode, inode, lambda: lookup.given_up)
            if held is None:
                return Process.kernel(), None
            pid = held[0]
            self._owners.learn(inode, pid, held[1], uid)
        stat = read_stat(pid)
        if stat is None:
            return Process.kernel(), None
        key = ("netns", pid, stat[2], stat[3], uid)
        known = self._known(key, pid, exe_id)
        if known is not None:
            return known, None
        exe = exe_id(pid)
        proc = self._details.describe(pid, uid, stat)
        if proc is None:
            return Process.kernel(), None
        container = container_of(pid, self._names)
        if container is not None:
            proc = dataclasses.replace(proc, container=container)
        self._remember(key, proc, exe)
        return proc, None

    def _begin_recorded(
        self, uid: int, inode: int, owner: Owner, limits: Limits
    ) -> Process | Lookup:
        """The recorder saw who connected: the process is that pid, start time and executable,
        whatever it runs now. Known ones answer from memory, with no /proc read at all."""
        key = ("bpf", owner.tgid, owner.start_ticks, owner.exec_id, owner.dev, owner.ino, uid)
        with self._lock:
            known = self._procs.get(key)
        if known is not None:  # the exec count is in the key: an exec makes another key
            return known.proc
        pending = self._pending.get((uid, inode)) if inode else None
        if pending is not None:
            return pending
        return self._hand_off(uid, inode, owner.tgid, None, limits, owner, key)

    def _exec_checked(self, proc: Process, read_ns: int) -> Process | Lookup:
        """A process found on the sock_diag path, checked against the proc connector. One that
        exec'd after the packet was read is named for what it ran then (it connected as that);
        every identity it had in the `_EXEC_WINDOW_NS` before goes with it (`Lookup.also`), for
        the firewall to apply the stricter. Such a result is a done `Lookup`."""
        if self.execs is None or proc.pid is None:
            return proc
        execs = self.execs.since(proc.pid, read_ns - _EXEC_WINDOW_NS)
        if not execs:
            return proc
        after = [ex.before for ex in execs if ex.when_ns >= read_ns and ex.before]
        at_read = after[0] if after else proc.exe
        names = [ex.before for ex in execs if ex.before] + [proc.exe]
        others = tuple(dict.fromkeys(n for n in names if n and n != at_read))
        if not others:
            return proc
        known = self._around.get(proc.pid)
        if known is not None and known[0] is proc and known[1] == at_read and known[2] == others:
            chosen, also, note = known[3], known[4], known[5]  # its flows until the window ends
        else:
            chosen = proc
            if at_read != proc.exe:
                chosen = dataclasses.replace(proc, exe=at_read, cmdline=(), sha256=None)
            also = tuple(
                proc
                if exe == proc.exe
                else dataclasses.replace(proc, exe=exe, cmdline=(), sha256=None)
                for exe in others
            )
            if chosen is not proc:
                note = f"connected as {at_read}, then exec'd {proc.exe}"
            else:
                note = f"exec'd from {', '.join(others)} around its connect"
            log.info(
                "exec around connect pid=%s at_read=%s others=%s: the stricter applies",
                proc.pid,
                at_read,
                ",".join(others),
            )
            self._around[proc.pid] = (proc, at_read, others, chosen, also, note)
            while len(self._around) > _AROUND_MAX:
                del self._around[next(iter(self._around))]
        loop = asyncio.get_running_loop()
        lookup = Lookup(proc.uid or 0, 0, loop.create_future(), time.monotonic(), read_ns=read_ns)
        lookup.also, lookup.note = also, note
        lookup.future.set_result(chosen)
        return lookup

    def _hand_off(
        self,
        uid: int,
        inode: int,
        pid: int | None,
        stat: Stat | None,
        limits: Limits,
        owner: Owner | None = None,
        key: _ProcKey | None = None,
    ) -> Lookup:
        loop = asyncio.get_running_loop()
        lookup = Lookup(uid, inode, loop.create_future(), time.monotonic(), owner=owner, key=key)
        if self._per_uid.get(uid, 0) >= _PENDING_PER_UID:
            log.warning("too many lookups pending uid=%d: answered uid-only", uid)
            lookup.late = True
            lookup.future.set_result(Process.uid_only(uid))
            return lookup
        if inode:  # a released socket's record (inode 0) is nobody else's to join
            self._pending[(uid, inode)] = lookup
        self._per_uid[uid] = self._per_uid.get(uid, 0) + 1
        lookup.counted = True
        lookup.timers.append(loop.call_later(limits.timeout, self._give_up, lookup))

        def done(result: Any, error: BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: snitchd is stopping
                loop.call_soon_threadsafe(self._resolved, lookup, limits, result, error)

        job = self._resolve(lookup, pid, stat) if owner is None else self._recorded(lookup, owner)
        self._worker.submit(uid, job, done)
        return lookup

    def _resolved(
        self, lookup: Lookup, limits: Limits, result: Any, error: BaseException | None
    ) -> None:
        if error is not None:
            log.error("attribution failed uid=%d inode=%d: %r", lookup.uid, lookup.inode, error)
        if lookup.future.done():
            return
        if result is None:
            self._finish(lookup, Process.uid_only(lookup.uid))
            return
        proc, hashing = result
        if lookup.owner is None and lookup.read_ns and proc.pid is not None:
            checked = self._exec_checked(proc, lookup.read_ns)
            if isinstance(checked, Lookup):  # exec'd around the connect: its two identities
                lookup.also, lookup.note = checked.also, checked.note
                if checked.future.result() is not proc:  # the old image connected
                    proc, hashing = checked.future.result(), None  # (that digest is the new one's)
        if hashing is None:
            self._finish(lookup, proc)
            return
        lookup.partial = proc
        loop = asyncio.get_running_loop()
        if hashing.size > limits.max_hash_bytes:
            wait = max(0.0, lookup.started + limits.hash_wait - time.monotonic())
            lookup.timers.append(loop.call_later(wait, self._give_up, lookup))

        def hashed(_: object) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._hashed, lookup, hashing)

        hashing.future.add_done_callback(hashed)

    def _hashed(self, lookup: Lookup, hashing: Hashing) -> None:
        assert lookup.partial is not None and lookup.key is not None
        proc = dataclasses.replace(lookup.partial, sha256=hashing.future.result())
        self._remember(lookup.key, proc, lookup.exe)
        if not lookup.future.done():
            self._finish(lookup, proc)

    def _give_up(self, lookup: Lookup) -> None:
        if lookup.future.done():
            return
        lookup.given_up = True
        if lookup.partial is not None:
            lookup.hash_late = True
            self._finish(lookup, lookup.partial)
        else:
            lookup.late = True
            self._finish(lookup, lookup.fallback or Process.uid_only(lookup.uid))
        log.info(
            "lookup gave up uid=%d inode=%d after %.2f s: %s",
            lookup.uid,
            lookup.inode,
            time.monotonic() - lookup.started,
            "digest unknown" if lookup.hash_late else "uid-only",
        )

    def _finish(self, lookup: Lookup, proc: Process) -> None:
        for timer in lookup.timers:
            timer.cancel()
        if self._pending.get((lookup.uid, lookup.inode)) is lookup:
            del self._pending[(lookup.uid, lookup.inode)]
        if lookup.counted:
            lookup.counted = False
            left = self._per_uid.get(lookup.uid, 1) - 1
            if left > 0:
                self._per_uid[lookup.uid] = left
            else:
                self._per_uid.pop(lookup.uid, None)
        lookup.future.set_result(proc)

    # -- in the worker --------------------------------------------------------------------------
    def _resolve(self, lookup: Lookup, pid: int | None, stat: Stat | None) -> Job:
        """Owner, then details, then the digest (or the hash under way, for the loop to wait on).
        Returns None (uid-only) or (Process, Hashing | None)."""
        if lookup.given_up:
            return None
        if pid is None:
            pid = yield from self._owners.scan(lookup.inode, lookup.uid, lambda: lookup.given_up)
            if pid is None or lookup.given_up:
                return None
            stat = read_stat(pid)
        if stat is None:
            return None
        lookup.key = key = (pid, stat[2], stat[3], lookup.uid)
        known = self._known(key, pid, exe_id)
        if known is not None:
            return known, None
        lookup.exe = exe_id(pid)
        proc = self._details.describe(pid, lookup.uid, stat)
        if proc is None:
            return None
        if not self._hash_exe:
            self._remember(key, proc, lookup.exe)
            return proc, None
        got = self.hashes.start(pid, lookup.uid, self._submit)
        if isinstance(got, Hashing):
            return proc, got
        proc = dataclasses.replace(proc, sha256=got)
        if got is not None:  # unreadable, or this user's hashes queue is full: ask again later
            self._remember(key, proc, lookup.exe)
        return proc, None

    def _recorded(self, lookup: Lookup, owner: Owner) -> Job:
        """The BPF path's worker job: the process as it connected. While it still runs the
        executable it connected with, its details come from /proc (cmdline, parents); once it
        exec'd or exited, from the record (the path the recorder walked, checked by stat)."""
        yield  # a generator like every job; the first slice starts here
        if lookup.given_up or self.recorder is None:
            return None
        pid, uid = owner.tgid, lookup.uid
        want = (owner.dev, owner.ino)
        stat = read_stat(pid)
        if stat is not None and stat[2] != owner.start_ticks:
            stat = None  # the pid was reused: nothing of it is ours
        proc = None
        if stat is not None and exe_id(pid) == want:
            proc = self._details.describe(pid, uid, stat, Source.BPF)
            if proc is not None and exe_id(pid) != want:
                proc = None  # exec'd while we read it
        path = None
        if proc is None:
            path = self.recorder.exe_path(owner)
            proc = self._details.recorded(pid, uid, path, owner.start_ticks, stat)
            if stat is not None and path is not None:
                log.info(
                    "flow attributed as connected pid=%d exe=%s (it exec'd since: %s)",
                    pid,
                    path,
                    _readlink(f"/proc/{pid}/exe"),
                )
                lookup.note = f"connected as {path}, exec'd since"
        assert lookup.key is not None
        if not self._hash_exe or proc.attribution is not Attribution.PROCESS:
            self._remember(lookup.key, proc, None)
            return proc, None
        got = self.hashes.start(pid, uid, self._submit, want, path)
        if isinstance(got, Hashing):
            return proc, got
        proc = dataclasses.replace(proc, sha256=got)
        if got is not None:
            self._remember(lookup.key, proc, None)
        return proc, None

    def _submit(self, line: Hashable, job: Job, done: Any) -> None:
        self._worker.submit(line, job, done)

    def _remember(self, key: _ProcKey, proc: Process, exe: ExeId | None) -> None:
        """Keep `proc` under `key`; `exe` None for a BPF key (its executable is in it)."""
        with self._lock:
            self._procs.put(key, _Known(proc, exe, time.monotonic_ns()))

    def _known(
        self, key: _ProcKey, pid: int, exe_now: Callable[[int], ExeId | None]
    ) -> Process | None:
        """The process cached under `key` if it still runs what it was described running: one
        stat of its executable (`exe_now`: the loop's kept directory, or the path in a worker)
        says it is the same file. Otherwise the entry is dropped and the process described
        afresh: one that exec'd a program of the same name before connecting was named by its
        old image (issue 21's test_an_exec_of_a_same_named_program_is_judged_as_itself). The
        same file exec'd again is told by the exec watch, whose event can reach us after the
        packet (a loaded machine: the old description then serves that flow); an exec of
        another file has always replaced the executable by the time the packet is read."""
        with self._lock:
            known = self._procs.get(key)
        if known is None:
            return None
        # The same file exec'd again (an interpreter with another script, or other variables)
        # keeps the pid, the start time and the executable: the exec watch tells it.
        execs = self.execs
        if (
            known.exe is not None
            and exe_now(pid) == known.exe
            and (execs is None or not execs.since(pid, known.at_ns))
        ):
            return known.proc
        with self._lock:
            self._procs.pop(key, None)
        return None

    # -- whole, in the caller's thread ----------------------------------------------------------
    def lookup(self, flow: Flow) -> Process:
        """Who sent `flow`, the whole lookup in this thread: for tools, tests and benchmarks,
        never for the packet loop (it may scan /proc and hash for as long as that takes)."""
        found = self._diag.find(flow)
        if found is None:
            return Process.kernel()
        uid, inode, _cookie = found
        if inode == 0:
            return Process.uid_only(uid)
        pid = self._owners.find_now(inode, uid)
        if pid == NEED_SCAN:
            pid = _run(self._owners.scan(inode, uid, lambda: False))
        if pid is None:
            return Process.uid_only(uid)
        stat = read_stat(pid)
        if stat is None:
            return Process.uid_only(uid)
        key = (pid, stat[2], stat[3], uid)
        known = self._known(key, pid, exe_id)
        if known is not None:
            return known
        exe = exe_id(pid)
        proc = self._details.describe(pid, uid, stat)
        if proc is None:
            return Process.uid_only(uid)
        if self._hash_exe:
            proc = dataclasses.replace(proc, sha256=self.hashes.digest_now(pid))
        self._remember(key, proc, exe)
        return proc


def start_attributor(
    mode: str,
    cgroup: str,
    state_dir: Path,
    interpreters: tuple[str, ...] = DEFAULT_INTERPRETERS,
    names: Names | None = None,
    shared: RecorderMaps | None = None,
) -> Attributor:
    """The attributor the config asks for. `mode` "bpf": the BPF recorder on `cgroup` ("" is the
    cgroup v2 root), or, where it cannot load, the proc path with a warning saying why; "proc":
    sock_diag + /proc with the proc connector. `Attributor.path` says which one runs. `shared`:
    a queue reader's, the maps of snitchd's own recorder (nothing more is attached)."""
    recorder = None
    why = "attribution = proc in the config"
    if mode == "bpf" and shared is not None:
        recorder = Recorder(shared.cgroup, shared)
    elif mode == "bpf":
        try:
            where = cgroup or cgroup2_root()
            if where is None:
                raise BackendUnavailable("no cgroup v2 hierarchy is mounted (mount -t cgroup2)")
            recorder = Recorder(where, build_object(state_dir))
        except BackendUnavailable as exc:
            why = str(exc)
            log.warning("BPF attribution unavailable, using sock_diag and /proc: %s", exc)
    execs = None
    if recorder is None:
        try:
            execs = ExecWatch()
        except BackendUnavailable as exc:
            log.warning("%s", exc)
    attributor = Attributor(interpreters=interpreters, recorder=recorder, execs=execs, names=names)
    if recorder is None:
        attributor.path = f"proc ({why}; exec watch {'on' if execs else 'off'})"
    log.info("attribution path=%s", attributor.path)
    return attributor


def _uid_of(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def _run(job: Job) -> Any:
    try:
        while True:
            next(job)
    except StopIteration as stop:
        return stop.value
