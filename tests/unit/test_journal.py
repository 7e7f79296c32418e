"""snitchd's lines in journald's native protocol, read back from a socket this test owns
(issue 20): priorities, SNITCH_* fields, multi-line and oversized entries, and the catalog."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from snitchd.journal import MESSAGE_IDS, Event, JournalHandler, journal_fields, journal_wanted
from tests.support.journal import receive

CATALOG = Path(__file__).resolve().parents[2] / "systemd" / "snitch.catalog"


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[socket.socket, logging.Logger]]:
    path = str(tmp_path / "journal.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    handler = JournalHandler(path)
    logger = logging.getLogger("snitchd.test-journal")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield sock, logger
    finally:
        logger.removeHandler(handler)
        handler.close()
        sock.close()


def test_an_alert_carries_its_priority_and_fields(journal: tuple[socket.socket, logging.Logger]):
    sock, logger = journal
    logger.warning(
        "alert %s: %s", "new-app", "curl connected",
        extra=journal_fields(Event.ALERT, kind="new-app", exe="/usr/bin/curl", uid=1000),
    )  # fmt: skip
    entry = receive(sock)
    assert entry["PRIORITY"] == "4"
    assert entry["MESSAGE"] == "snitchd.test-journal: alert new-app: curl connected"
    assert entry["SNITCH_EVENT"] == "alert" and entry["SNITCH_ALERT"] == "new-app"
    assert entry["SNITCH_EXE"] == "/usr/bin/curl" and entry["SNITCH_UID"] == "1000"
    assert entry["MESSAGE_ID"] == MESSAGE_IDS[Event.ALERT]
    assert entry["SYSLOG_IDENTIFIER"] == "snitchd"
    assert "SNITCH_DST" not in entry


def test_a_decision_is_debug_with_app_destination_and_verdict(journal):
    sock, logger = journal
    logger.debug(
        "verdict deny",
        extra=journal_fields(
            Event.DECISION, exe="/usr/bin/nc", dst="tcp 203.0.113.7:9000", verdict="deny"
        ),
    )
    entry = receive(sock)
    assert (entry["PRIORITY"], entry["SNITCH_VERDICT"]) == ("7", "deny")
    assert entry["SNITCH_DST"] == "tcp 203.0.113.7:9000"


def test_a_plain_line_and_a_traceback_keep_their_newlines(journal):
    sock, logger = journal
    logger.info("rules reloaded count=%d", 3)
    entry = receive(sock)
    assert entry["PRIORITY"] == "6" and "SNITCH_EVENT" not in entry
    try:
        raise ValueError("bad\npacket")
    except ValueError:
        logger.exception("packet failed")
    entry = receive(sock)
    assert entry["PRIORITY"] == "3"
    assert "ValueError: bad\npacket" in entry["MESSAGE"]


def test_an_entry_too_big_for_a_datagram_goes_as_a_memfd(journal):
    sock, logger = journal
    logger.warning("huge %s", "x" * 400_000)
    entry = receive(sock)
    assert len(entry["MESSAGE"]) > 400_000


def test_no_journal_socket_falls_back_to_stderr_with_a_priority_prefix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = JournalHandler(str(tmp_path / "absent.sock"))
    try:
        record = logging.LogRecord("snitchd", logging.ERROR, __file__, 1, "gone", (), None)
        handler.emit(record)
    finally:
        handler.close()
    assert capsys.readouterr().err == "<3>snitchd: gone\n"


def test_journal_stream_must_name_our_own_stderr(tmp_path: Path) -> None:
    with open(tmp_path / "err", "w") as f:
        st = os.fstat(f.fileno())
        assert journal_wanted({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f.fileno())
        assert not journal_wanted({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, f.fileno())
        assert not journal_wanted({}, f.fileno())
        assert not journal_wanted({"JOURNAL_STREAM": "junk"}, f.fileno())


def test_the_catalog_explains_every_message_id() -> None:
    text = CATALOG.read_text()
    ids = {line.split()[1] for line in text.splitlines() if line.startswith("-- ")}
    assert ids == set(MESSAGE_IDS.values())
