"""Records that cross module boundaries on the packet path: a flow and the process behind it.

They live apart from the modules that produce them (`packet`, `procs`) so that the pure decision
core can import them without pulling in sockets, psutil or netlink. Nothing here does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

__all__ = [
    "SYSTEM_UID_MAX",
    "Attribution",
    "Container",
    "Flow",
    "IPAddress",
    "Process",
    "Proto",
    "Runtime",
    "Source",
]

IPAddress = IPv4Address | IPv6Address
# The system's uids (root, daemons, resolvers) go up to this one, as Debian's adduser gives them
# (FIRST_UID 1000): their names are everyone's, their flows are not rationed per person.
SYSTEM_UID_MAX = 999


class Proto(enum.Enum):
    """Transport protocols a rule can name; ICMP covers ICMPv6 too (users think "ping")."""

    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"
    OTHER = "other"

    # Enum's own hash is Python code (the name's hash); members are singletons equal only to
    # themselves, so object's C hash is the same contract, and flows key dicts several times
    # per packet.
    __hash__ = object.__hash__


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
    # Hashed once, when made: the packet loop looks a flow up five times (the in-flight and
    # repeat maps, attribution), and each dataclass hash hashed both addresses in Python
    # (IPv4Address.__hash__): 0.85 µs a time.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = (self.proto, self.src, self.sport, self.dst, self.dport, self.iface, self.ipproto)
        object.__setattr__(self, "_hash", hash(fields))

    def __hash__(self) -> int:
        return self._hash

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


class Runtime(enum.Enum):
    """What runs a container or guest, as its cgroup names it (issue 16); `runtime=` in rules."""

    DOCKER = "docker"
    PODMAN = "podman"
    NSPAWN = "nspawn"
    LIBVIRT = "libvirt"
    LXC = "lxc"


@dataclass(frozen=True, slots=True)
class Container:
    """The container or guest a forwarded flow came from (issue 16), found from the sender's
    cgroup. `name` is the runtime's name for it (the Docker API's when its socket was readable,
    else the short id), `id` the runtime's id (Docker, Podman) or the machine name; `pid` is the
    sender's pid *inside* the container (the host pid is `Process.pid`). `owner_uid` is whose it
    is: the user of a rootless container (its cgroup is under that user's `user@UID.service`),
    None for a system one (root's runtime: its prompts go to the admins)."""

    runtime: Runtime
    name: str
    id: str
    pid: int | None = None
    owner_uid: int | None = None

    def describe(self, process: str | None = None) -> str:
        """ "container web-1 (docker), process nginx (pid in container 7)", as prompts and the
        log say it."""
        text = f"container {self.name} ({self.runtime.value})"
        if process is not None:
            inside = f" (pid in container {self.pid})" if self.pid is not None else ""
            text += f", process {process}{inside}"
        return text


@dataclass(frozen=True, slots=True)
class Process:
    """Who sent a flow. `pid` and `exe` are None when the socket was found but not its process
    (it exited, or it is not visible), and `uid` too when there was no socket at all (kernel).

    What Linux lets us check of who it is (issue 14): `verified` is False when no path in
    snitchd's own mount namespace has the executable's device and inode (a user namespace can
    bind-mount anything over `/usr/bin/curl`): no rule naming an app matches it then.
    `interpreted`: `exe` is an interpreter (config `interpreters`), and `script` the file it runs
    (None: inline code, `-c`, stdin or a module), resolved against the process's cwd;
    `script_doubts` says why that name is not to be trusted ("PYTHONPATH set": a variable that
    loads other code into the interpreter; "its path unverified"): a rule naming the script
    does not match then. `preload`: the
    LD_PRELOAD/LD_AUDIT libraries its memory maps; `tracer`: the pid that ptrace-attached it.
    `user_writable`: someone other than root can change the executable (its answers are always
    pinned to its sha256). Parents' labels are verified paths, else `[comm]` or `?path`.
    `container`: the flow was forwarded from a container or guest (issue 16); `exe` is then the
    path as the container sees it, and no rule naming an app matches it.
    """

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
    verified: bool = True
    interpreted: bool = False
    script: str | None = None
    script_doubts: tuple[str, ...] = ()
    preload: tuple[str, ...] = ()
    tracer: int | None = None
    user_writable: bool = False
    container: Container | None = None

    @property
    def owner_uid(self) -> int | None:
        """Whose flow this is for rules (`user=`) and prompts: the process's uid, or for a
        container's process the container's owner (a uid inside a container names no user of
        this machine; None: a system container, whose prompts go to the admins)."""
        return self.container.owner_uid if self.container is not None else self.uid

    @property
    def tampered(self) -> bool:
        """Code not of its executable may run in it (a preloaded library, a tracer): it does
        not pass for its app, so no allow rule that names who it is matches it."""
        return bool(self.preload) or self.tracer is not None

    @property
    def script_label(self) -> str | None:
        """The script as people read it: its path, "inline code", or None (not interpreted)."""
        if not self.interpreted:
            return None
        return self.script if self.script is not None else "inline code"

    def notes(self) -> tuple[str, ...]:
        """What the log and the prompt say about this identity besides the path, each a short
        phrase: "unverified", "script /x.py", "LD_PRELOAD /tmp/x.so", "traced by pid 7"."""
        if self.container is not None:
            name = self.exe.rpartition("/")[2] if self.exe is not None else None
            return (self.container.describe(name),)
        if self.exe is None:
            return ()
        notes: list[str] = []
        if not self.verified:
            notes.append("unverified executable")
        if self.interpreted:
            notes.append(f"script {self.script}" if self.script is not None else "inline code")
        if self.script_doubts:
            notes.append("script not trusted: " + ", ".join(self.script_doubts))
        notes.extend(f"preloaded {lib}" for lib in self.preload)
        if self.tracer is not None:
            notes.append(f"traced by pid {self.tracer}")
        return tuple(notes)

    @classmethod
    def kernel(cls) -> Process:
        return cls(attribution=Attribution.KERNEL, source=Source.KERNEL)

    @classmethod
    def uid_only(cls, uid: int) -> Process:
        return cls(attribution=Attribution.UID_ONLY, uid=uid, source=Source.UID_ONLY)

    def describe(self) -> str:
        if self.container is not None:
            return self.notes()[0]
        if self.attribution is Attribution.KERNEL:
            return "kernel"
        if self.exe is None:
            return f"uid {self.uid} (process not found)"
        notes = "".join(f", {note}" for note in self.notes())
        return f"{self.exe} (pid {self.pid}, uid {self.uid}{notes})"
