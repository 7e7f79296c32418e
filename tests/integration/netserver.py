"""A tiny server for the server namespace: HTTP-ish replies on TCP ports, echo on UDP ports
(UDP and UDP-Lite, IP protocol 136: the socket match reads both).

Prints "ready" once every socket listens, then serves until killed. Binds the wildcard
addresses, so every documentation address given to the namespace answers.
"""

import argparse
import contextlib
import selectors
import socket

UDPLITE = 136  # IPPROTO_UDPLITE (not in Python's socket module)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tcp", default="")
    parser.add_argument("--udp", default="")
    args = parser.parse_args()
    sel = selectors.DefaultSelector()
    for port in filter(None, args.tcp.split(",")):
        for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((addr, int(port)))
            s.listen(512)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, "tcp")
    for port in filter(None, args.udp.split(",")):
        for family, addr, proto in (
            (socket.AF_INET, "0.0.0.0", 0),
            (socket.AF_INET6, "::", 0),
            (socket.AF_INET, "0.0.0.0", UDPLITE),
            (socket.AF_INET6, "::", UDPLITE),
        ):
            s = socket.socket(family, socket.SOCK_DGRAM, proto)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((addr, int(port)))
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, "udp")
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if key.data == "tcp":
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(True)
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                sel.register(conn, selectors.EVENT_READ, "conn")
            elif key.data == "conn":
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(sock)
                    sock.close()
                elif data.startswith(b"ECHO "):
                    sock.sendall(data)
            else:
                try:
                    data, peer = sock.recvfrom(4096)
                    sock.sendto(data, peer)
                except OSError:
                    pass


if __name__ == "__main__":
    main()
