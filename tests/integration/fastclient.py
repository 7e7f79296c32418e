"""One process that connects again and again, as told on stdin, one word per line out.

  tcp HOST PORT      connect (2 s at most), close: connected | refused | timeout
  exec PROGRAM ARG…  execve() PROGRAM: the same process (pid, start time), another executable

The fast path (`snitchd.fastpath`) keys on the process, so its tests need one process making
many connects, and one that becomes another program.
"""

import os
import socket
import sys


def connect(host: str, port: int) -> str:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect((host, port))
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            return f"error:{exc.errno}"
    return "connected"


def main() -> None:
    for line in sys.stdin:
        words = line.split()
        if words[0] == "tcp":
            print(connect(words[1], int(words[2])), flush=True)
        elif words[0] == "exec":
            os.execv(words[1], words[1:])


main()
