"""snitchd under a journal: its lines reach journald's native socket (one this test owns) with
priorities and SNITCH_* fields, so `journalctl SNITCH_EVENT=alert` and `-p warning` work
(issue 20). The lab has no journald: the test parses the native protocol itself, as journald
does (tests/unit/test_journal.py checks the parser and the big-entry path)."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from conftest import Lab
from tests.support.journal import receive


class JournalReader:
    """Reads the socket from a thread of its own, from before snitchd starts: the socket's
    queue is net.unix.max_dgram_qlen datagrams (10 where systemd did not raise it), and
    snitchd's first lines (migrations, start-up) are more than that; unread, the rest would
    go to stderr, as they should when journald is behind."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.seen: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                entry = receive(self.sock)
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.seen.append(entry)

    def until(self, want: dict[str, str]) -> dict[str, str]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with self._lock:
                for entry in self.seen:
                    if all(entry.get(k) == v for k, v in want.items()):
                        return entry
            time.sleep(0.05)
        messages = [e.get("MESSAGE") for e in self.seen]
        raise AssertionError(f"no journal entry with {want}; got {messages}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_snitchd_logs_to_the_journal_with_fields(lab: Lab, monkeypatch: pytest.MonkeyPatch):
    path = str(lab.tmp / "journal.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    lab.daemon_log.touch()
    st = os.stat(lab.daemon_log)  # snitchd's stderr: what systemd would name JOURNAL_STREAM
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    monkeypatch.setenv("SNITCH_JOURNAL_SOCKET", path)
    journal = JournalReader(sock)
    try:
        lab.start_daemon()
        start = journal.until({"SNITCH_EVENT": "start"})
        assert start["PRIORITY"] == "6" and start["SYSLOG_IDENTIFIER"] == "snitchd"
        rule = lab.add_rule("allow port=80")
        added = journal.until({"SNITCH_EVENT": "rule-added"})
        assert added["SNITCH_RULE_ID"] == str(rule)
        assert lab.py("tcp", "192.0.2.2", 9000, "--timeout", "1") == "timeout"
        denied = journal.until({"SNITCH_EVENT": "decision", "SNITCH_VERDICT": "deny"})
        assert denied["PRIORITY"] == "7" and "192.0.2.2:9000" in denied["SNITCH_DST"]
        alert = journal.until({"SNITCH_EVENT": "alert"})
        assert alert["PRIORITY"] == "4" and alert["SNITCH_ALERT"] == "new-app"
        lab.stop_daemon()
        journal.until({"SNITCH_EVENT": "stop"})
        # A burst beyond the socket's queue (net.unix.max_dgram_qlen) is not waited for on the
        # packet loop: those lines go to stderr with their priority prefix, nothing lost.
        for line in lab.log_text().splitlines():
            assert line[:3] in {"<2>", "<3>", "<4>", "<6>", "<7>"}, line
    finally:
        journal.close()
        sock.close()
