"""Who connected, as the kernel saw it at connect time: the cgroup BPF recorder and its maps.

`bpf/attrib.bpf.c` hangs on the cgroup hooks `sock_create`, `connect4/6` and `sendmsg4/6` and
records, per socket cookie and destination, the task that created, connected or sent (tgid, tid,
uid, comm, its process's start time, its executable's device + inode and path). `Recorder.find`
reads the record for the cookie sock_diag returned (`idiag_cookie`), so the packet loop learns
who connected even when that process has since exec'd, exited, or handed the socket on. The
programs only record: they return 1 (allow) whatever happens.

A TCP connect needs no sock_diag request at all (issue 21): a `sockops` program, called in
tcp_connect() once the source port is bound, copies the record `find` would read for the
socket into a map keyed by the flow itself (netns, addresses, ports), with the socket's uid and
inode; `find_connected` reads it with one lookup. The record goes when the socket leaves
SYN_SENT, so it never outlives its socket's hold on the 4-tuple. UDP keeps sock_diag first: its
sendmsg hook runs before the kernel picks the source address (no flow key can be written), and
a datagram socket has no end the hooks see per destination, so a per-port record may be stale
or another address's (`find_released` trusts one only for a socket sock_diag no longer finds).

The same object carries the fast path's maps and socket filter (`fastpath`): `fast_fds` hands
them to snitchd, `connected_key` names a connecting process the way the sock_ops program looks
it up.

Loading: libbpf itself (Debian's libbpf1, security-supported with the distribution) through
ctypes, eight functions. Compared: BCC (python3-bpfcc) compiles C with its own LLVM at every
start and needs kernel headers; pylibbpf (PyPI 0.0.6, pre-1.0) ships its own libbpf in a wheel
(no Debian updates); bpfmaps only reads maps. A map read through ctypes costs ~1-2 µs
(bench/bench_procs.py), no more than sock_diag's request.

The object is compiled from the shipped C source by Debian's clang, once per source version,
into `<state dir>/bpf/attrib-<sha256 prefix>.o` (install.sh builds it; snitchd builds it at start
when it is missing): the object is CO-RE (fields relocated against /sys/kernel/btf/vmlinux at
load), so compiling on the machine that runs it costs ~0.2 s once and spares us shipping a
binary blob; an upgrade of the source builds a new object by itself.

Attached with bpf_link (BPF_LINK_CREATE): the links live as long as snitchd's fds, so a crash
detaches the programs when the kernel closes them. Nothing here runs a user-controlled amount
of work on the loop: one or two map reads per flow, and the executable's path once per inode.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from snitch_common.errors import BackendUnavailable
from snitch_common.records import Flow, Proto

__all__ = [
    "HOOKS",
    "SOCKETS_SOURCE",
    "SOURCES",
    "LibBpf",
    "Owner",
    "Recorder",
    "RecorderMaps",
    "build_object",
    "cgroup2_root",
    "libbpf_failed",
    "mount_points",
    "object_path",
]

log = logging.getLogger(__name__)

HOOKS = (
    "snitch_sock_create",
    "snitch_connect4",
    "snitch_connect6",
    "snitch_sendmsg4",
    "snitch_sendmsg6",
    "snitch_sockops",
)
_HOOK_NAMES = {1: "sock_create", 2: "connect", 3: "sendmsg"}
_SOURCE = "attrib.bpf.c"
SOCKETS_SOURCE = "sockets.bpf.c"  # `socketmatch`
SOURCES = (_SOURCE, SOCKETS_SOURCE)
_CLK_TCK = os.sysconf("SC_CLK_TCK")

# struct flow_key / struct owner / struct exe_key / struct exe_path of attrib.bpf.c.
_KEY = struct.Struct("=Q16sHHHH")
_KEY_SOCKET, _KEY_PORT = 0, 1
_SO_NETNS_COOKIE = 71
_GONE_MAX_AGE_NS = 30_000_000_000  # a gone socket's record, for a datagram still queued
_OWNER = struct.Struct("=IIIIQQIIQ16sQ")
# struct conn_key / struct conn: a connecting TCP socket's record under its own flow.
_CONN_KEY = struct.Struct("=Q16s16sHHHH")
_CONN = struct.Struct(f"={_OWNER.size}xQQQI4x")  # (the owner,) cookie, inode, when, uid
_CONN_MAX_AGE_NS = 2_000_000_000  # a record older than this is checked by sock_diag instead
_EXE_KEY = struct.Struct("=QII")
# struct fast_key: start_ns, exec_id, ino, tgid, dev (kernel), socket uid, dport, family,
# destination.
_FAST_KEY = struct.Struct("=QQQIIIHH16s")
_PATH_BYTES = 512
_EXE_PATH = struct.Struct(f"=II{_PATH_BYTES}s")


@dataclass(frozen=True, slots=True)
class Owner:
    """A task as the hook saw it. `dev` is in userspace encoding (comparable with st_dev);
    `start_ticks` compares with field 22 of /proc/<pid>/stat; `ino` is 0 without an mm."""

    tgid: int
    tid: int
    uid: int
    start_ticks: int
    dev: int
    ino: int
    hook: str
    comm: bytes
    when_ns: int
    exec_id: int  # the task's execs so far: the same file exec'd again is another image


def _owner(raw: bytes) -> Owner:
    tgid, tid, uid, _gid, start_ns, ino, kdev, hook, when, comm, exec_id = _OWNER.unpack(raw)
    # Kernel dev_t is major << 20 | minor; stat's is glibc's encoding: os.makedev builds it.
    dev = os.makedev(kdev >> 20, kdev & 0xFFFFF)
    # /proc/<pid>/stat prints nsec_to_clock_t(start_boottime): whole ticks, rounded down.
    ticks = start_ns // (1_000_000_000 // _CLK_TCK)
    name = _HOOK_NAMES.get(hook, "?")
    return Owner(tgid, tid, uid, ticks, dev, ino, name, comm.split(b"\0")[0], when, exec_id)


def cgroup2_root() -> str | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on a hybrid
    layout), from /proc/self/mountinfo; None without one."""
    mounted = mount_points("cgroup2")
    return mounted[0] if mounted else None


