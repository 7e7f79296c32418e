"""The pieces of a lab that tests and benchmarks share: commands with a time limit, waiting for
something to appear, ending a process we started, a veth pair between two namespaces, and a
private "system" bus that carries only the project's own policy.

Documentation addresses only; nothing here touches the machine's own network namespace. Every
process is ended by its own handle (its pid), never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ROOT", "Bus", "Lines", "add_veth", "end_child", "run", "stop_process", "wait_for"]

ROOT = Path(__file__).resolve().parents[2]


# The prefix that runs a command as uid 65534 with no groups: the unprivileged attacker.
AS_NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


def run(
    *argv: str, check: bool = True, timeout: float = 60, **kw: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout, **kw)


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> int:
    """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def end_child(proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """A child that stops when its stdin closes: close it, wait (kill after `timeout` s), close
    its stdout."""
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def add_veth(client: str, server: str, name: str, client_addr: str, server_addr: str) -> None:
    """A veth pair `name` between two namespaces, both ends up with a /24 address each."""
    run("ip", "link", "add", name, "netns", client, "type", "veth", "peer", "name", name,
        "netns", server)  # fmt: skip
    for ns, addr in ((client, client_addr), (server, server_addr)):
        run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{addr}/24", "dev", name)
        run("ip", "netns", "exec", ns, "ip", "link", "set", name, "up")


def children_running(pid: int, script: str) -> list[int]:
    """The pids of `pid`'s child processes that run a script whose path ends with `script`
    (snitchd's helpers started by path: procs/execs.py, procs/hasher.py)."""
    found = []
    children: set[str] = set()  # each thread's children are listed under its task
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            children.update((task / "children").read_text().split())
    for child in children:
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if any(arg.endswith(script.encode()) for arg in argv):
                found.append(int(child))
    return found


def kill_and_see_replaced(children: Callable[[], list[int]], what: str) -> tuple[int, int]:
    """Kill the one helper child `children()` lists (ours: snitchd, which the test started,
    started it) and wait for snitchd to start another; (the killed pid, the new one)."""
    wait_for(lambda: len(children()) == 1, 10, f"one {what}")
    (first,) = children()
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: children() not in ([], [first]), 20, f"a new {what}")
    (second,) = children()
    return first, second


class Bus:
    """A private "system" bus: the distro's system.conf, listening on a temp socket, with only
    the project's own policy file included (not whatever the machine has installed)."""

    def __init__(self) -> None:
        # Not under pytest's tmp dir: an unprivileged test caller must reach the socket.
        self.dir = Path(tempfile.mkdtemp(prefix="snitch-bus-"))
        policy = self.dir / "policy"
        policy.mkdir(parents=True)
        shutil.copy(ROOT / "systemd" / "org.snitch.Firewall1.conf", policy)
        text = Path("/usr/share/dbus-1/system.conf").read_text()
        for tag in ("user", "pidfile", "listen", "includedir"):
            text = re.sub(rf"\s*<{tag}>.*?</{tag}>", "", text, flags=re.S)
        text = re.sub(r"\s*<fork\s*/>", "", text)
        text = re.sub(r"\s*<include [^>]*>.*?</include>", "", text, flags=re.S)
        self.socket = self.dir / "system_bus_socket"
        extra = f"<listen>unix:path={self.socket}</listen>\n<includedir>{policy}</includedir>\n"
        text = text.replace("</busconfig>", extra + "</busconfig>")
        conf = self.dir / "system.conf"
        conf.write_text(text)
        self.address = f"unix:path={self.socket}"
        with open(self.dir / "dbus.log", "w") as err:
            self.proc = subprocess.Popen(
                ["dbus-daemon", f"--config-file={conf}", "--nofork", "--nosyslog"],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        os.chmod(self.dir, 0o755)
        wait_for(self._listening, 10, "the private bus listening")

    def _listening(self) -> bool:
        """Whether the bus takes a connection: its socket file exists from bind(), a moment
        before listen(), and a client that came in between was refused (seen under load)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    def stop(self) -> None:
        stop_process(self.proc, 5)
        shutil.rmtree(self.dir, ignore_errors=True)


class Lines:
    """A child's stdout as JSON lines, read by a thread so the test can wait with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.queue.put(line)
        self.queue.put("")

    def next(self, timeout: float) -> Any:
        try:
            line = self.queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            raise AssertionError(f"no line from the child within {timeout:.1f} s") from None
        assert line, f"child exited (status {self.proc.poll()})"
        return json.loads(line) if line.startswith(("{", "[")) else line.strip()

    def drain(self, quiet: float) -> int:
        """Skip lines until none came for `quiet` seconds; how many were skipped."""
        skipped = 0
        while True:
            try:
                line = self.queue.get(timeout=quiet)
            except queue.Empty:
                return skipped
            assert line, f"child exited (status {self.proc.poll()})"
            skipped += 1

    def until(self, match: dict[str, Any], timeout: float) -> Any:
        """The first line whose fields include `match`, skipping others (other flows' ends)."""
        end = time.monotonic() + timeout
        while True:
            row = self.next(max(0.0, end - time.monotonic()))
            if match.items() <= row.items():
                return row
