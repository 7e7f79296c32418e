"""Which virtual machine a forwarded flow came from (issue 16): its tap device and the process
holding it. A VM's sockets live in another kernel, so no namespace of ours holds its address:
what this machine sees is a frame coming in on a tap device (directly, or through a bridge the
tap is a port of), written by the hypervisor process (qemu) that holds the tap open. That
process's cgroup names the machine (libvirt: `machine-qemu\\x2dN\\x2dNAME.scope`).

Worker only: the bridge's forwarding table (/sys/class/net/BRIDGE/brforward) maps the frame's
source MAC to a port, and the tap's holder is found by its fds (/dev/net/tun, whose fdinfo says
`iff: NAME`): a scan of every process's fds, once per tap, then checked by one fdinfo read.
A guest can forge another guest's MAC on the same bridge (as a container can forge an address):
the flow is then named as that other guest.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from collections.abc import Callable, Generator
from pathlib import Path

__all__ = ["Taps", "bridge_port", "holds_tap", "tap_holder"]

_FDB = struct.Struct("=6sBBIBBH")  # struct __fdb_entry (linux/if_bridge.h)
_SLICE = 32  # processes looked through per worker slice
_TAPS_MAX = 1024


def bridge_port(bridge: str, mac: bytes, sys_net: str = "/sys/class/net") -> str | None:
    """The port of `bridge` that `mac` was last seen on (its forwarding table), or None."""
    base = Path(sys_net) / bridge
    try:
        table = (base / "brforward").read_bytes()
        ports = {
            int((port / "port_no").read_text().strip(), 16): port.name
            for port in (base / "brif").iterdir()
        }
    except OSError:
        return None
    for off in range(0, len(table) - _FDB.size + 1, _FDB.size):
        addr, port_no, is_local, _, port_hi, _, _ = _FDB.unpack_from(table, off)
        if addr == mac[:6] and not is_local:
            return ports.get(port_hi << 8 | port_no)
    return None


def holds_tap(pid: int, fd: int, name: str) -> bool:
    """Whether `pid`'s fd `fd` is the tap device `name` (one small /proc read)."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        return any(line.split(":", 1)[-1].strip() == name for line in text.splitlines()
                   if line.startswith("iff:"))  # fmt: skip
    return False


def tap_holder(
    name: str, stopped: Callable[[], bool]
) -> Generator[None, None, tuple[int, int] | None]:
    """(pid, fd) of a process holding tap device `name` open: its fd on /dev/net/tun whose
    fdinfo names the device. A worker job's part (it yields every `_SLICE` processes)."""
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for i, pid in enumerate(pids):
        if i % _SLICE == 0:
            yield
            if stopped():
                return None
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") != "/dev/net/tun":
                        continue
                    if holds_tap(pid, int(fd), name):
                        return pid, int(fd)
    return None


class Taps:
    """Tap device → its holder (pid, fd), remembered and checked by one fdinfo read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, tuple[int, int]] = {}

    def holder(
        self, name: str, stopped: Callable[[], bool]
    ) -> Generator[None, None, tuple[int, int] | None]:
        with self._lock:
            known = self._held.get(name)
        if known is not None and holds_tap(known[0], known[1], name):
            return known
        found = yield from tap_holder(name, stopped)
        if found is None:
            return None
        with self._lock:
            self._held[name] = found
            while len(self._held) > _TAPS_MAX:
                del self._held[next(iter(self._held))]
        return found
