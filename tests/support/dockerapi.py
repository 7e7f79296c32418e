"""A stand-in for dockerd's API socket: names containers by id, as `docker inspect` does.

It answers from a process of its own. snitchd gives the API 0.5 s, and a thread of the pytest
process missed that twice in CI beside the other half of the suite: the container was then
named by its id and a test's rule on its name did not match.

    python -m tests.support.dockerapi FD NAMES ASKED   # serve the listening socket FD
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from pathlib import Path

__all__ = ["DockerApi"]

_ROOT = Path(__file__).resolve().parents[2]


class DockerApi:
    """The API at `path`, its names set with `name`; `asked` counts the requests served."""

    def __init__(self, path: Path, names: dict[str, str]) -> None:
        self.path = path
        self._names = dict(names)
        self._names_file = path.with_name(path.name + ".names.json")
        self._asked_file = path.with_name(path.name + ".asked")
        self._asked_file.write_bytes(b"")
        self._write_names()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(str(path))
            sock.listen(8)  # listening before the server starts: no wait for it
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.dockerapi", str(sock.fileno()),
                 str(self._names_file), str(self._asked_file)],
                pass_fds=(sock.fileno(),),
                cwd=_ROOT,
            )  # fmt: skip

    def name(self, ident: str, name: str) -> None:
        self._names[ident] = name
        self._write_names()

    @property
    def asked(self) -> int:
        return len(self._asked_file.read_bytes())

    def _write_names(self) -> None:
        """Whole or not at all: the server may read the file at any moment."""
        part = self._names_file.with_suffix(".part")
        part.write_text(json.dumps(self._names))
        part.replace(self._names_file)

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)
        self.path.unlink(missing_ok=True)


def _answer(conn: socket.socket, names_file: Path, asked_file: Path) -> None:
    conn.settimeout(2)
    request = b""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in request and len(request) < 8192:
            chunk = conn.recv(4096)
            if not chunk:
                break
            request += chunk
    with asked_file.open("ab") as asked:
        asked.write(b".")
    names = json.loads(names_file.read_text())
    path = request.split(b" ", 2)[1].decode() if request.count(b" ") >= 2 else ""
    ident = path.removeprefix("/containers/").removesuffix("/json")
    if ident in names:
        body = json.dumps({"Id": ident, "Name": "/" + names[ident]}).encode()
        head = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
    else:
        body = b'{"message":"No such container"}'
        head = b"HTTP/1.0 404 Not Found\r\n"
    with contextlib.suppress(OSError):
        conn.sendall(head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


def main(argv: list[str]) -> int:
    fd, names_file, asked_file = int(argv[0]), Path(argv[1]), Path(argv[2])
    with socket.socket(fileno=fd) as sock:
        while True:
            conn, _ = sock.accept()
            with conn:
                _answer(conn, names_file, asked_file)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
