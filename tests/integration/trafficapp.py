"""An app that moves traffic the way a person would see it in a monitor: resolves a name at
the lab's DNS server (so snitch learns it), connects (and says "connected"), then sends
`total` bytes in uneven chunks over about `seconds` (the server echoes chunks that start
with "ECHO ", so bytes come back too). Prints "sent N" once every byte is acknowledged,
then keeps a trickle going (a 200th of `total` every half second, so a monitor still sees
it move) until stdin closes, then closes and prints "closed".

  trafficapp.py NAME PORT TOTAL SECONDS
"""

import math
import select
import socket
import struct
import sys
import time

import dns.message
import dns.query


def _drain(sock: socket.socket) -> None:
    """Read what the echo server sent back so far, without waiting for more."""
    sock.settimeout(0.01)
    try:
        while sock.recv(65536):
            pass
    except (TimeoutError, BlockingIOError):
        pass
    sock.settimeout(10)


def main() -> int:
    name, port, total, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    answer = dns.query.udp(dns.message.make_query(name, "A"), "192.0.2.2", timeout=5)
    address = next(r.address for rrset in answer.answer for r in rrset if hasattr(r, "address"))
    sock = socket.create_connection((address, port), timeout=10)
    sock.recv(64)  # the server's greeting
    print("connected", flush=True)
    steps = max(1, int(seconds / 0.25))
    weights = [1.2 + math.sin(k / 3.0) + (k % 7) / 7 for k in range(steps)]
    scale = total / sum(weights)
    sent = 0
    for k, weight in enumerate(weights):
        size = total - sent if k == steps - 1 else int(weight * scale)
        for start in range(0, size, 4000):
            chunk = min(4000, size - start)
            sock.sendall(b"ECHO " + b"x" * max(0, chunk - 5) if chunk > 5 else b"x" * chunk)
        sent += size
        _drain(sock)
        time.sleep(0.25)
    for _ in range(500):
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
        (unacked,) = struct.unpack_from("I", info, 24)
        if unacked == 0:
            break
        time.sleep(0.02)
    print("sent", sent, flush=True)
    trickle = b"ECHO " + b"x" * max(0, total // 200 - 5)
    for _ in range(2000):  # bounded: at most ~17 minutes
        if select.select([sys.stdin], [], [], 0.5)[0] and not sys.stdin.readline():
            break
        sock.sendall(trickle)
        _drain(sock)
    sock.close()
    print("closed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
