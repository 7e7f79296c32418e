"""snitchd's log lines to the journal: the right priority, and fields a machine can select on.

Under systemd, stderr reaches journald as a stream: every line at priority info, with our own
timestamp inside the message, and no fields (`journalctl -u snitchd -p warning` showed none of
the alerts). When `JOURNAL_STREAM` names our stderr, this handler speaks journald's native
protocol instead (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/: one datagram per entry on
/run/systemd/journal/socket, `KEY=value` lines, a binary-safe form for values with a newline,
and a memfd passed with SCM_RIGHTS for an entry too big for one datagram). No libsystemd:
python3-systemd is a Debian package, not in our venv, and the protocol is thirty lines.

A line may carry `extra=journal_fields(Event.X, ...)`: SNITCH_EVENT, MESSAGE_ID (one per event
kind, explained in systemd/snitch.catalog), SNITCH_EXE, SNITCH_DST, SNITCH_VERDICT,
SNITCH_RULE_ID, SNITCH_UID, so `journalctl SNITCH_EVENT=alert` works. Where there is no
journal (a terminal, the test lab), lines are plain text on stderr as before. The handler never
raises into the packet loop: a send that fails falls back to stderr with a `<N>` prefix.
"""

from __future__ import annotations

import array
import enum
import errno
import logging
import os
import socket
import struct
import sys
from dataclasses import dataclass

__all__ = [
    "JOURNAL_SOCKET",
    "MESSAGE_IDS",
    "Event",
    "JournalFields",
    "JournalHandler",
    "encode_entry",
    "journal_fields",
    "journal_wanted",
    "setup_logging",
]

JOURNAL_SOCKET = "/run/systemd/journal/socket"
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Event(enum.Enum):
    """The kinds of line a monitoring system selects on (`SNITCH_EVENT=`)."""

    START = "start"
    STOP = "stop"
    CONFIG = "config"  # reloaded: default action, fail mode
    RULE_ADDED = "rule-added"
    RULE_DELETED = "rule-deleted"
    ALERT = "alert"
    DECISION = "decision"  # per flow, at debug only
    MODE = "mode"  # the mode changed (issue 17): SNITCH_KIND is the new mode
    PROFILE = "profile"  # the active profile changed: SNITCH_KIND is the new one ("-": none)


# MESSAGE_ID per event kind (fixed forever: catalogs and queries use them), 128-bit, random.
MESSAGE_IDS: dict[Event, str] = {
    Event.START: "4f0b3a1c9d8e4b7a9a51c2f36e0d7b10",
    Event.STOP: "4f0b3a1c9d8e4b7a9a51c2f36e0d7b11",
    Event.CONFIG: "4f0b3a1c9d8e4b7a9a51c2f36e0d7b12",
    Event.RULE_ADDED: "4f0b3a1c9d8e4b7a9a51c2f36e0d7b13",
    Event.RULE_DELETED: "4f0b3a1c9d8e4b7a9a51c2f36e0d7b14",
    Event.ALERT: "4f0b3a1c9d8e4b7a9a51c2f36e0d7b15",
    Event.DECISION: "4f0b3a1c9d8e4b7a9a51c2f36e0d7b16",
    Event.MODE: "4f0b3a1c9d8e4b7a9a51c2f36e0d7b17",
    Event.PROFILE: "4f0b3a1c9d8e4b7a9a51c2f36e0d7b18",
}

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


@dataclass(frozen=True, slots=True)
class JournalFields:
    """The structured part of one line; None fields are left out."""

    event: Event
    exe: str | None = None
    dst: str | None = None
    verdict: str | None = None
    rule_id: int | None = None
    uid: int | None = None
    kind: str | None = None  # an alert's kind (new-app, dns-spoofed, …)

    def pairs(self) -> list[tuple[str, str]]:
        out = [("SNITCH_EVENT", self.event.value), ("MESSAGE_ID", MESSAGE_IDS[self.event])]
        for key, value in (
            ("SNITCH_EXE", self.exe),
            ("SNITCH_DST", self.dst),
            ("SNITCH_VERDICT", self.verdict),
            ("SNITCH_RULE_ID", self.rule_id),
            ("SNITCH_UID", self.uid),
            ("SNITCH_ALERT", self.kind),
        ):
            if value is not None:
                out.append((key, str(value)))
        return out


