"""A client program for the client namespace; prints what it saw as one word.

  netclient.py tcp HOST PORT [--hold SECONDS]   connected | refused | timeout | error:...
  netclient.py udp HOST PORT                    reply | refused | timeout   (connected socket)
  netclient.py sendto HOST PORT                 reply | timeout             (never connect())

With --hold the TCP connection is kept open and an ECHO is exchanged every 0.2 s; it prints
"held" if every exchange worked, so a test can check an open connection is not cut.
"""

import argparse
import socket
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("tcp", "udp", "sendto"))
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--hold", type=float, default=0.0)
    args = parser.parse_args()
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    kind = socket.SOCK_STREAM if args.mode == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    sock.settimeout(args.timeout)
    try:
        if args.mode == "tcp":
            sock.connect((args.host, args.port))
            sock.recv(64)
            if args.hold:
                print("connected", flush=True)
                end = time.monotonic() + args.hold
                while time.monotonic() < end:
                    sock.sendall(b"ECHO ping\n")
                    if sock.recv(64) != b"ECHO ping\n":
                        print("cut", flush=True)
                        return 1
                    time.sleep(0.2)
                print("held")
                return 0
            print("connected")
        elif args.mode == "udp":
            sock.connect((args.host, args.port))
            sock.send(b"hello")
            sock.recv(64)
            print("reply")
        else:
            sock.sendto(b"hello", (args.host, args.port))
            sock.recvfrom(64)
            print("reply")
    except ConnectionRefusedError:
        print("refused")
    except TimeoutError:
        print("timeout")
    except OSError as exc:
        print(f"error:{exc.errno}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
