"""Headers an unprivileged program can put on its own packets, against a real snitchd: none
may carry a flow past a rule."""

from __future__ import annotations

import time

import pytest

from conftest import AS_NOBODY, PYTHON, Lab
from tests.integration.readerparams import READERS
from tests.support.lab import wait_for

# One UDP datagram to the server with an IPv6 segment routing header (type 4) of `n` segments
# that all name the server (IPV6_RTHDR needs no privilege), then one without it.
ROUTED_DATAGRAMS = """
import socket, struct, sys, time
n = int(sys.argv[1])
server = socket.inet_pton(socket.AF_INET6, "2001:db8:1::2")
header = struct.pack("!BBBBBBH", 0, n * 2, 4, n - 1, n - 1, 0, 0) + server * n
routed = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
routed.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RTHDR, header)
routed.sendto(b"routed", ("2001:db8:1::2", 9999))
plain = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
plain.sendto(b"plain", ("2001:db8:1::2", 9999))
print("sent", len(header), flush=True)
time.sleep(1)  # the sockets stay while snitchd looks their owner up
"""


def _arrived(lab: Lab) -> int:
    """Datagrams to port 9999 that reached the server's namespace (a counting rule there)."""
    text = lab.ns(lab.server, "ip6tables", "-t", "raw", "-nvxL", "PREROUTING").stdout
    return sum(int(line.split()[0]) for line in text.splitlines() if "dpt:9999" in line)


def test_a_routing_header_before_the_ports_does_not_carry_a_flow_past_a_deny(lab: Lab) -> None:
    """The queue copied 256 bytes of each packet: a routing header (up to 2 KiB) pushed the
    ports past them, the packet could not be read, and it got the fail mode's verdict (accept
    by default): a datagram a rule denied went out, and no row said so. Now the copy holds
    every header an unprivileged program can add, so the flow is decided by the rule like any
    other; and a packet that still cannot be read is dropped, whatever the fail mode."""
    lab.start_daemon()
    lab.add_rule("deny to=2001:db8:1::2")
    lab.ns(lab.server, "ip6tables", "-t", "raw", "-I", "PREROUTING", "-p", "udp", "--dport", "9999")
    sent = lab.client_run(*AS_NOBODY, PYTHON, "-c", ROUTED_DATAGRAMS, "40")
    assert sent.strip() == "sent 648", sent  # 40 segments: the ports at byte 688
    time.sleep(0.5)
    assert _arrived(lab) == 0
    # Both datagrams denied, by the rule, for their sender: one row, the second its retry.
    rows = [r for r in lab.log_rows() if r["dport"] == 9999]
    assert [(r["action"], r["dst"], r["uid"], r["retries"]) for r in rows] == [
        ("deny", "2001:db8:1::2", 65534, 1)
    ], rows


# Root's raw socket: an IPv6 UDP datagram behind nine destination-options headers, more than
# snitch reads through (8); conntrack walks them and queues the flow as new.
UNREADABLE = """
import socket, struct
options = b"".join(struct.pack("!BB6s", 60 if i < 8 else 17, 0, b"\\x01\\x04" + bytes(4))
                   for i in range(9))
datagram = struct.pack("!HHHH", 40000, 9999, 13, 0) + b"hello"
raw = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 60)
raw.sendto(options + datagram, ("2001:db8:1::2", 0))
print("sent")
"""


@pytest.mark.parametrize("readers", READERS)
def test_a_packet_snitch_cannot_read_is_dropped_whatever_the_fail_mode(
    lab: Lab, readers: int
) -> None:
    """Before, it got the fail mode's verdict (accept by default), past every rule and with no
    row; now it is dropped and said (once a minute), by snitchd or by a queue reader."""
    lab.expect_log(r"WARNING snitchd\.\S+: dropped 1 outbound packet\(s\) snitchd cannot read")
    lab.start_daemon(queue_readers=readers)
    lab.ns(lab.server, "ip6tables", "-t", "raw", "-I", "PREROUTING", "-p", "udp", "--dport", "9999")
    assert lab.client_run(PYTHON, "-c", UNREADABLE).strip() == "sent"
    time.sleep(0.5)
    assert _arrived(lab) == 0
    assert "too many IPv6 extension headers" in lab.log_text()
    # A reader's counters reach snitchd's status with its next tally (about a second).
    wait_for(lambda: lab.ctl_json("status")["errors"] >= 1, 10, "the error counted in status")
