"""The kernel's check that a datagram of a decided flow comes from a socket snitch decided for.

A verdict is kept on the flow's conntrack entry, a tuple (addresses, ports), not a socket. A TCP
SYN is always decided again, but a datagram has no first packet: a socket bound to the local
port of a UDP flow still in conntrack, sending to the same place, passed on that flow's verdict
(a program took an allowed program's verdict once that program had closed its socket;
`/proc/net/udp` shows everyone the ports), or failed on it (a user sending denied datagrams from
many ports to one place, say the DNS server, made those ports fail for everyone). So every
non-TCP packet of a decided flow goes through `bpf/sockets.bpf.c`, a socket filter iptables runs
(the `bpf` match, `netfilter.SOCKET_CHAIN`), which sends it to the queue unless snitchd gave its
socket a verdict for that destination. It learns the verdicts from the packets themselves:
`firewall` gives each one as a repeat with its mark on the packet. It records which verdict, and
three more programs answer "this socket was given this verdict": two live sockets can share one
flow (SO_REUSEADDR on both), and each datagram is then judged by its own socket's verdict, not
by the entry's last one (a user's denied socket joining a service's port stopped the service's
datagrams there).

snitchd names a datagram's sender by its tuple, and a shared port makes that ambiguous: the
kernel's lookup answers with the better match (a connected socket), so a user's unconnected
socket on a service's port was named as the service. So `NamedSockets` writes, just before each
verdict for a datagram, the uid of the socket snitchd named under the flow's tuple, and the
verdict's repeat is dropped when the socket that sent it has another uid. Alone, that made a
user's socket connected to where a service's unconnected one sends (mDNS) the name of every
datagram of the service's, each then dropped. So the programs note the socket (cookie, uid)
of each datagram they let into the queue under its flow, and `QueuedSenders` reads it back
for the attributor, which names that socket (`procs.Attributor`).

Another program, before the queue rule, drops what a user (uid above 999) would send to the
queue past `new_flows_per_user` a second: the nft limit of new flows counts no packet of a
decided flow, so a loop binding a decided flow's port, sending one datagram and closing would
otherwise fill the queue everyone's new flows wait in. Both drops are counted (`dropped`).

iptables takes a program by a path on a BPF file system (`--object-pinned`), so they are pinned
in /sys/fs/bpf/snitch/<network namespace inode>/ (one snitchd per namespace), mounting the BPF
file system there if nothing is (systemd mounts it at boot), and unpinned at stop: the rules
hold the programs for as long as they are in. Without it (no BPF, no xt_bpf: `netfilter`
gives that rule a step of its own) snitchd runs as before, with a warning: verdicts per tuple.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from snitch_common.errors import BackendUnavailable
from snitch_common.records import Flow
from snitchd.netfilter import (
    NOTE_SENDER_PIN,
    OTHER_SOCKET_PIN,
    OVER_LIMIT_PIN,
    UNDECIDED_PIN,
    VERDICT_PINS,
)
from snitchd.procs.bpf import (
    SOCKETS_SOURCE,
    LibBpf,
    build_object,
    libbpf_failed,
    mount_points,
)
from snitchd.procs.sockdiag import datagram_protocol

__all__ = [
    "NAMED_PIN",
    "NO_UID",
    "PIN_ROOT",
    "PROGRAMS",
    "QUEUED_PIN",
    "NamedSockets",
    "QueuedSender",
    "QueuedSenders",
    "SocketDrops",
    "SocketMatch",
    "open_named",
    "open_senders",
]

log = logging.getLogger(__name__)

PIN_ROOT = Path("/sys/fs/bpf")
# The programs (sockets.bpf.c), pinned by these names: the queue rule's match, the drop rule's
# before it (a user past its limit), and the socket's verdict is this one.
PROGRAMS = {
    OTHER_SOCKET_PIN: b"snitch_other_socket",
    UNDECIDED_PIN: b"snitch_undecided_socket",
    OVER_LIMIT_PIN: b"snitch_over_limit",
    NOTE_SENDER_PIN: b"snitch_note_sender",
    **{name: f"snitch_socket_{name}".encode() for name in VERDICT_PINS.values()},
}
NAMED_PIN = "named"  # the map of the uid snitchd named per datagram flow, for the readers too
QUEUED_PIN = "queued"  # the map of the socket that sent a datagram flow's last queued packet
FAST_PIN = "fast"  # the fast path's socket filter (the recorder's, `fastpath`), pinned here too
_LIMIT = struct.Struct("=QQ")  # struct limit
_FLOW = struct.Struct("=16s16s2s2sB3x")  # struct flow_key: ports in network order
_SENDER = struct.Struct("=QI4x")  # struct sender
NO_UID = 0xFFFFFFFF  # `NamedSockets`: no socket named (the kernel's packet), no check


@dataclass(frozen=True, slots=True)
class SocketDrops:
    """Datagrams the match's rules dropped (sockets.bpf.c's map `dropped`, in its order)."""

    over_limit: int  # of users past `new_flows_per_user`, on their way to the queue
    other_socket: int  # verdicts given for another uid's socket than the one that sent them


class SocketMatch:
    """The loaded programs, pinned in `pins` (a directory) for iptables; `close` unpins them."""

    def __init__(self, state_dir: Path, per_user: int, root: Path = PIN_ROOT) -> None:
        """Build (once), load, set the limit (`limit`) and pin; raises BackendUnavailable
        saying what is missing."""
        obj_path = build_object(state_dir, SOCKETS_SOURCE)
        _mount_bpffs(root)
        self._lib = LibBpf()
        self.pins = root / "snitch" / str(os.stat("/proc/self/ns/net").st_ino)
        obj = self._lib.open_file(str(obj_path).encode(), None)
        if not obj:
            raise _failed(f"open {obj_path}")
        self._obj: int | None = obj
        try:
            if self._lib.load(obj) != 0:
                raise _failed(f"load {obj_path}")
            self._limits, self._dropped, named, queued = (
                self._map(obj, obj_path, name)
                for name in ("limits", "dropped", NAMED_PIN, QUEUED_PIN)
            )
            self.limit(per_user)
            self.pins.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.pin(named, NAMED_PIN)
            self.pin(queued, QUEUED_PIN)
            for name, program in PROGRAMS.items():
                prog = self._lib.find_program(obj, program)
                if not prog:
                    raise BackendUnavailable(f"{obj_path} has no program {program.decode()}")
                self.pin(self._lib.program_fd(prog), name)
        except BaseException:
            self.close()
            raise
        log.info("socket match loaded pins=%s", self.pins)

    def _map(self, obj: int, obj_path: Path, name: str) -> int:
        fd = self._lib.map_fd(obj, name.encode())
        if fd < 0:
            raise BackendUnavailable(f"{obj_path} has no map {name}")
        return int(fd)

    def pin(self, fd: int, name: str) -> None:
        pin = self.pins / name
        pin.unlink(missing_ok=True)  # an earlier run's, left by a crash
        if self._lib.pin(fd, str(pin).encode()) != 0:
            raise _failed(f"pin {name} at {pin}")

    def limit(self, per_user: int) -> None:
        """Datagrams of undecided sockets one user may send to the queue a second (burst as
        many); 0: no limit. The same figure as the nft limit of new flows."""
        interval = 1_000_000_000 // per_user if per_user else 0
        value = ctypes.create_string_buffer(_LIMIT.pack(interval, interval * per_user))
        key = ctypes.c_uint32(0)
        if self._lib.update(self._limits, ctypes.byref(key), value, 0) != 0:
            raise _failed("set the per-user limit of the socket match")

    def dropped(self) -> SocketDrops:
        """What the match's drop rules dropped since it loaded (zeros once closed)."""
        counts = [0, 0]
        for why in range(len(counts)) if self._obj is not None else ():
            key, value = ctypes.c_uint32(why), ctypes.c_uint64()
            if self._lib.lookup(self._dropped, ctypes.byref(key), ctypes.byref(value)) == 0:
                counts[why] = value.value
        return SocketDrops(*counts)

    def close(self) -> None:
        """Unpin and free (idempotent): the rules that use them keep the programs until they
        go."""
        if self._obj is None:
            return
        for name in (*PROGRAMS, NAMED_PIN, QUEUED_PIN, FAST_PIN):
            (self.pins / name).unlink(missing_ok=True)
        for empty in (self.pins, self.pins.parent):  # another namespace's snitchd may pin there
            with contextlib.suppress(OSError):
                empty.rmdir()
        self._lib.close(self._obj)
        self._obj = None


