"""snitchd under a journal: its lines reach journald's native socket (one this test owns) with
priorities and SNITCH_* fields, so `journalctl SNITCH_EVENT=alert` and `-p warning` work
(issue 20). The lab has no journald: the test parses the native protocol itself, as journald
does (tests/unit/test_journal.py checks the parser and the big-entry path)."""

from __future__ import annotations

import os
import socket
import time

import pytest

from conftest import Lab
from tests.support.journal import receive


def entries_until(sock: socket.socket, want: dict[str, str], seen: list[dict[str, str]]):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for entry in seen:
            if all(entry.get(k) == v for k, v in want.items()):
                return entry
        try:
            seen.append(receive(sock))
        except TimeoutError:
            continue
    raise AssertionError(f"no journal entry with {want}; got {[e.get('MESSAGE') for e in seen]}")


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
    seen: list[dict[str, str]] = []
    try:
        lab.start_daemon()
        start = entries_until(sock, {"SNITCH_EVENT": "start"}, seen)
        assert start["PRIORITY"] == "6" and start["SYSLOG_IDENTIFIER"] == "snitchd"
        rule = lab.add_rule("allow port=80")
        added = entries_until(sock, {"SNITCH_EVENT": "rule-added"}, seen)
        assert added["SNITCH_RULE_ID"] == str(rule)
        assert lab.py("tcp", "192.0.2.2", 9000, "--timeout", "1") == "timeout"
        denied = entries_until(sock, {"SNITCH_EVENT": "decision", "SNITCH_VERDICT": "deny"}, seen)
        assert denied["PRIORITY"] == "7" and "192.0.2.2:9000" in denied["SNITCH_DST"]
        alert = entries_until(sock, {"SNITCH_EVENT": "alert"}, seen)
        assert alert["PRIORITY"] == "4" and alert["SNITCH_ALERT"] == "new-app"
        lab.stop_daemon()
        entries_until(sock, {"SNITCH_EVENT": "stop"}, seen)
        # A burst beyond the socket's queue (net.unix.max_dgram_qlen) is not waited for on the
        # packet loop: those lines go to stderr with their priority prefix, nothing lost.
        for line in lab.log_text().splitlines():
            assert line[:3] in {"<2>", "<3>", "<4>", "<6>", "<7>"}, line
    finally:
        sock.close()