def mount_points(fstype: str) -> list[str]:
    """Where file systems of `fstype` are mounted, from /proc/self/mountinfo."""
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                before, _, after = line.partition(" - ")
                if after.split(" ", 1)[0] == fstype:
                    found.append(before.split()[4].replace("\\040", " "))
    except OSError:
        return []
    return found


def _source_text(source: str) -> bytes:
    return resources.files("snitchd").joinpath("bpf", source).read_bytes()


def object_path(state_dir: Path, source: str = _SOURCE) -> Path:
    """The object for this version of the source (a new source builds a new object)."""
    digest = hashlib.sha256(_source_text(source)).hexdigest()[:16]
    return state_dir / "bpf" / f"{source.split('.', maxsplit=1)[0]}-{digest}.o"


def build_object(state_dir: Path, source: str = _SOURCE) -> Path:
    """Compile `source` (of snitchd/bpf: the recorder unless told) with clang unless this
    version's object exists; returns its path. Raises BackendUnavailable naming what is
    missing."""
    target = object_path(state_dir, source)
    if target.exists():
        return target
    clang = shutil.which("clang") or shutil.which("clang-14")
    if clang is None:
        raise BackendUnavailable(
            f"cannot build the BPF object {target}: clang not found "
            "(install the Debian packages clang and libbpf-dev: ./install.sh --deps-only)"
        )
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        raise BackendUnavailable(
            f"cannot build the BPF object {target}: libbpf headers not found "
            "(install the Debian package libbpf-dev)"
        )
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    arch = (
        subprocess.run(
            ["gcc", "-dumpmachine"], capture_output=True, text=True, check=False
        ).stdout.strip()
        or f"{os.uname().machine}-linux-gnu"
    )
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / source
        src.write_bytes(_source_text(source))
        out = Path(tmp) / "built.o"
        argv = [clang, "-O2", "-g", "-target", "bpf", f"-I/usr/include/{arch}", "-c", str(src)]
        done = subprocess.run(
            [*argv, "-o", str(out)], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise BackendUnavailable(
                f"cannot build the BPF object {target}: clang failed: "
                f"{done.stderr.strip()[-500:]} (is libbpf-dev installed?)"
            )
        os.replace(out, target)
    log.info("BPF object built path=%s", target)
    return target


class LibBpf:
    """The few libbpf calls we make, typed once."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot load libbpf: {exc} (install the Debian package libbpf1)"
            ) from None
        vp, cp, ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        self.open_file = _typed(lib.bpf_object__open_file, vp, cp, vp)
        self.load = _typed(lib.bpf_object__load, ci, vp)
        self.close = _typed(lib.bpf_object__close, None, vp)
        self.find_program = _typed(lib.bpf_object__find_program_by_name, vp, vp, cp)
        self.attach_cgroup = _typed(lib.bpf_program__attach_cgroup, vp, vp, ci)
        self.link_destroy = _typed(lib.bpf_link__destroy, ci, vp)
        self.map_fd = _typed(lib.bpf_object__find_map_fd_by_name, ci, vp, cp)
        self.program_fd = _typed(lib.bpf_program__fd, ci, vp)
        self.pin = _typed(lib.bpf_obj_pin, ci, ci, cp)
        self.obj_get = _typed(lib.bpf_obj_get, ci, cp)
        self.lookup = _typed(lib.bpf_map_lookup_elem, ci, ci, vp, vp)
        self.update = _typed(lib.bpf_map_update_elem, ci, ci, vp, vp, ctypes.c_uint64)
        self.set_print = _typed(lib.libbpf_set_print, vp, vp)


def _typed(fn: Any, restype: object, *argtypes: object) -> Any:
    fn.restype = restype
    fn.argtypes = argtypes
    return fn


_PRINT_MAX = 1 << 20
_PRINT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_libc = ctypes.CDLL(None)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]


def _print(level: int, fmt: bytes, args: int) -> int:
    """libbpf's messages (the verifier's log among them) into our log at DEBUG; level 0 (warn)
    at INFO: the caller raises with a summary if the load fails. va_list is an array type on
    x86-64 and arm64, passed as a pointer: vsnprintf takes it as is."""
    buf = ctypes.create_string_buffer(_PRINT_MAX)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    text = buf.value.decode(errors="replace").rstrip()
    if len(text) >= _PRINT_MAX - 1:  # a verifier log: its reason is at the end
        text = "… " + text[-2000:]
    log.log(logging.INFO if level == 0 else logging.DEBUG, "libbpf: %s", text)
    return 0


try:  # kept referenced: libbpf calls it for as long as we run
    _libbpf_print: Any = _PRINT(_print)
except MemoryError:  # no writable+executable page for a ctypes closure: libbpf prints to stderr
    _libbpf_print = None


_CAP_SYS_ADMIN, _CAP_PERFMON, _CAP_BPF = 21, 38, 39


def _missing_capabilities() -> list[str]:
    """The capabilities the recorder needs that this process lacks in its effective set
    (CAP_SYS_ADMIN stands for both on any kernel)."""
    try:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("CapEff:"))
    except (OSError, StopIteration):
        return []
    caps = int(line.split()[1], 16)
    if caps >> _CAP_SYS_ADMIN & 1:
        return []
    return [name for bit, name in ((_CAP_BPF, "CAP_BPF"), (_CAP_PERFMON, "CAP_PERFMON"))
            if not caps >> bit & 1]  # fmt: skip


@dataclass(frozen=True, slots=True)
class RecorderMaps:
    """A loaded recorder's maps, as snitchd hands them to a queue reader (the same fd numbers
    in the child: `pass_fds`): the reader reads the records of the one set of programs
    attached, instead of attaching its own, which every connect() would run once more."""

    cgroup: str
    owners: int
    exes: int
    conns: int


def libbpf_failed(what: str, hints: dict[int, str], after: str = "") -> BackendUnavailable:
    """The error for a libbpf call that failed just now: its errno, and what that errno means
    for this caller (`hints`; a verifier refusal is the same for all), then `after`."""
    code = ctypes.get_errno()
    hint = {errno.EACCES: "the verifier refused it (snitchd --debug logs its reasons)", **hints}
    return BackendUnavailable(
        f"cannot {what}: {os.strerror(code) if code else 'failed'} "
        f"({hint.get(code, 'see the libbpf lines in the log')}){after}"
    )


class Recorder:
    """The loaded recorder, attached to one cgroup (and so to every cgroup below it), or the
    maps of one that another process loaded (`RecorderMaps`)."""

    def __init__(self, cgroup: str, source: Path | RecorderMaps) -> None:
        """Load the object at `source` and attach it; raises BackendUnavailable naming the
        cause (no CAP_BPF, no BTF, no cgroup, a verifier refusal), with nothing left attached.
        Given maps, only reads them."""
        self.cgroup = cgroup
        self._lib = LibBpf()
        self._links: list[int] = []
        self._obj: int | None = None
        self._cgroup_fd = -1
        self._shared = isinstance(source, RecorderMaps)
        if isinstance(source, RecorderMaps):
            self._owners_fd, self._exes_fd, self._conns_fd = (
                source.owners, source.exes, source.conns
            )  # fmt: skip
        else:
            self._attach(source)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            # The network namespace the queued packets come from (ours): KEY_PORT and
            # records are kept per namespace.
            self._netns = int.from_bytes(
                probe.getsockopt(socket.SOL_SOCKET, _SO_NETNS_COOKIE, 8), sys.byteorder
            )
        self._key = ctypes.create_string_buffer(_KEY.size)
        self._val = ctypes.create_string_buffer(_OWNER.size)
        self._conn_key = ctypes.create_string_buffer(_CONN_KEY.size)
        self._conn = ctypes.create_string_buffer(_CONN.size)

    def maps(self) -> RecorderMaps:
        """This recorder's map fds, for a queue reader (`Recorder(cgroup, maps)`)."""
        return RecorderMaps(self.cgroup, self._owners_fd, self._exes_fd, self._conns_fd)

    def _attach(self, obj_path: Path) -> None:
        if not Path("/sys/kernel/btf/vmlinux").exists():
            raise BackendUnavailable(
                "cannot load the BPF recorder: the kernel has no BTF (/sys/kernel/btf/vmlinux; "
                "CONFIG_DEBUG_INFO_BTF): attribution stays with sock_diag and /proc"
            )
        missing = _missing_capabilities()
        if missing:
            # Checked before loading: the verifier would refuse the helpers it needs with a
            # bare EINVAL (seen in systemd-nspawn, which withholds CAP_PERFMON).
            raise BackendUnavailable(
                f"cannot load the BPF recorder: snitchd lacks {' and '.join(missing)} (a "
                "container or unit that withholds them?): attribution stays with sock_diag "
                "and /proc"
            )
        if _libbpf_print is not None:
            self._lib.set_print(ctypes.cast(_libbpf_print, ctypes.c_void_p))
        try:
            self._cgroup_fd = os.open(self.cgroup, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot attach the BPF recorder to cgroup {self.cgroup}: {exc.strerror} "
                "(set bpf_cgroup to a cgroup v2 directory)"
            ) from None
        try:
            self._load(obj_path)
        except BaseException:
            self.close()
            raise

    def _load(self, obj_path: Path) -> None:
        lib = self._lib
        obj = lib.open_file(str(obj_path).encode(), None)
        if not obj:
            raise self._failed(f"open {obj_path}")
        self._obj = obj
        if lib.load(obj) != 0:
            raise self._failed(f"load {obj_path}")
        for name in HOOKS:
            prog = lib.find_program(obj, name.encode())
            if not prog:
                raise BackendUnavailable(f"BPF recorder {obj_path}: no program {name}")
            link = lib.attach_cgroup(prog, self._cgroup_fd)
            if not link:
                raise self._failed(f"attach {name} to cgroup {self.cgroup}")
            self._links.append(link)
        self._owners_fd = lib.map_fd(obj, b"owners")
        self._exes_fd = lib.map_fd(obj, b"exes")
        self._conns_fd = lib.map_fd(obj, b"conns")
        if min(self._owners_fd, self._exes_fd, self._conns_fd) < 0:
            raise BackendUnavailable(f"BPF recorder {obj_path}: its maps are missing")

    @staticmethod
    def _failed(what: str) -> BackendUnavailable:
        return libbpf_failed(
            what,
            {
                errno.EPERM: "needs root with CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)",
                errno.EINVAL: "the kernel lacks cgroup BPF (CONFIG_CGROUP_BPF), a hook or a helper",
            },
            "; attribution stays with sock_diag and /proc",
        )

    def close(self) -> None:
        """Detach every program and free the object, or close the maps handed to us
        (idempotent)."""
        if self._shared:
            for fd in (self._owners_fd, self._exes_fd, self._conns_fd):
                os.close(fd)
            self._shared = False
        for link in self._links:
            self._lib.link_destroy(link)
        self._links.clear()
        if self._obj is not None:
            self._lib.close(self._obj)
            self._obj = None
        if self._cgroup_fd >= 0:
            os.close(self._cgroup_fd)
            self._cgroup_fd = -1

    def find(self, cookie: int, flow: Flow) -> Owner | None:
        """Who last connected or sent the socket `cookie` to `flow`'s destination; for UDP,
        else who sent there from `flow`'s port (the sender among SO_REUSEPORT siblings, when
        sock_diag named another); else the socket's latest user or its creator. None when the
        recorder never saw the socket (made before the programs were attached, or outside the
        cgroup). Loop only: it reuses one buffer."""
        family = 2 if isinstance(flow.dst, IPv4Address) else 10
        port = int.from_bytes(flow.dport.to_bytes(2, "big"), sys.byteorder)
        dst = flow.dst.packed
        if self._get(cookie, dst, port, family, 0, _KEY_SOCKET):
            return _owner(self._val.raw)
        if flow.proto is not Proto.TCP and self._get(
            self._netns, dst, port, family, flow.sport, _KEY_PORT
        ):
            return _owner(self._val.raw)
        if self._get(cookie, b"", 0, 0, 0, _KEY_SOCKET):
            return _owner(self._val.raw)
        return None

    def find_connected(self, flow: Flow) -> tuple[int, int, Owner] | None:
        """(socket uid, socket inode, owner) of the TCP socket that is connecting `flow` now,
        from one map read and no sock_diag request: the sock_ops program copied, when the
        kernel bound the socket's port (tcp_connect), the record `find` would read for its
        cookie, with the uid and inode sock_diag would give. None when there is no such record
        (the recorder never saw the socket, it closed, or the record is older than
        `_CONN_MAX_AGE_NS`): the caller then asks sock_diag. Loop only: it reuses one buffer.

        The record lives while its socket holds the flow's 4-tuple in our namespace (it is
        deleted when the socket reaches TCP_CLOSE, before the kernel frees the 4-tuple), and no
        other socket can hold it meanwhile: a later socket reusing the 4-tuple never reads an
        earlier one's record."""
        family = 2 if isinstance(flow.dst, IPv4Address) else 10
        _CONN_KEY.pack_into(
            self._conn_key, 0, self._netns, flow.src.packed, flow.dst.packed,
            flow.sport, flow.dport, family, 0,
        )  # fmt: skip
        if self._lib.lookup(self._conns_fd, self._conn_key, self._conn) != 0:
            return None
        _cookie, inode, when_ns, uid = _CONN.unpack_from(self._conn)
        if time.monotonic_ns() - when_ns > _CONN_MAX_AGE_NS:
            return None
        return uid, inode, _owner(self._conn.raw[: _OWNER.size])

    def connected_key(self, flow: Flow) -> tuple[int, bytes] | None:
        """(tgid, the fast path's key) of the TCP socket connecting `flow` now, as
        `find_connected` finds it: who connected it (tgid, start time, exec count, executable)
        as the kernel recorded it, the socket's uid, and the destination (`fastpath`)."""
        if self.find_connected(flow) is None:
            return None
        owner = self._conn.raw[: _OWNER.size]
        tgid, _tid, _uid, _gid, start_ns, ino, kdev, _hook, _when, _comm, exec_id = _OWNER.unpack(
            owner
        )
        _cookie, _inode, _when_ns, uid = _CONN.unpack_from(self._conn)
        family = 2 if isinstance(flow.dst, IPv4Address) else 10
        key = _FAST_KEY.pack(
            start_ns, exec_id, ino, tgid, kdev, uid, flow.dport, family, flow.dst.packed
        )
        return tgid, key

    def fast_fds(self) -> tuple[int, int, int, int] | None:
        """The fast path's maps (rules, generation, log ring) and its socket filter, when this
        process loaded the recorder; None for a queue reader's copy."""
        if self._obj is None:
            return None
        lib, obj = self._lib, self._obj
        prog = lib.find_program(obj, b"snitch_fast")
        fds = (
            lib.map_fd(obj, b"fast_rules"),
            lib.map_fd(obj, b"fast_gen"),
            lib.map_fd(obj, b"fast_log"),
            lib.program_fd(prog) if prog else -1,
        )
        return fds if min(fds) >= 0 else None

    def find_released(self, flow: Flow) -> Owner | None:
        """Who sent UDP (or UDP-Lite) from `flow`'s source port to its destination in the last
        30 s, for a flow whose socket sock_diag no longer finds: the datagram of a process that
        has exited (its socket with it). Connected UDP sockets are not covered: connect() binds
        the port after the hook runs."""
        family = 2 if isinstance(flow.dst, IPv4Address) else 10
        port = int.from_bytes(flow.dport.to_bytes(2, "big"), sys.byteorder)
        if not self._get(self._netns, flow.dst.packed, port, family, flow.sport, _KEY_PORT):
            return None
        owner = _owner(self._val.raw)
        return owner if time.monotonic_ns() - owner.when_ns < _GONE_MAX_AGE_NS else None

    def _get(self, cookie: int, addr: bytes, port: int, family: int, sport: int, kind: int) -> bool:
        _KEY.pack_into(self._key, 0, cookie, addr, port, family, sport, kind)
        return bool(self._lib.lookup(self._owners_fd, self._key, self._val) == 0)

    def exe_path(self, owner: Owner) -> str | None:
        """The executable's path as the recorder walked it (dentries up through the mounts),
        if it still names that very file from here (same device and inode); else None."""
        kdev = (os.major(owner.dev) << 20) | os.minor(owner.dev)
        key = ctypes.create_string_buffer(_EXE_KEY.pack(owner.ino, kdev, 0), _EXE_KEY.size)
        val = ctypes.create_string_buffer(_EXE_PATH.size)  # own buffers: called by the worker
        if self._lib.lookup(self._exes_fd, key, val) != 0:
            return None
        used, _depth, raw = _EXE_PATH.unpack(val.raw)
        parts = raw[:used].split(b"\0")
        path = "/" + "/".join(p.decode(errors="surrogateescape") for p in reversed(parts) if p)
        try:
            st = os.stat(path)
        except OSError:
            return None
        return path if (st.st_dev, st.st_ino) == (owner.dev, owner.ino) else None


if __name__ == "__main__":  # install.sh: python -m snitchd.procs.bpf build [STATE_DIR]
    import sys

    if len(sys.argv) < 2 or sys.argv[1] != "build":
        sys.exit("usage: python -m snitchd.procs.bpf build [STATE_DIR]")
    state = Path(sys.argv[2] if len(sys.argv) > 2 else "/var/lib/snitch")
    try:
        for source in SOURCES:
            print(build_object(state, source))
    except BackendUnavailable as exc:
        sys.exit(f"snitch: {exc}")
