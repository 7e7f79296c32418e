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
`firewall` gives each one as a repeat with its mark on the packet.

A second program, before it, drops what a user (uid above 999) would send to the queue past
`new_flows_per_user` a second: the nft limit of new flows counts no packet of a decided flow,
so a loop binding a decided flow's port, sending one datagram and closing would otherwise fill
the queue everyone's new flows wait in.

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
from pathlib import Path

from snitch_common.errors import BackendUnavailable
from snitchd.netfilter import OVER_LIMIT_PIN, UNDECIDED_PIN
from snitchd.procs.bpf import (
    SOCKETS_SOURCE,
    LibBpf,
    build_object,
    libbpf_failed,
    mount_points,
)

__all__ = ["PIN_ROOT", "PROGRAMS", "SocketMatch"]

log = logging.getLogger(__name__)

PIN_ROOT = Path("/sys/fs/bpf")
# The programs (sockets.bpf.c), pinned by these names: the queue rule's match, and the drop
# rule's before it (a user past its limit).
PROGRAMS = {UNDECIDED_PIN: b"snitch_undecided_socket", OVER_LIMIT_PIN: b"snitch_over_limit"}
_LIMIT = struct.Struct("=QQ")  # struct limit


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
            self._limits = self._lib.map_fd(obj, b"limits")
            if self._limits < 0:
                raise BackendUnavailable(f"{obj_path} has no map limits")
            self.limit(per_user)
            self.pins.mkdir(mode=0o700, parents=True, exist_ok=True)
            for name, program in PROGRAMS.items():
                prog = self._lib.find_program(obj, program)
                if not prog:
                    raise BackendUnavailable(f"{obj_path} has no program {program.decode()}")
                pin = self.pins / name
                pin.unlink(missing_ok=True)  # an earlier run's, left by a crash
                if self._lib.pin(self._lib.program_fd(prog), str(pin).encode()) != 0:
                    raise _failed(f"pin {program.decode()} at {pin}")
        except BaseException:
            self.close()
            raise
        log.info("socket match loaded pins=%s", self.pins)

    def limit(self, per_user: int) -> None:
        """Datagrams of undecided sockets one user may send to the queue a second (burst as
        many); 0: no limit. The same figure as the nft limit of new flows."""
        interval = 1_000_000_000 // per_user if per_user else 0
        value = ctypes.create_string_buffer(_LIMIT.pack(interval, interval * per_user))
        key = ctypes.c_uint32(0)
        if self._lib.update(self._limits, ctypes.byref(key), value, 0) != 0:
            raise _failed("set the per-user limit of the socket match")

    def close(self) -> None:
        """Unpin and free (idempotent): the rules that use them keep the programs until they
        go."""
        if self._obj is None:
            return
        for name in PROGRAMS:
            (self.pins / name).unlink(missing_ok=True)
        for empty in (self.pins, self.pins.parent):  # another namespace's snitchd may pin there
            with contextlib.suppress(OSError):
                empty.rmdir()
        self._lib.close(self._obj)
        self._obj = None


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
