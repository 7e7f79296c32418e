"""Bytes while they flow (issue 19), in the lab: three apps move known byte counts to the server.

While their connections are still open, the live rates (`Rates` signals) and the per-app
totals (`Apps`, from the rollups the log writer keeps) must match what each app sent: conntrack
counts IP-layer bytes, so the count lies between the payload and what TCP put on the wire with
its headers and resends (the app reads that from tcp_info). After the flows close and
conntrack forgets them (`conntrack -D`, as a natural end waits out TIME_WAIT), `snitchctl top`
and the rollups must agree. Waits are bounded polls; nothing asserts on time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import AS_NOBODY, HERE, PYTHON, Lab, python_exe, run_with_lab_env
from tests.support.lab import Lines, end_child

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="makes network namespaces: needs root"),
    pytest.mark.skipif(not shutil.which("conntrack"), reason="needs conntrack (conntrack-tools)"),
]

SIZES = {"big": 1_000_000, "mid": 200_000, "small": 10_000}
# After sending, the app waits until the server has acknowledged every byte, then says what
# TCP put on the wire: payload bytes with retransmissions (tcp_info's bytes_sent, offset 200)
# and segments (segs_out, offset 136). A loaded machine drops and resends on the veth, so the
# bytes conntrack counts are bounded by these, not by the payload alone.
SENDER = """
import socket, struct, sys, time
s = socket.create_connection(("192.0.2.2", 9000), timeout=10)
s.sendall(b"x" * int(sys.argv[1]))
for _ in range(500):
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
    unacked, = struct.unpack_from("I", info, 24)
    notsent, = struct.unpack_from("I", info, 144)
    if unacked == 0 and notsent == 0:
        break
    time.sleep(0.02)