class _FlowMap:
    """A pinned map keyed by a datagram's flow (`struct flow_key`), opened in this process."""

    def __init__(self, pin: Path) -> None:
        self.pin = pin
        self._lib = LibBpf()
        self._fd = self._lib.obj_get(str(pin).encode())
        if self._fd < 0:
            raise _failed(f"open {pin}")
        self._key = ctypes.create_string_buffer(_FLOW.size)

    def _key_of(self, flow: Flow) -> bool:
        """Pack `flow` into the key; False for a flow of neither UDP nor UDP-Lite: only
        datagrams share a tuple."""
        protocol = datagram_protocol(flow)
        if protocol is None:
            return False
        _FLOW.pack_into(
            self._key, 0, flow.src.packed, flow.dst.packed,
            flow.sport.to_bytes(2, "big"), flow.dport.to_bytes(2, "big"), protocol,
        )  # fmt: skip
        return True


class NamedSockets(_FlowMap):
    """The writer of the `named` map (pinned at `pin`), one per process that gives verdicts."""

    def __init__(self, pin: Path) -> None:
        super().__init__(pin)
        self._uid = ctypes.c_uint32()

    def name(self, flow: Flow, uid: int | None) -> None:
        """Say that the verdict about to be given for `flow` is for a socket of `uid` (None:
        no socket, the kernel's). Only UDP and UDP-Lite: a shared port is theirs. Raises
        OSError if the map refused it (the verdict's repeat may then meet an older entry)."""
        if not self._key_of(flow):
            return
        self._uid.value = NO_UID if uid is None else uid
        if self._lib.update(self._fd, self._key, ctypes.byref(self._uid), 0) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"cannot write {self.pin}: {os.strerror(code)}")


