"""Which container or guest a process belongs to, from its cgroup (issue 16).

Runs in the attribution worker, never on the packet loop: it reads /proc/PID/cgroup and
/proc/PID/status, and may ask the Docker (or Podman) API for a container's name over its unix
socket (bounded in time and size, cached per id). The cgroup is the one thing every runtime
sets and a process inside cannot leave (moving out needs write access to the host's cgroup
tree), so it is what names the container:

| runtime | cgroup path (systemd driver; cgroupfs driver) |
|---|---|
| docker | `.../docker-<64 hex>.scope`; `/docker/<64 hex>` |
| podman | `.../libpod-<64 hex>.scope` (not `libpod-conmon-`); `/libpod_parent/libpod-<id>` |
| nspawn | `machine.slice/machine-<name>.scope` |
| libvirt | `machine-qemu\\x2d<n>\\x2d<name>.scope` (or `lxc`); `machine/<name>.libvirt-qemu` |
| lxc | `lxc.payload.<name>`, `lxc.payload/<name>`, `/lxc/<name>` |

A rootless container's cgroup lies under its user's manager (`user@UID.service`): that user
owns it, and its flows are that user's to answer. Any other is a system container: the admins'.

Podman has no daemon: its API socket exists only while `podman.socket` (or `podman system
service`) runs, which Debian does not enable. Without it a Podman container's name is read from
its monitor, conmon (`conmon -c <id> -n <name>`), the parent of the container's first process:
only a conmon run by root, whose `-c` is the id the cgroup names, is believed (verified with
Podman 4.3.1, cgroupfs manager, tests/integration/test_podman.py).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from snitch_common.records import Container, Runtime

if TYPE_CHECKING:
    from snitchd.config import Config

__all__ = [
    "Names",
    "conmon_args",
    "container_from",
    "container_names",
    "container_of",
    "parse_cgroup",
    "pid_inside",
]

log = logging.getLogger(__name__)

_ID = r"([0-9a-f]{64})"
_PATTERNS: tuple[tuple[Runtime, re.Pattern[str]], ...] = (
    (Runtime.DOCKER, re.compile(rf"(?:^|/)docker-{_ID}\.scope(?:/|$)")),
    (Runtime.DOCKER, re.compile(rf"(?:^|/)docker/{_ID}(?:/|$)")),
    (Runtime.PODMAN, re.compile(rf"(?:^|/)libpod-{_ID}\.scope(?:/|$)")),
    (Runtime.PODMAN, re.compile(rf"(?:^|/)libpod_parent/libpod-{_ID}(?:/|$)")),
    (Runtime.LIBVIRT, re.compile(r"(?:^|/)machine/([^/]+)\.libvirt-(?:qemu|lxc)(?:/|$)")),
    (Runtime.NSPAWN, re.compile(r"(?:^|/)machine-([^/]+)\.scope(?:/|$)")),
    (Runtime.LXC, re.compile(r"(?:^|/)lxc\.payload[./]([^/]+)(?:/|$)")),
    (Runtime.LXC, re.compile(r"(?:^|/)lxc/([^/]+)(?:/|$)")),
)
_LIBVIRT_SCOPE = re.compile(r"(?:qemu|lxc)-\d+-(.+)")
_OWNER = re.compile(r"/user@(\d+)\.service(?:/|$)")
_NAME_MAX = 128  # a name longer than this is cut (it travels in prompts and log rows)
_API_TIMEOUT = 0.5  # seconds for one API answer
_API_MAX = 1 << 20  # bytes of one API answer read at most
_NAMES_MAX = 1024
_API_RUNTIMES = (Runtime.DOCKER, Runtime.PODMAN)
_PARENTS_MAX = 16  # processes walked up from a container's process to its conmon
_CMDLINE_MAX = 1 << 16  # bytes of conmon's command line read at most


def _unescape(name: str) -> str:
    r"""systemd's unit-name escaping (`\x2d` for "-" inside a name), undone."""
    return re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), name)


