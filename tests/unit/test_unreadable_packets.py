"""A queued packet snitchd cannot read is dropped whatever the fail mode, and said once a
minute (the real kernel case, a routing header built by an unprivileged program, is in
tests/integration/test_header_attacks.py). The firewall runs for real on a real store; the
packet is the recorder below the kernel."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest

from snitchd.config import Config, FailMode
from snitchd.queue import COPY_RANGE
from tests.support.firewall import Clock, EventRecorder, Packet, make_firewall


class Queued(Packet):
    """A packet from the OUTPUT hook, as the queue handed it: `payload` already cut."""

    outdev = 0
    hook = 3

    def __init__(self, payload: bytes) -> None:
        super().__init__()
        self.payload = payload

    def get_payload(self) -> bytes:
        return self.payload


def _routed_udp(segments: int) -> bytes:
    """An IPv6 UDP datagram with a segment routing header of `segments` addresses."""
    routing = struct.pack("!BBBBBBH", 17, segments * 2, 4, 0, 0, 0, 0) + bytes(16 * segments)
    udp = struct.pack("!HHHH", 40000, 53, 8, 0)
    fixed = struct.pack("!IHBB", 6 << 28, len(routing) + len(udp), 43, 64)
    return fixed + bytes(15) + b"\x01" + bytes(15) + b"\x02" + routing + udp


@pytest.mark.parametrize("fail_mode", list(FailMode))
def test_an_unreadable_packet_is_dropped_whatever_the_fail_mode(
    tmp_path: Path, clock: Clock, fail_mode: FailMode, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, it got the fail mode's verdict: accept by default, past every rule."""
    config = Config(database=str(tmp_path / "snitch.db"), fail_mode=fail_mode)
    fw = make_firewall(tmp_path / "snitch.db", clock, config, EventRecorder())
    try:
        cut = _routed_udp(100)[:256]  # the old copy: 1,608 bytes of routing header before ports
        packets = [Queued(cut) for _ in range(3)]
        with caplog.at_level(logging.WARNING, logger="snitchd.firewall"):
            for pkt in packets:
                fw.on_packet(pkt)  # type: ignore[arg-type]
        assert [p.verdict for p in packets] == ["drop"] * 3
        assert (fw.counters.errors, fw.counters.dropped) == (3, 3)
        said = [r.getMessage() for r in caplog.records]
        assert said == [
            "dropped 1 outbound packet(s) snitchd cannot read, the last: truncated udp header: "
            "the packet holds 256 bytes, its ports start at byte 1648"
        ]
    finally:
        fw.store.close()


def test_the_copy_holds_every_header_an_unprivileged_program_can_add() -> None:
    """IPV6_RTHDR takes a routing header of up to 2,048 bytes from any user."""
    assert COPY_RANGE >= 40 + 2048 + 8 + 60
