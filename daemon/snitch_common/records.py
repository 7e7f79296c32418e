"""Records that cross module boundaries on the packet path: a flow and the process behind it.

They live apart from the modules that produce them (`packet`, `procs`) so that the pure decision
core can import them without pulling in sockets, psutil or netlink. Nothing here does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

__all__ = ["Attribution", "Flow", "IPAddress", "Process", "Proto", "Source"]

IPAddress = IPv4Address | IPv6Address


class Proto(enum.Enum):
    """Transport protocols a rule can name; ICMP covers ICMPv6 too (users think "ping")."""

    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Flow:
    """The first packet of a new outbound flow, as far as a rule can see it.

    `dport` is 0 for ICMP and other port-less protocols; `iface` is the outgoing interface name
    ("" when the kernel did not say).
    """

    proto: Proto
    src: IPAddress
    sport: int
    dst: IPAddress
    dport: int
    iface: str = ""
    ipproto: int = 0

    def __str__(self) -> str:
        dst = f"[{self.dst}]" if self.dst.version == 6 else str(self.dst)
        port = f":{self.dport}" if self.proto in (Proto.TCP, Proto.UDP) else ""
        via = f" via {self.iface}" if self.iface else ""
        return f"{self.proto.value} {dst}{port}{via}"


class Attribution(enum.Enum):
    """How sure we are of who sent a flow: never guess a process we did not find."""

    PROCESS = "process"
    UID_ONLY = "uid-only"
    KERNEL = "kernel"


class Source(enum.Enum):
    """How the owner of a flow was found, shown in the log and the prompt (issue 14).

    `bpf`: recorded by the cgroup BPF hooks when the socket connected or sent (who it was *then*);
    `sock_diag`: the socket's inode from sock_diag, its holder from /proc *when the packet was
    read* (a process that exec'd or passed the socket on since is not seen); `uid-only`: the
    socket's uid, no process; `kernel`: no socket at all.
    """

    BPF = "bpf"
    SOCK_DIAG = "sock_diag"
    UID_ONLY = "uid-only"
    KERNEL = "kernel"


@dataclass(frozen=True, slots=True)
class Process:
    """Who sent a flow. `pid` and `exe` are None when the socket was found but not its process
    (it exited, or it is not visible), and `uid` too when there was no socket at all (kernel)."""

    attribution: Attribution
    pid: int | None = None
    uid: int | None = None
    exe: str | None = None
    cmdline: tuple[str, ...] = ()
    user: str | None = None
    ppid: int | None = None
    start_time: float | None = None
    sha256: str | None = None
    parents: tuple[tuple[int, str], ...] = ()
    source: Source | None = None  # None: not from attribution (a rule explained, a test)

    @classmethod
    def kernel(cls) -> Process:
        return cls(attribution=Attribution.KERNEL, source=Source.KERNEL)

    @classmethod
    def uid_only(cls, uid: int) -> Process:
        return cls(attribution=Attribution.UID_ONLY, uid=uid, source=Source.UID_ONLY)

    def describe(self) -> str:
        if self.attribution is Attribution.KERNEL:
            return "kernel"
        if self.exe is None:
            return f"uid {self.uid} (process not found)"
        return f"{self.exe} (pid {self.pid}, uid {self.uid})"
