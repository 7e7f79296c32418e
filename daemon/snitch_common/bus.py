"""The bus vocabulary both sides of snitch's D-Bus API speak: names, paths, and the a{sv} codecs.

snitchd exports `org.snitch.Firewall1`; an agent (the notifier, `snitchctl agent`) exports
`org.snitch.Agent1` and registers it. Records travel as `a{sv}` so that fields can be added
without breaking old peers; this module turns them back into records. It imports dbus-fast only.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any

from dbus_fast import Message, Variant
from dbus_fast.aio import MessageBus

__all__ = [
    "AGENT_INTERFACE",
    "AGENT_PATH",
    "BUS_NAME",
    "INTERFACE",
    "MAX_LOG_ROWS",
    "MAX_RULES_PAGE",
    "MAX_TOP_APPS",
    "OBJECT_PATH",
    "PromptView",
    "broadcast",
    "call_bus_daemon",
    "disconnected",
    "patient_writes",
    "plain",
]

BUS_NAME = "org.snitch.Firewall1"
OBJECT_PATH = "/org/snitch/Firewall1"
INTERFACE = "org.snitch.Firewall1"
AGENT_INTERFACE = "org.snitch.Agent1"
AGENT_PATH = "/org/snitch/Agent1"

# The most a call returns; a larger `limit` is clamped, and clients page (Log by `before`, the
# oldest id they hold; ListRules by `offset`). The reply is marshalled on snitchd's packet loop:
# 1,000 log rows took 6-12 ms there, 10,000 took 60 ms (2 cores, busy).
MAX_LOG_ROWS = 1000
MAX_RULES_PAGE = 1000
MAX_TOP_APPS = 1000


async def call_bus_daemon(bus: MessageBus, member: str, signature: str, body: list[Any]) -> Message:
    """A call to the bus itself (org.freedesktop.DBus): caller identity, match rules."""
    reply = await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member=member,
            signature=signature,
            body=body,
        )
    )
    assert reply is not None
    return reply


def broadcast(msg: Message) -> bool:
    """Whether `msg` was sent to every connection whose match rules take it, not to us alone.
    A broadcast reached us through one of our match rules, whose `sender` the bus checks; a
    signal addressed to us passes no rule, and any user may send one, under any name."""
    return msg.destination is None


def disconnected(bus: MessageBus) -> asyncio.Future[None]:
    """`bus.wait_for_disconnect()` as a future (dbus-fast leaves that method unannotated)."""
    return asyncio.ensure_future(bus.wait_for_disconnect())  # type: ignore[no-untyped-call]


def plain(value: Any) -> Any:
    """Variants (and containers of them) → plain Python values, for printing and JSON."""
    if isinstance(value, Variant):
        return plain(value.value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


# The notes of `Process.notes` that name what runs rather than warn.
_NAMING_NOTES = ("script ", "inline code", "container ")


@dataclass(frozen=True, slots=True)
class PromptView:
    """A prompt as an agent shows it; built from the daemon's a{sv}, unknown keys ignored."""

    id: int
    exe: str | None
    pid: int | None
    uid: int | None
    user: str | None
    cmdline: tuple[str, ...]
    parents: tuple[tuple[int, str], ...]
    sha256: str | None
    proto: str
    dst: str
    port: int
    iface: str
    host: str | None
    deadline: float
    default_action: str
    verified: bool = True
    tampered: bool = False
    script: str | None = None  # the script's path, "inline code", or None (no interpreter)
    notes: tuple[str, ...] = ()  # what was checked of who it is, as the log says it
    source: str = ""  # how the owner was found: bpf, sock_diag, uid-only, kernel
    # The name host and domain answers name: one this process itself resolved (issue 15); None
    # when `host` came from another program's lookup or none: they name the address.
    rule_host: str | None = None
    # A container's flow (issue 16): "container web-1 (docker), process nginx (pid in
    # container 7)", and its name and runtime ("" for a flow of this machine).
    container: str = ""
    container_name: str = ""
    runtime: str = ""
    # The profile active when it was asked (issue 17; "" for none): what "in this profile
    # only" (`Reach.PROFILE`) names.
    profile: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptView:
        return cls(
            id=int(d["id"]),
            exe=d.get("exe"),
            pid=d.get("pid"),
            uid=d.get("uid"),
            user=d.get("user"),
            cmdline=tuple(d.get("cmdline", ())),
            parents=tuple((int(p), str(e)) for p, e in d.get("parents", ())),
            sha256=d.get("sha256"),
            proto=str(d.get("proto", "")),
            dst=str(d.get("dst", "")),
            port=int(d.get("port", 0)),
            iface=str(d.get("iface", "")),
            host=d.get("host"),
            deadline=float(d.get("deadline", 0.0)),
            default_action=str(d.get("default_action", "deny")),
            verified=bool(d.get("verified", True)),
            tampered=bool(d.get("tampered", False)),
            script=d.get("script"),
            notes=tuple(str(n) for n in d.get("notes", ())),
            source=str(d.get("source", "")),
            rule_host=d.get("rule_host"),
            container=str(d.get("container", "")),
            container_name=str(d.get("container_name", "")),
            runtime=str(d.get("runtime", "")),
            profile=str(d.get("profile", "")),
        )

    @property
    def destination(self) -> str:
        where = f"{self.host} ({self.dst})" if self.host else self.dst
        port = f" port {self.port}" if self.proto in ("tcp", "udp") else ""
        return f"{where}{port}/{self.proto}"

    @property
    def warnings(self) -> tuple[str, ...]:
        """The notes that warn (an unverified executable, a script not trusted, preloaded
        code, a tracer), without those that name what runs (its script, inline code, its
        container), which agents show in rows of their own."""
        return tuple(
            n
            for n in self.notes
            if n.startswith("script not trusted") or not n.startswith(_NAMING_NOTES)
        )

    @property
    def app_known(self) -> bool:
        """False for the kernel's flows and a sender not found: no rule can name their app, so
        the answers that widen from the app (`APP_SCOPES`) are refused for them."""
        return self.exe is not None or bool(self.container)

    @property
    def who(self) -> str:
        if self.container:
            return self.container
        if self.exe is None:
            return "kernel" if self.uid is None else f"uid {self.uid} (process not found)"
        return self.exe


class _PatientSocket:
    """The bus's socket as dbus-fast's writer sees it: a send the kernel cannot take now
    (EAGAIN) wrote nothing, so the writer waits for the socket to be writable again.

    dbus-fast 5.2's writer (`aio.message_bus._MessageWriter.write_callback`) takes any error
    of `send` as the connection's end and closes the bus: a burst of signals or prompt calls
    that fills the socket buffer while dbus-daemon is busy cut snitchd off the bus (every agent
    gone, every prompt lost; any user can cause a burst). Its writer already handles a short
    write by waiting for writable, and a write of 0 bytes is a short write. (dbus-next #153
    reports the same in the code dbus-fast came from.) Messages with file descriptors go
    through `sendmsg`, untouched: snitch sends none."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: Any) -> int:
        try:
            return self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def patient_writes(bus: MessageBus) -> MessageBus:
    """Make a connected bus wait out a full socket instead of closing (`_PatientSocket`).
    The writer is private to dbus-fast (pinned in pyproject.toml); if it is not where this
    expects it, the bus is left as it was, and tests/integration/test_bus_burst.py fails."""
    writer = getattr(bus, "_writer", None)
    sock = getattr(writer, "sock", None)
    if isinstance(sock, socket.socket):
        writer.sock = _PatientSocket(sock)  # type: ignore[union-attr]
    return bus
