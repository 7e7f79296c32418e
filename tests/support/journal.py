"""journald's native protocol read back, as journald reads it: for the tests of snitchd's
journal lines (tests/unit/test_journal.py, tests/integration/test_journal_fields.py)."""

from __future__ import annotations

import array
import os
import socket
import struct

__all__ = ["parse_entry", "receive"]


def parse_entry(data: bytes) -> dict[str, str]:
    """The native protocol, as journald reads it."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            i = end + 1
        else:
            (size,) = struct.unpack("<Q", data[end + 1 : end + 9])
            fields[line.decode()] = data[end + 9 : end + 9 + size].decode()
            assert data[end + 9 + size : end + 10 + size] == b"\n"
            i = end + 10 + size
    return fields


def receive(sock: socket.socket) -> dict[str, str]:
    """One entry: a datagram, or a memfd passed with SCM_RIGHTS for a big one."""
    data, ancillary, _, _ = sock.recvmsg(1 << 20, socket.CMSG_SPACE(4))
    if not data:
        fds = array.array("i")
        for level, kind, payload in ancillary:
            assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
            fds.frombytes(payload[:4])
        with os.fdopen(fds[0], "rb") as f:
            f.seek(0)
            data = f.read()
    return parse_entry(data)
