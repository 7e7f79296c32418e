"""open_regular: the paths snitchd hashes for someone else never open a device or a FIFO."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from snitchd.regularfile import open_regular


def test_a_regular_file_is_opened_for_reading(tmp_path: Path) -> None:
    target = tmp_path / "app"
    target.write_bytes(b"\x7fELF")
    link = tmp_path / "link"
    link.symlink_to(target)
    fd = open_regular(str(link))
    try:
        assert os.read(fd, 8) == b"\x7fELF"
    finally:
        os.close(fd)


def test_a_fifo_a_directory_and_a_device_are_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # a plain open() for reading would wait here for a writer
    for path in (str(fifo), str(tmp_path), "/dev/null"):
        with pytest.raises(OSError, match="not a regular file"):
            open_regular(path)


def test_a_terminal_never_becomes_the_controlling_terminal_of_a_session_leader() -> None:
    """snitchd is a session leader with no terminal: open() of a tty would make it its own."""
    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        try:
            os.setsid()
            with contextlib.suppress(OSError):  # refused: the point is what it did not do
                open_regular(name)
            tty_nr = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[4])
            os._exit(0 if tty_nr == 0 else 1)
        except BaseException:
            os._exit(2)
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(master)
    assert os.waitstatus_to_exitcode(status) == 0