@dataclass(frozen=True, slots=True)
class QueuedSender:
    """The socket of the last datagram the kernel queued on a flow (`struct sender`)."""

    cookie: int
    uid: int


class QueuedSenders(_FlowMap):
    """The reader of the `queued` map (pinned at `pin`), one per process that attributes."""

    def __init__(self, pin: Path) -> None:
        super().__init__(pin)
        self._value = ctypes.create_string_buffer(_SENDER.size)

    def find(self, flow: Flow) -> QueuedSender | None:
        """The socket noted for `flow` (None: none, or not a datagram's flow)."""
        if not self._key_of(flow) or self._lib.lookup(self._fd, self._key, self._value) != 0:
            return None
        cookie, uid = _SENDER.unpack(self._value.raw)
        return QueuedSender(cookie, uid)


def open_named(pin: Path) -> NamedSockets | None:
    """The writer for a process that gives verdicts, or None (said in the log): verdicts then
    go unchecked, as without the socket match."""
    try:
        return NamedSockets(pin)
    except BackendUnavailable as exc:
        log.warning("a datagram's verdict may pass to another socket on its port: %s", exc)
        return None


def open_senders(pin: Path) -> QueuedSenders | None:
    """The reader for a process that attributes, or None (said in the log): a datagram is then
    named by its tuple alone."""
    try:
        return QueuedSenders(pin)
    except BackendUnavailable as exc:
        log.warning("a datagram on a shared port may be named for another socket: %s", exc)
        return None


def _mount_bpffs(root: Path) -> None:
    if str(root) in mount_points("bpf"):
        return
    done = subprocess.run(
        ["mount", "-t", "bpf", "bpf", str(root)],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise BackendUnavailable(
            f"no BPF file system at {root} and mounting one failed ({done.stderr.strip()}): "
            f"mount -t bpf bpf {root} (systemd does at boot)"
        )


def _failed(what: str) -> BackendUnavailable:
    return libbpf_failed(what, {errno.EPERM: "needs root with CAP_BPF"})
