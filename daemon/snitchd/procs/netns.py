"""The network namespace a forwarded flow came from, and a sock_diag socket inside it (issue 16).

A flow forwarded from a local container has its source address in the container's network
namespace, and its socket is only visible to sock_diag asked *from inside* that namespace. A
netlink socket belongs to the namespace it was created in, for its whole life, whatever the
creating thread does next: so each namespace is entered once, by a short-lived thread of its own
that `setns`es into it, opens a sock_diag and an rtnetlink socket there, and ends (the thread
never goes back to work in the wrong namespace: it is gone). From then on the packet loop asks
that namespace's sock_diag like its own (~4 µs), and nothing on the loop enters a namespace.

Finding the namespace (`resolve`, a worker job): the namespaces of all processes
(/proc/PID/ns/net, one stat each) and those named in /run/netns and /run/docker/netns; of those,
only the ones cabled to the interface the flow came in on (`linked_nsids`); for each one not yet
opened, the thread above; then its addresses (one RTM_GETADDR dump on its rtnetlink socket): the
one holding the source address is the flow's.

Why cabled: any user can make a network namespace (`unshare -rn`) and give it any address, a
container's included. Taken by address alone, the first namespace found holding it was the
flow's: a user's namespace could take a container's flows (named as the user's process, or as
nobody, and so denied). A namespace counts only if a veth whose peer is in it is the input
interface itself or a port of that bridge: only root in our namespace can cable one there. The
kernel numbers the peer's namespace for us (IFLA_LINK_NETNSID in a link dump), and a candidate's
number is asked through its file (RTM_GETNSID of /proc/PID/ns/net, or of a name's).

A held namespace keeps its sockets open (which keeps a dead namespace's memory until we drop
it): at most `_HELD_MAX`, the least recently used go first, and any no process or name holds
any more at the next resolve.
Measured (bench/bench_forward.py): entering a namespace ~100-130 µs (once per namespace); a
lookup in it as in ours (~16-21 µs here under load, the same for both); a cold resolve of a new
source ~11-17 ms with 6-8 namespaces on the machine, in the worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Generator, Iterator, Set
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from snitch_common.records import Flow, IPAddress, Proto
from snitchd.procs.sockdiag import NETLINK_SOCK_DIAG, Found, SockDiag, find_in_tables

__all__ = [
    "NAMED_DIRS",
    "Netns",
    "NetnsTable",
    "Opened",
    "enter_and_open",
    "linked_nsids",
    "named_namespaces",
    "nsid_of",
    "scan_namespaces",
]

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWNSID, RTM_GETNSID = 88, 90
NLMSG_DONE = 3
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFLA_LINK, IFLA_MASTER, IFLA_LINK_NETNSID = 5, 10, 37
NETNSA_NSID, NETNSA_FD = 1, 3
_HDR = struct.Struct("=IHHII")
_IFADDR = struct.Struct("=BBBBI")
_IFINFO = struct.Struct("=BxHiII")
_RTGEN = struct.Struct("=Bxxx")  # rtgenmsg, padded to the attributes' alignment
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_S32 = struct.Struct("=i")
_HELD_MAX = 256  # namespaces held open (each: two sockets)
_SOURCES_MAX = 16 * _HELD_MAX  # (interface, source address) → namespace entries kept
_ADDRS_TTL = 1.0  # seconds a namespace's address list is trusted before a resolve re-reads it
_RESOLVE_AGAIN = (
    1.0  # seconds before a source found nowhere (or its socket not found) is looked for again
)
_SLICE = 64  # processes stat'ed, or namespaces opened, per worker slice

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


Opened = tuple[int, socket.socket, socket.socket]  # namespace inode, sock_diag, rtnetlink


def enter_and_open(ns_path: str) -> Opened:
    """A sock_diag and an rtnetlink socket inside the network namespace at `ns_path`
    (/proc/PID/ns/net), made by a thread that enters it and then ends, and that namespace's
    inode (of the very file entered: a pid reused meanwhile cannot mislead). Raises OSError."""
    target = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    inode = os.fstat(target).st_ino
    made: list[socket.socket] = []
    error: list[BaseException] = []

    def inside() -> None:
        try:
            _setns(target)
            made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG))
            made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE))
        except BaseException as exc:  # handed to the caller's thread
            error.append(exc)
        # No setns back: this thread ends here, and its namespace with it.

    try:
        thread = threading.Thread(target=inside, name="snitchd-netns", daemon=True)
        thread.start()
        thread.join()
    finally:
        os.close(target)
    if error or len(made) != 2:
        for sock in made:
            sock.close()
        if error and isinstance(error[0], OSError):
            raise error[0]
        raise OSError(f"cannot open sockets in {ns_path}: {error[0] if error else 'unknown'}")
    return inode, made[0], made[1]


def _replies(
    rtnl: socket.socket, kind: int, flags: int, body: bytes
) -> Iterator[tuple[int, bytes]]:
    """Each reply to one rtnetlink request, as (message type, payload), until the dump's end
    or an error (which ends the replies: the caller finds nothing)."""
    rtnl.settimeout(1.0)
    rtnl.send(_HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | flags, 1, 0) + body)
    while True:
        data = rtnl.recv(65536)
        off = 0
        while off + _HDR.size <= len(data):
            length, got, _, _, _ = _HDR.unpack_from(data, off)
            if length < _HDR.size or got in (NLMSG_DONE, NLMSG_ERROR):
                return
            yield got, data[off + _HDR.size : off + length]
            if not flags & NLM_F_DUMP:
                return
            off += (length + 3) & ~3


def _attributes(payload: bytes, start: int) -> Iterator[tuple[int, bytes]]:
    """(type, value) of each attribute in `payload` from `start`."""
    at = start
    while at + _RTA.size <= len(payload):
        size, kind = _RTA.unpack_from(payload, at)
        if size < _RTA.size:
            return
        yield kind, payload[at + _RTA.size : at + size]
        at += (size + 3) & ~3


def _addresses(rtnl: socket.socket) -> frozenset[bytes]:
    """Every address of the namespace `rtnl` lives in (packed), from one RTM_GETADDR dump."""
    request = _IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    return frozenset(
        value
        for kind, payload in _replies(rtnl, RTM_GETADDR, NLM_F_DUMP, request)
        if kind == RTM_NEWADDR
        for atype, value in _attributes(payload, _IFADDR.size)
        if atype in (IFA_ADDRESS, IFA_LOCAL)
    )


def linked_nsids(rtnl: socket.socket, ifindex: int) -> frozenset[int]:
    """The numbers (as the namespace of `rtnl` numbers them) of the namespaces cabled to
    interface `ifindex`: the peer's of a veth that is that interface or a port of it (a
    bridge's), from one RTM_GETLINK dump."""
    found: set[int] = set()
    request = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    for kind, payload in _replies(rtnl, RTM_GETLINK, NLM_F_DUMP, request):
        if kind != RTM_NEWLINK or len(payload) < _IFINFO.size:
            continue
        index = _IFINFO.unpack_from(payload)[2]
        attrs = dict(_attributes(payload, _IFINFO.size))
        master = attrs.get(IFLA_MASTER, b"")
        nsid = attrs.get(IFLA_LINK_NETNSID, b"")
        ours = index == ifindex or (len(master) == 4 and _U32.unpack(master)[0] == ifindex)
        if ours and len(nsid) == 4 and IFLA_LINK in attrs:
            found.add(_S32.unpack(nsid)[0])
    return frozenset(found)