segs_out, = struct.unpack_from("I", info, 136)
bytes_sent, = struct.unpack_from("Q", info, 200)
print("sent", bytes_sent, segs_out, flush=True)
sys.stdin.read()
s.close()
print("closed", flush=True)
"""


def monitor(lab: Lab, *args: str, nobody: bool = False) -> Any:
    user = AS_NOBODY if nobody else ()
    done = run_with_lab_env(lab, *user, PYTHON, str(HERE / "monitorclient.py"), *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def apps_by_name(lab: Lab, nobody: bool = False) -> dict[str, dict[str, Any]]:
    return {row["app"]: row for row in monitor(lab, "apps", "1h", nobody=nobody)}


# An IPv4 header with TCP options is at most 20 + 60 bytes.
MAX_HEADERS = 80


def within(counted: int, sent: int, wire: tuple[int, int], extra_segments: int = 1) -> bool:
    """At least the payload; at most what TCP sent (with resends) plus every header.

    `extra_segments` counts what tcp_info had not seen: the SYN, and after a close the FIN.
    """
    bytes_sent, segments = wire
    return sent <= counted <= bytes_sent + (segments + extra_segments) * MAX_HEADERS


def _rates_watcher(lab: Lab) -> subprocess.Popen[str]:
    """monitorclient.py subscribed to the Rates signal, as the monitor window and `top --live`
    are (the caller reads it with `Lines` and ends it)."""
    return subprocess.Popen(
        [PYTHON, str(HERE / "monitorclient.py"), "rates"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=lab.env,
    )


def test_live_rates_and_totals_match_what_three_apps_sent_and_top_agrees_after(
    lab: Lab, tmp_path: Path
) -> None:
    lab.start_daemon()
    exes = {}
    for name in SIZES:
        exe = tmp_path / f"app-{name}"
        shutil.copy(python_exe(), exe)
        exes[name] = str(exe)
        lab.add_rule(f"allow app={exe} port=9000")
    watcher = _rates_watcher(lab)
    senders: dict[str, subprocess.Popen[str]] = {}
    try:
        rates = Lines(watcher)
        assert rates.next(20) == {"subscribed": True}
        for name, size in SIZES.items():
            senders[name] = subprocess.Popen(
                ["ip", "netns", "exec", lab.client, exes[name], "-c", SENDER, str(size)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        said = {name: Lines(proc) for name, proc in senders.items()}
        wire: dict[str, tuple[int, int]] = {}
        for name, lines in said.items():
            word, bytes_sent, segments = lines.next(20).split()
            assert word == "sent", name
            wire[name] = (int(bytes_sent), int(segments))

        # Live: the Rates signals until each app's total reached what it sent.
        windows: dict[str, int] = dict.fromkeys(exes.values(), 0)
        totals: dict[str, int] = dict.fromkeys(exes.values(), 0)
        moving: set[str] = set()
        deadline = time.monotonic() + 30
        while any(totals[exes[n]] < size for n, size in SIZES.items()):
            signal = rates.next(deadline - time.monotonic())
            for app in signal["apps"]:
                if app["app"] in totals:
                    windows[app["app"]] += app["out"]
                    totals[app["app"]] = app["total_out"]
                    assert app["rate_out"] == pytest.approx(app["out"] / signal["seconds"])
                    if app["rate_out"] > 0:
                        moving.add(app["app"])
                    assert app["flows"] == 1, app  # still open
        for name, size in SIZES.items():
            exe = exes[name]
            assert within(totals[exe], size, wire[name]), (name, totals[exe], size, wire[name])
            assert windows[exe] == totals[exe], "the windows add up to the total"
        assert moving == set(exes.values())

        # Still open: the per-app totals from the rollups.
        live = apps_by_name(lab)
        for name, size in SIZES.items():
            row = live[exes[name]]
            assert within(row["bytes_out"], size, wire[name]), (name, row, size, wire[name])
            assert (row["connections"], row["blocked"]) == (1, 0)
        assert not set(apps_by_name(lab, nobody=True)) & set(exes.values()), (
            "a user who is not an admin sees only their own traffic"
        )

        for name, proc in senders.items():
            assert proc.stdin is not None
            proc.stdin.close()
            assert said[name].next(20) == "closed"
    finally:
        for proc in senders.values():
            end_child(proc)
        end_child(watcher)

    # Closed and forgotten: top (the log rows' bytes, from the DESTROY events) and the rollups.
    lab.ns(lab.client, "conntrack", "-D", "-p", "tcp", "--dport", "9000", check=False)
    deadline = time.monotonic() + 30
    while True:
        top = {row["app"]: row for row in lab.ctl_json("top")}
        if all(top.get(exe, {}).get("bytes_out") for exe in exes.values()):
            break
        assert time.monotonic() < deadline, f"flow ends never reached the log: {top}"
        time.sleep(0.5)
    rolled = apps_by_name(lab)
    order = [row["app"] for row in lab.ctl_json("top") if row["app"] in exes.values()]
    assert order == [exes["big"], exes["mid"], exes["small"]]
    for name, size in SIZES.items():
        exe = exes[name]
        assert within(top[exe]["bytes_out"], size, wire[name], extra_segments=2), (
            name,
            top[exe],
            size,
            wire[name],
        )
        assert (rolled[exe]["bytes_out"], rolled[exe]["bytes_in"]) == (
            top[exe]["bytes_out"],
            top[exe]["bytes_in"],
        ), name
    series = monitor(lab, "traffic", "1h", exes["big"])
    assert [s["app"] for s in series["apps"]] == [exes["big"]]
    assert series["apps"][0]["bytes_out"] == top[exes["big"]]["bytes_out"]


def test_without_a_live_view_the_rollups_catch_up_and_a_view_opened_later_sees_the_flow(
    lab: Lab, tmp_path: Path
) -> None:
    """Nobody watching, the writer reads the open flows' counters only a few times a minute
    (`logwriter.child`): the rollups still get an open flow's bytes, and a live view opened
    afterwards gets rates at once that count the flow as open and its bytes in the totals."""
    lab.start_daemon()
    exe = tmp_path / "app-quiet"
    shutil.copy(python_exe(), exe)
    lab.add_rule(f"allow app={exe} port=9000")
    size = 200_000
    sender = subprocess.Popen(
        ["ip", "netns", "exec", lab.client, str(exe), "-c", SENDER, str(size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    watcher: subprocess.Popen[str] | None = None
    try:
        said = Lines(sender)
        word, bytes_sent, segments = said.next(20).split()
        assert word == "sent"
        wire = (int(bytes_sent), int(segments))

        deadline = time.monotonic() + 60  # three idle reads a minute
        while True:
            row = apps_by_name(lab).get(str(exe))
            if row is not None and row["bytes_out"] >= size:
                break
            assert time.monotonic() < deadline, f"the rollups never got the open flow: {row}"
            time.sleep(1)
        assert within(row["bytes_out"], size, wire), (row, wire)

        watcher = _rates_watcher(lab)
        rates = Lines(watcher)
        assert rates.next(20) == {"subscribed": True}
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while len(seen) < 3:
            signal = rates.next(deadline - time.monotonic())
            seen += [app for app in signal["apps"] if app["app"] == str(exe)]
        for app in seen:
            assert app["flows"] == 1, app  # still open
            assert within(app["total_out"], size, wire), (app, wire)
        assert seen[-1]["out"] == 0, "nothing moves: the rate of the last window is none"

        assert sender.stdin is not None
        sender.stdin.close()
        assert said.next(20) == "closed"
    finally:
        end_child(sender)
        if watcher is not None:
            end_child(watcher)