def parse_cgroup(text: str) -> Container | None:
    """The container a /proc/PID/cgroup text names, without its API name (the short id stands
    for it) and pid; None for a process of the host. Every hierarchy's line is read: the v2 line
    (`0::`) first, then v1 ones (a hybrid host puts systemd's scopes in `name=systemd`)."""
    lines = text.splitlines()
    lines.sort(key=lambda line: not line.startswith("0::"))
    for line in lines:
        path = line.split(":", 2)[-1]
        for runtime, pattern in _PATTERNS:
            m = pattern.search(path)
            if m is None:
                continue
            ident = m.group(1)
            owner = _OWNER.search(path)
            owner_uid = int(owner.group(1)) if owner is not None else None
            if runtime in (Runtime.DOCKER, Runtime.PODMAN):
                return Container(runtime, ident[:12], ident, None, owner_uid)
            name = _unescape(ident)
            kind = runtime
            if runtime is Runtime.NSPAWN:
                guest = _LIBVIRT_SCOPE.fullmatch(name)
                if guest is not None:  # libvirt's machines are scopes of machine.slice too
                    kind, name = Runtime.LIBVIRT, guest.group(1)
            name = name[:_NAME_MAX]
            return Container(kind, name, name, None, owner_uid)
    return None


def pid_inside(status: str) -> int | None:
    """The pid a process has in its own (innermost) pid namespace: the last `NSpid:` field."""
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            fields = line.split()[1:]
            return int(fields[-1]) if fields else None
    return None


class Names:
    """Container names from the runtimes' APIs (Docker's, and Podman's Docker-compatible one),
    cached per id. Asked only in the worker; a socket that is absent or unreadable, or an API
    that does not answer within `_API_TIMEOUT`, leaves the short id as the name."""

    def __init__(self, sockets: dict[Runtime, str]) -> None:
        self._sockets = sockets
        self._lock = threading.Lock()
        self._names: dict[tuple[Runtime, str], str] = {}

    def name(self, runtime: Runtime, ident: str) -> str | None:
        path = self._sockets.get(runtime)
        if not path:
            return None
        key = (runtime, ident)
        with self._lock:
            if key in self._names:
                return self._names[key]
        name = _ask_api(path, ident)
        if name is None:
            return None  # asked again next time: the container may just have started
        self._keep(key, name)
        return name

    def conmon_name(self, pid: int, ident: str) -> str | None:
        """A system Podman container's name from its conmon (module docstring), cached per id."""
        key = (Runtime.PODMAN, ident)
        with self._lock:
            if key in self._names:
                return self._names[key]
        name = _conmon_of(pid, ident)
        if name is not None:
            self._keep(key, name)
        return name

    def _keep(self, key: tuple[Runtime, str], name: str) -> None:
        with self._lock:
            self._names[key] = name
            while len(self._names) > _NAMES_MAX:
                del self._names[next(iter(self._names))]