def journal_fields(
    event: Event,
    *,
    exe: str | None = None,
    dst: str | None = None,
    verdict: str | None = None,
    rule_id: int | None = None,
    uid: int | None = None,
    kind: str | None = None,
) -> dict[str, JournalFields]:
    """What to pass as a log call's `extra=`."""
    return {"snitch": JournalFields(event, exe, dst, verdict, rule_id, uid, kind)}


def encode_entry(pairs: list[tuple[str, str]]) -> bytes:
    """The native protocol: `KEY=value\\n`, or for a value with a newline
    `KEY\\n<64-bit little-endian length>value\\n`."""
    out = bytearray()
    for key, value in pairs:
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """One datagram per record to journald's socket (`path`)."""

    def __init__(self, path: str = JOURNAL_SOCKET, identifier: str = "snitchd") -> None:
        super().__init__()
        self.path = path
        self.identifier = identifier
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # Never wait for journald on the packet loop: a full queue (journald busy; at most
        # net.unix.max_dgram_qlen datagrams, 512 with systemd's sysctl defaults, 10 without)
        # raises BlockingIOError, and the line goes to stderr, with its priority, instead.
        self._sock.setblocking(False)

    def entry(self, record: logging.LogRecord) -> list[tuple[str, str]]:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        pairs = [
            ("MESSAGE", f"{record.name}: {message}"),
            ("PRIORITY", str(_PRIORITY.get(record.levelno, 6))),
            ("SYSLOG_IDENTIFIER", self.identifier),
            ("LOGGER", record.name),
            ("CODE_FILE", record.pathname),
            ("CODE_LINE", str(record.lineno)),
            ("CODE_FUNC", record.funcName or ""),
        ]
        fields = getattr(record, "snitch", None)
        if isinstance(fields, JournalFields):
            pairs += fields.pairs()
        return pairs

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = encode_entry(self.entry(record))
            self._send(data)
        except OSError:
            # No journal after all (stopped, or the socket is gone): the line still goes out,
            # on stderr, where journald's stream reader takes the <N> prefix as its priority.
            prio = _PRIORITY.get(record.levelno, 6)
            try:
                sys.stderr.write(f"<{prio}>{record.name}: {record.getMessage()}\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
        except Exception:
            self.handleError(record)

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendto(data, self.path)
        except OSError as exc:
            if exc.errno != errno.EMSGSIZE:  # too big for one datagram: send it as a memfd
                raise
            fd = os.memfd_create("snitchd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            try:
                os.write(fd, data)
                self._sock.sendmsg(
                    [], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))],
                    0, self.path,
                )  # fmt: skip
            finally:
                os.close(fd)

    def close(self) -> None:
        self._sock.close()
        super().close()


def journal_wanted(environ: dict[str, str] | None = None, fd: int = 2) -> bool:
    """True when systemd connected our stderr to the journal: `JOURNAL_STREAM` is its
    `device:inode`, and `fd` is still that stream (not redirected by whoever started us)."""
    env = os.environ if environ is None else environ
    stream = env.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    if not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def setup_logging(level: int) -> None:
    """The journal when systemd gave us one, plain lines on stderr otherwise.
    `SNITCH_JOURNAL_SOCKET` points the handler at another socket (the tests own one).
    pyroute2 logs every netlink message at debug: with `--debug` that flooded the journal's
    socket (and hid snitchd's own lines), so it logs warnings only."""
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    root = logging.getLogger()
    if journal_wanted():
        handler: logging.Handler = JournalHandler(
            os.environ.get("SNITCH_JOURNAL_SOCKET", JOURNAL_SOCKET)
        )
        root.handlers[:] = [handler]
        root.setLevel(level)
        return
    logging.basicConfig(level=level, format=PLAIN_FORMAT, stream=sys.stderr)