def nsid_of(rtnl: socket.socket, path: str, inode: int) -> int | None:
    """The number the namespace of `rtnl` gives network namespace `inode`, asked through the
    file at `path` (/proc/PID/ns/net, or a name's); None when it has none (nothing is cabled to
    it), or `path` is gone or is now another namespace's (a pid reused)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_ino != inode:
            return None
        body = _RTGEN.pack(socket.AF_UNSPEC) + _RTA.pack(_RTA.size + 4, NETNSA_FD) + _U32.pack(fd)
        for kind, payload in _replies(rtnl, RTM_GETNSID, 0, body):
            for atype, value in _attributes(payload, _RTGEN.size):
                if kind == RTM_NEWNSID and atype == NETNSA_NSID and len(value) == 4:
                    nsid = _S32.unpack(value)[0]
                    return nsid if nsid >= 0 else None
    finally:
        os.close(fd)
    return None


@dataclass(slots=True, eq=False)
class Netns:
    """One network namespace we hold sockets in. `find` runs on the loop and in the worker,
    so it is locked (the lock is uncontended but for a resolve's own check).

    Without sockets inside (`diag` None: snitchd may not enter namespaces, as under its service
    unit, which gives no CAP_SYS_ADMIN and restricts namespaces), the namespace is read through
    a process in it (`pid`): /proc/PID/net's socket tables and addresses. Those are whole-table
    reads, so such a namespace is only ever asked from the worker (`on_loop` False)."""

    inode: int
    diag: SockDiag | None
    rtnl: socket.socket | None
    pid: int = 0
    addrs: frozenset[bytes] = frozenset()
    addrs_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    seen_at: str = ""  # a path that showed this namespace lately (/proc/PID/ns/net, /run/netns)

    def alive(self) -> bool:
        """Whether the namespace still has a process or a name (one stat of `seen_at`): our own
        sockets keep a dead container's namespace, and a new container soon gets its address
        (`docker run --rm` in a loop), so a socket not found in a dead one is looked for anew.
        A path whose process left is taken for dead too: the next resolve finds it again."""
        if not self.seen_at:
            return True
        try:
            return os.stat(self.seen_at).st_ino == self.inode
        except OSError:
            return False

    @property
    def on_loop(self) -> bool:
        return self.diag is not None

    def readable(self) -> bool:
        """Whether this namespace can be asked now: its sockets are open, or the process it
        is read through is still in it (else a resolve finds another)."""
        if self.diag is not None:
            return self.alive()
        return _ns_of(self.pid) == self.inode

    def find(self, flow: Flow) -> Found | None:
        """The socket of `flow` in this namespace (TCP and UDP: ICMP and raw sockets are read
        from /proc/net, which shows snitchd's own namespace, so they are not found here)."""
        if flow.proto not in (Proto.TCP, Proto.UDP):
            return None
        if self.diag is None:
            return find_in_tables(self.pid, flow)
        if flow.iface:  # the outgoing interface is ours, not the namespace's
            flow = dataclasses.replace(flow, iface="")
        with self.lock:
            return self.diag.find(flow)

    def holds(self, addr: IPAddress, now: float) -> bool:
        """Whether `addr` is one of this namespace's addresses (re-read after `_ADDRS_TTL`)."""
        if now - self.addrs_at > _ADDRS_TTL:
            with self.lock:
                rtnl = self.rtnl
                self.addrs = _addresses(rtnl) if rtnl is not None else _proc_addresses(self.pid)
            self.addrs_at = now
        return addr.packed in self.addrs

    def close(self) -> None:
        with self.lock:
            if self.diag is not None:
                self.diag.close()
            if self.rtnl is not None:
                self.rtnl.close()


def _proc_addresses(pid: int) -> frozenset[bytes]:
    """A namespace's local addresses as a process in it shows them: IPv4 from fib_trie (the
    "/32 host LOCAL" leaves), IPv6 from if_inet6."""
    found: set[bytes] = set()
    trie = f"/proc/{pid}/net/fib_trie"
    with contextlib.suppress(OSError), open(trie, encoding="ascii", errors="replace") as f:
        last = ""
        for line in f:
            text = line.strip()
            if text.startswith(("|--", "+--")):
                last = text[3:].strip().split("/")[0]
            elif "/32 host LOCAL" in text and last:
                with contextlib.suppress(ValueError):
                    found.add(IPv4Address(last).packed)
    six = f"/proc/{pid}/net/if_inet6"
    with contextlib.suppress(OSError), open(six, encoding="ascii", errors="replace") as f:
        for line in f:
            with contextlib.suppress(ValueError, IndexError):
                found.add(bytes.fromhex(line.split()[0]))
    return frozenset(found)


def scan_namespaces(skip: int) -> Generator[None, None, dict[int, list[int]]]:
    """Network namespace inode → pids in it, for every process but those in `skip` (ours);
    a worker job's part (it yields every `_SLICE` processes)."""
    found: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for i, name in enumerate(names):
        if not name.isdigit():
            continue
        if i % _SLICE == 0:
            yield
        try:
            inode = os.stat(f"/proc/{name}/ns/net").st_ino
        except OSError:
            continue  # gone, or a kernel thread
        if inode != skip:
            found.setdefault(inode, []).append(int(name))
    return found


# Where `ip netns` and Docker keep namespaces by name: one may have no process in it yet.
NAMED_DIRS = ("/run/netns", "/run/docker/netns")


def named_namespaces(dirs: tuple[str, ...] = NAMED_DIRS) -> dict[int, str]:
    """Network namespace inode → a path that names it (a bind mount of /run/netns)."""
    found: dict[int, str] = {}
    for where in dirs:
        with contextlib.suppress(OSError):
            for name in os.listdir(where):
                path = f"{where}/{name}"
                with contextlib.suppress(OSError):
                    found.setdefault(os.stat(path).st_ino, path)
    return found


class NetnsTable:
    """The namespaces forwarded flows came from, by (input interface, source address)."""

    def __init__(self, opener: Callable[[str], Opened] | None = None) -> None:
        self._open = opener or enter_and_open
        self.home = os.stat("/proc/self/ns/net").st_ino
        self._lock = threading.Lock()
        self._held: dict[int, Netns] = {}  # by inode, least recently used first
        self._by_src: dict[tuple[int, bytes], int] = {}
        self._looked: dict[tuple[int, bytes], float] = {}  # when a source was last resolved
        self.pids: dict[int, list[int]] = {}  # the last scan's namespace → pids
        self.opened = 0  # namespaces entered since start (status, bench)
        self.refused = 0  # namespaces we were not allowed to enter (read through /proc)
        self._rtnl: socket.socket | None = None  # ours, for the worker's link questions

    def close(self) -> None:
        with self._lock:
            held, self._held = self._held, {}
            self._by_src.clear()
        for ns in held.values():
            ns.close()
        if self._rtnl is not None:
            self._rtnl.close()
            self._rtnl = None

    # -- on the loop ----------------------------------------------------------------------------
    def cached(self, ifindex: int, src: IPAddress) -> Netns | None:
        inode = self._by_src.get((ifindex, src.packed))
        return None if inode is None else self._held.get(inode)

    def looked_lately(self, ifindex: int, src: IPAddress, now: float) -> bool:
        """Whether this source was resolved less than `_RESOLVE_AGAIN` s ago: a packet whose
        socket is not found then is answered at once (a spoofed-source flood costs no scans)."""
        at = self._looked.get((ifindex, src.packed))
        return at is not None and 0 <= now - at < _RESOLVE_AGAIN

    # -- in the worker --------------------------------------------------------------------------
    def resolve(
        self, ifindex: int, src: IPAddress, given_up: Callable[[], bool]
    ) -> Generator[None, None, Netns | None]:
        """The namespace holding `src`, opening the ones not held yet; None when none does."""
        key = (ifindex, src.packed)
        self._looked[key] = time.monotonic()
        if len(self._looked) > 4 * _HELD_MAX:
            del self._looked[next(iter(self._looked))]
        spaces = yield from scan_namespaces(self.home)
        self.pids = spaces
        named = {k: v for k, v in named_namespaces().items() if k != self.home}
        self._drop_gone(spaces.keys() | named.keys())
        if self._rtnl is None:
            self._rtnl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)
        try:
            cabled = linked_nsids(self._rtnl, ifindex)
        except OSError as exc:
            log.warning("cannot read our interfaces (%s): a forwarded flow is nobody's", exc)
            return None
        now = time.monotonic()
        for n, inode in enumerate(spaces.keys() | named.keys()):
            if given_up():
                return None
            if n % _SLICE == 0:
                yield
            if not cabled or not self._cabled(inode, spaces, named, cabled):
                continue
            ns = self._held.get(inode)
            if ns is not None and not ns.on_loop and spaces.get(inode):
                ns.pid = spaces[inode][0]  # read through a process that is still there
            if ns is not None and ns.on_loop:
                pids = spaces.get(inode)
                ns.seen_at = f"/proc/{pids[0]}/ns/net" if pids else named.get(inode, "")
            if ns is None:
                paths = [f"/proc/{pid}/ns/net" for pid in spaces.get(inode, [])[:3]]
                ns = self._enter(inode, paths + ([named[inode]] if inode in named else []))
                if ns is None:
                    continue
            try:
                if ns.holds(src, now):
                    with self._lock:
                        self._by_src.pop(key, None)
                        self._by_src[key] = inode
                        while len(self._by_src) > _SOURCES_MAX:  # a container may add addresses
                            del self._by_src[next(iter(self._by_src))]
                        self._held.pop(inode, None)
                        self._held[inode] = ns
                    return ns
            except OSError as exc:
                log.debug("namespace addresses unreadable inode=%d: %s", inode, exc)
        with self._lock:
            self._by_src.pop(key, None)  # held by nobody now: not the namespace it was in
        return None

    def _cabled(
        self,
        inode: int,
        spaces: dict[int, list[int]],
        named: dict[int, str],
        cabled: frozenset[int],
    ) -> bool:
        """Whether namespace `inode` is one of `cabled`, asked through a process in it, or
        else its name."""
        assert self._rtnl is not None
        paths = [f"/proc/{pid}/ns/net" for pid in spaces.get(inode, [])[:3]]
        try:
            for path in [*paths, *([named[inode]] if inode in named else [])]:
                nsid = nsid_of(self._rtnl, path, inode)
                if nsid is not None:
                    return nsid in cabled
        except OSError as exc:
            log.debug("namespace number unreadable inode=%d: %s", inode, exc)
        return False

    def _enter(self, inode: int, paths: list[str]) -> Netns | None:
        for path in paths:  # the first whose process has not exited meanwhile
            try:
                entered, diag_sock, rtnl = self._open(path)
            except PermissionError as exc:
                pid = _pid_of(path)
                if pid is None or _ns_of(pid) != inode:
                    continue
                if not self.refused:
                    log.info(
                        "cannot enter network namespaces (%s): a container's sockets are read "
                        "from /proc/PID/net in the worker instead",
                        exc.strerror,
                    )
                self.refused += 1
                return self._hold(Netns(inode, None, None, pid))
            except OSError as exc:
                log.debug("cannot enter the namespace at %s: %s", path, exc)
                continue
            if entered != inode:
                diag_sock.close()  # the pid was reused by a process of another namespace
                rtnl.close()
                continue
            self.opened += 1
            return self._hold(Netns(inode, SockDiag(diag_sock), rtnl, seen_at=path))
        return None

    def _hold(self, ns: Netns) -> Netns:
        with self._lock:
            self._held[ns.inode] = ns
            while len(self._held) > _HELD_MAX:
                oldest = next(iter(self._held))
                self._forget(oldest).close()
        return ns

    def _drop_gone(self, spaces: Set[int]) -> None:
        """Close the namespaces no process lives in any more."""
        with self._lock:
            gone = [self._forget(inode) for inode in list(self._held) if inode not in spaces]
        for ns in gone:
            ns.close()

    def _forget(self, inode: int) -> Netns:
        """Under the lock: take a namespace out of the table, for the caller to close."""
        ns = self._held.pop(inode)
        for key in [k for k, v in self._by_src.items() if v == inode]:
            del self._by_src[key]
        return ns

    def owner(
        self, inode: int, sock_inode: int, given_up: Callable[[], bool]
    ) -> Generator[None, None, tuple[int, int] | None]:
        """(pid, fd) of the process in namespace `inode` holding socket `sock_inode`: the last
        scan's pids of that namespace first (a container holds few processes), then a fresh
        scan (a process started since)."""
        for fresh in (False, True):
            if fresh:
                self.pids = yield from scan_namespaces(self.home)
            if given_up():
                return None
            found = _holder(self.pids.get(inode, ()), f"socket:[{sock_inode}]")
            if found is not None:
                return found
        return None


def _holder(pids: list[int] | tuple[()], want: str) -> tuple[int, int] | None:
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                        return pid, int(fd)
    return None


def _pid_of(path: str) -> int | None:
    parts = path.split("/")
    return int(parts[2]) if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() else None


def _ns_of(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return 0