def _ask_api(path: str, ident: str) -> str | None:
    """GET /containers/ID/json over the API's unix socket; the `Name` it gives ("/web-1")."""
    if not Path(path).exists():
        return None
    request = (
        f"GET /containers/{ident}/json HTTP/1.0\r\nHost: docker\r\nAccept: application/json\r\n\r\n"
    )
    chunks: list[bytes] = []
    size = 0
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(_API_TIMEOUT)
            sock.connect(path)
            sock.sendall(request.encode("ascii"))
            while size <= _API_MAX:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except OSError as exc:
        log.debug("container API not asked path=%s id=%s: %s", path, ident[:12], exc)
        return None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or head.split(b" ", 2)[1:2] != [b"200"]:
        return None
    try:
        name = json.loads(body)["Name"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(name, str):
        return None
    name = name.lstrip("/")
    return name[:_NAME_MAX] if name and name.isprintable() else None


def container_of(pid: int, names: Names | None = None) -> Container | None:
    """The container process `pid` runs in, with its name and its pid inside; None for a process
    of the host (or one that is gone)."""
    try:
        cgroup = Path(f"/proc/{pid}/cgroup").read_text(errors="replace")
        status = Path(f"/proc/{pid}/status").read_text(errors="replace")
    except OSError:
        return None
    found = container_from(cgroup, status, names)
    if (
        names is not None
        and found is not None
        and found.runtime is Runtime.PODMAN
        and found.owner_uid is None
        and found.name == found.id[:12]
    ):
        name = names.conmon_name(pid, found.id)
        if name is not None:
            return Container(found.runtime, name, found.id, found.pid, found.owner_uid)
    return found


def conmon_args(cmdline: bytes) -> tuple[str | None, str | None]:
    """The container id (`-c`/`--cid`) and name (`-n`/`--name`) of a conmon command line
    (NUL-separated, as /proc/PID/cmdline has it); None for what it does not give."""
    args = [a.decode("utf-8", "replace") for a in cmdline.split(b"\0")]
    if not args or Path(args[0]).name != "conmon":
        return None, None
    values: dict[str, str] = {}
    for i, arg in enumerate(args[1:], 1):
        key, eq, value = arg.partition("=")
        if key in ("-c", "--cid", "-n", "--name"):
            if not eq:
                value = args[i + 1] if i + 1 < len(args) else ""
            values.setdefault("id" if key in ("-c", "--cid") else "name", value)
    return values.get("id"), values.get("name")


def _conmon_of(pid: int, ident: str) -> str | None:
    """The name root's conmon gives container `ident`, walking up from `pid` (a process inside)
    to the first parent outside the container's cgroup. None if that parent is not a conmon of
    uid 0 for this very id (a container whose conmon died is reparented to init)."""
    for _ in range(_PARENTS_MAX):
        try:
            status = Path(f"/proc/{pid}/status").read_text(errors="replace")
        except OSError:
            return None
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        try:
            ppid = int(fields.get("PPid", "0").strip())
        except ValueError:
            return None
        if ppid <= 1:
            return None
        try:
            cgroup = Path(f"/proc/{ppid}/cgroup").read_text(errors="replace")
        except OSError:
            return None
        inside = parse_cgroup(cgroup)
        if inside is not None and inside.id == ident:
            pid = ppid
            continue
        try:
            parent = Path(f"/proc/{ppid}/status").read_text(errors="replace")
            with open(f"/proc/{ppid}/cmdline", "rb") as f:
                cmdline = f.read(_CMDLINE_MAX)
        except OSError:
            return None
        uids = next(
            (line.split()[1:] for line in parent.splitlines() if line.startswith("Uid:")), []
        )
        if not uids or any(uid != "0" for uid in uids):
            return None
        cid, name = conmon_args(cmdline)
        if cid != ident or not name or not name.isprintable():
            return None
        return name[:_NAME_MAX]
    return None


def container_from(cgroup: str, status: str, names: Names | None = None) -> Container | None:
    """`container_of` for a process's /proc/PID/cgroup and /proc/PID/status texts."""
    found = parse_cgroup(cgroup)
    if found is None:
        return None
    name = found.name
    # The system runtimes' APIs name system containers only: a user can make a cgroup named
    # `docker-<id>.scope` under their own manager with the id of root's container, and must
    # not borrow its name (and its rules) that way. A rootless container keeps its short id.
    if names is not None and found.owner_uid is None and found.runtime in _API_RUNTIMES:
        name = names.name(found.runtime, found.id) or name
    return Container(found.runtime, name, found.id, pid_inside(status), found.owner_uid)


def container_names(config: Config) -> Names:
    """The API sockets the config names (`docker_socket`, `podman_socket`; "" for none)."""
    sockets = {Runtime.DOCKER: config.docker_socket, Runtime.PODMAN: config.podman_socket}
    return Names({runtime: path for runtime, path in sockets.items() if path})
