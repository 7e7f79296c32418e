"""The socket match's programs, loaded and pinned as snitchd does (`socketmatch`), in a mount
namespace of their own: the BPF file system they mount and pin in never reaches the machine's.

What they decide is tested through snitchd in tests/integration/test_connmark.py (the
`udp` tuple-reuse tests and the per-user limit of new sockets)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import PYTHON
from snitchd.socketmatch import NAMED_PIN, PROGRAMS, QUEUED_PIN

# the programs, and the maps of named sockets and queued datagrams' sockets, for the readers
PINNED = (*PROGRAMS, NAMED_PIN, QUEUED_PIN)

# Two loads in one namespace (the second is a restart after a crash that left the first's pins),
# then both closed.
_PIN_TWICE = """
import pathlib, sys
from snitchd.socketmatch import SocketMatch
state = pathlib.Path(sys.argv[1])
first = SocketMatch(state, 100)
second = SocketMatch(state, 0)
print(sorted(p.name for p in second.pins.iterdir()))
second.close()
print(second.pins.exists(), second.pins.parent.exists())
first.close()
first.close()
print("closed")
"""


def _private(script: str, *args: str) -> list[str]:
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", PYTHON, "-c", script, *args],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return done.stdout.splitlines()


def test_a_restart_replaces_the_pins_and_a_stop_removes_them(tmp_path: Path) -> None:
    """snitchd pins for iptables, which loads the programs by path; a crash leaves the pins,
    and the next start must replace them (not fail on them); a stop removes them and their
    directories, so nothing of snitch stays in /sys/fs/bpf."""
    assert _private(_PIN_TWICE, str(tmp_path)) == [
        str(sorted(PINNED)),
        "False False",
        "closed",
    ]
    assert sorted(p.name for p in (tmp_path / "bpf").iterdir())[0].startswith("sockets-")
