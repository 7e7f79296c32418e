"""A client program for the client namespace; prints what it saw as one word.

  netclient.py tcp HOST PORT [--hold SECONDS]   connected | refused | timeout | error:...
  netclient.py udp HOST PORT                    reply | refused | timeout   (connected socket)
  netclient.py sendto HOST PORT                 reply | timeout             (never connect())
  netclient.py resolve NAME PORT                as tcp, after an A query to 192.0.2.2
                                                (--server ADDR: another server; --pause: print
                                                "resolved", wait for a line on stdin, connect)

With --sport the socket is bound to that local port first (SO_REUSEADDR), as a program may
pick the ports another program's flow used. With --time the word is followed by the seconds the
attempt took (connect or exchange only, not the program's start-up). With --hold the TCP
connection is kept open and an ECHO is exchanged every 0.2 s; it prints "held" if every exchange
worked, so a test can check an open connection is not cut.
"""

import argparse
import socket
import sys
import time

import dns.message
import dns.query


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("tcp", "udp", "sendto", "resolve"))
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--time", action="store_true")
    parser.add_argument("--send", type=int, default=0, help="tcp: send N bytes, then close")
    parser.add_argument("--server", default="192.0.2.2", help="resolve: the DNS server to ask")
    parser.add_argument("--pause", action="store_true", help="resolve: wait for stdin first")
    parser.add_argument("--sport", type=int, default=0, help="bind to this local port first")
    args = parser.parse_args()
    start = time.monotonic()
    word = attempt(args)
    print(f"{word} {time.monotonic() - start:.4f}" if args.time else word)
    return 0


def attempt(args: argparse.Namespace) -> str:
    if args.mode == "resolve":
        # Ask the lab's DNS server (192.0.2.2) for the name, then connect to the answer.
        try:
            answer = dns.query.udp(
                dns.message.make_query(args.host, "A"), args.server, timeout=args.timeout
            )
        except TimeoutError:
            return "dns-timeout"
        addresses = [r.address for rrset in answer.answer for r in rrset if hasattr(r, "address")]
        if not addresses:
            return "nxdomain"
        args.mode, args.host = "tcp", addresses[0]
        if args.pause:
            print("resolved", flush=True)
            sys.stdin.readline()
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    kind = socket.SOCK_STREAM if args.mode == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    sock.settimeout(args.timeout)
    if args.sport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", args.sport))
    try:
        if args.mode == "tcp":
            sock.connect((args.host, args.port))
            if args.send:
                sock.sendall(b"x" * args.send)
                sock.shutdown(socket.SHUT_WR)
                received = 0
                while chunk := sock.recv(65536):
                    received += len(chunk)
                return f"sent {args.send} received {received}"
            sock.recv(64)
            if args.hold:
                print("connected", flush=True)
                end = time.monotonic() + args.hold
                while time.monotonic() < end:
                    sock.sendall(b"ECHO ping\n")
                    if sock.recv(64) != b"ECHO ping\n":
                        return "cut"
                    time.sleep(0.2)
                return "held"
            return "connected"
        elif args.mode == "udp":
            sock.connect((args.host, args.port))
            sock.send(b"hello")
            sock.recv(64)
            return "reply"
        sock.sendto(b"hello", (args.host, args.port))
        sock.recvfrom(64)
        return "reply"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error:{exc.errno}"


if __name__ == "__main__":
    sys.exit(main())
