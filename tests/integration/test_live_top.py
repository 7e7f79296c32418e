"""`snitchctl top --live` driven with Textual's pilot in an 80x24 screen, against a real
snitchd in the lab: two apps hold connections that moved 300 kB and 20 kB; the view lists
them, its sort key puts the bigger first, the filter narrows to one, enter shows the app's
host, q quits. An SVG screenshot per view is saved under the test's tmp dir."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import Lab, python_exe
from snitchctl.live import HostsScreen, LiveTop
from tests.support.lab import end_child

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="makes network namespaces: needs root"),
]

SENDER = """
import socket, sys
s = socket.create_connection(("192.0.2.2", 9000), timeout=10)
s.sendall(b"x" * int(sys.argv[1]))
print("sent", flush=True)
sys.stdin.read()
"""


async def test_live_view_lists_sorts_filters_drills_down_and_quits(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab.start_daemon()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", lab.env["DBUS_SYSTEM_BUS_ADDRESS"])
    exes = {}
    senders = []
    try:
        for name, size in (("bigapp", 300_000), ("smallapp", 20_000)):
            exe = tmp_path / name
            shutil.copy(python_exe(), exe)
            exes[name] = str(exe)
            lab.add_rule(f"allow app={exe} port=9000")
            proc = subprocess.Popen(
                ["ip", "netns", "exec", lab.client, str(exe), "-c", SENDER, str(size)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            senders.append(proc)
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "sent"

        app = LiveTop()
        async with app.run_test(size=(80, 24)) as pilot:
            for _ in range(150):  # bounded: up to ~30 s for both apps' bytes to be counted
                lines = app.lines
                if all(lines.get(e) and lines[e].bytes_out > 0 for e in exes.values()):
                    break
                await pilot.pause(0.2)
            else:
                raise AssertionError(f"the view never showed both apps: {app.lines}")
            app.save_screenshot("live-rate.svg", str(tmp_path))

            await pilot.press("s")  # rate -> total
            assert app.sort == "total"
            ours = [line.app for line in app.shown() if line.app in exes.values()]
            assert ours == [exes["bigapp"], exes["smallapp"]]
            table = app.query_one("#apps")
            assert table.row_count == len(app.shown())  # type: ignore[attr-defined]

            await pilot.press("slash", *"smallapp", "enter")
            assert [line.app for line in app.shown()] == [exes["smallapp"]]
            app.save_screenshot("live-filtered.svg", str(tmp_path))

            await pilot.press("enter")  # the only row: smallapp's hosts
            for _ in range(50):
                if isinstance(app.screen, HostsScreen):
                    break
                await pilot.pause(0.1)
            screen = app.screen
            assert isinstance(screen, HostsScreen)
            assert screen.app_name == exes["smallapp"]
            assert any(row["dst"] == "192.0.2.2" for row in screen.rows)
            app.save_screenshot("live-hosts.svg", str(tmp_path))
            await pilot.press("escape")
            assert not isinstance(app.screen, HostsScreen)
            await pilot.press("escape", "q")
        assert app.return_code == 0
        assert (tmp_path / "live-hosts.svg").read_text().count("192.0.2.2") >= 1
    finally:
        for proc in senders:
            end_child(proc)
