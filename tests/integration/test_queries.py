"""Issue 12: what any user may ask of snitchd over D-Bus is bounded, and runs beside the packet
loop, not on it. A reply holds at most the documented number of records whatever the caller
asks (clients page for more); one uid runs one query at a time; list-rules pages through many
rules and still prints them all. Asked as an unprivileged user (uid 65534), as an attacker would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from conftest import PYTHON, VENV_BIN, Lab, python_exe, run_with_lab_env
from snitch_common.bus import MAX_LOG_ROWS, MAX_RULES_PAGE
from snitch_common.rules import parse_rule
from snitchd.store import Store
from tests.support.lab import wait_for

NOBODY = 65534
NOW = 1_700_000_000.0
SETPRIV = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")


def _seed_log(lab: Lab, rows: int) -> None:
    """Log rows of uid 65534, written before snitchd starts (as the log writer would)."""
    store = Store(lab.db)
    try:
        store.log_rows(
            [
                (NOW + i, 4242, "/usr/bin/curl", NOBODY, "process", "tcp", "192.0.2.1",
                 40000 + i % 20000, "192.0.2.2", 443, "veth0", None, "allow", None, "default",
                 None, "ask", None, None, None)  # source, mode, profile, container, runtime
                for i in range(rows)
            ]
        )  # fmt: skip
    finally:
        store.close()


def test_issue_12_log_answers_at_most_the_cap_whatever_the_limit(lab: Lab) -> None:
    """One Log call with limit 10,000,000 gets MAX_LOG_ROWS rows; snitchctl pages back for
    more and gets every row once, in order."""
    _seed_log(lab, MAX_LOG_ROWS + 500)
    lab.start_daemon()
    code = (
        "import asyncio, json\n"
        "from dbus_fast import Variant\n"
        "from snitch_common.client import Client\n"
        "async def main():\n"
        "    client = await Client.connect()\n"
        "    reply = await client.call('Log', 'a{sv}', [{'limit': Variant('t', 10_000_000)}])\n"
        "    rows = json.loads(reply)\n"
        "    print(len(rows))\n"
        "    client.close()\n"
        "asyncio.run(main())\n"
    )
    done = run_with_lab_env(lab, *SETPRIV, PYTHON, "-c", code)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == MAX_LOG_ROWS

    listed = lab.ctl("--json", "log", "--limit", str(MAX_LOG_ROWS + 1000), uid=NOBODY)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert len(rows) == MAX_LOG_ROWS + 500
    assert [r["time"] for r in rows] == [NOW + i for i in range(MAX_LOG_ROWS + 500)]


def test_issue_12_a_second_query_of_one_uid_is_refused_while_one_runs(lab: Lab) -> None:
    """Two `snitchctl log` of one unprivileged uid at once: one is refused with a clear error,
    the other answered. The log writer is paused so that whichever query came first waits (for
    the log to be written before it is read) until the test lets it go: no race on timing."""
    lab.start_daemon()
    writer = int(lab.ctl_json("status")["log_writer_pid"])
    assert writer > 0
    argv = [*SETPRIV, str(VENV_BIN / "snitchctl"), "log"]
    procs: list[subprocess.Popen[str]] = []
    os.kill(writer, signal.SIGSTOP)
    try:
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=lab.env
                )
            )
        end = time.monotonic() + 20
        while all(p.poll() is None for p in procs) and time.monotonic() < end:
            time.sleep(0.05)
        finished = [p for p in procs if p.poll() is not None]
        assert len(finished) == 1, "neither query was refused while the other ran"
        refused = finished[0]
        _, err = refused.communicate()
        assert refused.returncode == 1, err
        assert err.strip() == (
            f"snitchctl: error: query refused: uid {NOBODY} already has a query running in "
            "snitchd (wait for it to finish, then ask again)"
        )
    finally:
        os.kill(writer, signal.SIGCONT)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    (answered,) = [p for p in procs if p is not refused]
    out, err = answered.communicate()
    assert answered.returncode == 0, err
    assert out.strip() == "(no connections logged)"
    again = lab.ctl("log", uid=NOBODY)  # the slot is free again
    assert again.returncode == 0, again.stderr


def test_issue_12_list_rules_pages_through_every_rule(lab: Lab) -> None:
    """2,500 rules are three pages; an unprivileged list-rules prints every one, in id order,
    in the form that pastes back into add-rule."""
    count = 2 * MAX_RULES_PAGE + 500
    store = Store(lab.db)
    try:
        added = [
            store.add_rule(parse_rule(f"allow app=/usr/bin/app{i} port={1 + i % 65535}"), NOW)
            for i in range(count)
        ]
    finally:
        store.close()
    lab.start_daemon()
    listed = lab.ctl("list-rules", uid=NOBODY)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines == [f"{r.id}: {r.rule}" for r in added]
    as_json = json.loads(lab.ctl("--json", "list-rules", uid=NOBODY).stdout)
    assert [r["id"] for r in as_json] == [r.id for r in added]
    assert {r["created"] for r in as_json} == {NOW}


def test_issue_20_a_closed_pipe_ends_log_quietly(lab: Lab) -> None:
    """`snitchctl log | head` ended in a BrokenPipeError traceback: the reader went away while
    snitchctl still wrote. Now it stops quietly, as ls or cat do."""
    _seed_log(lab, 1500)  # ~150 kB of text: more than a pipe holds
    lab.start_daemon()
    done = run_with_lab_env(
        lab, "sh", "-c", f"{VENV_BIN / 'snitchctl'} log --limit 1500 | head -n 1"
    )
    assert len(done.stdout.splitlines()) == 1, done.stdout
    assert done.stderr == "", done.stderr


def test_issue_20_log_by_name_lists_the_apps_that_share_it(running: Lab, tmp_path: Path) -> None:
    """`log --app NAME` matches every app of that name; when several do, it says which (on
    stderr, so the rows on stdout stay a clean list)."""
    running.add_rule("allow port=9000")
    exes = []
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        exe = tmp_path / folder / "fetcher"
        shutil.copy(python_exe(), exe)
        exes.append(str(exe))
        connect = "import socket; socket.create_connection(('192.0.2.2', 9000), timeout=5).close()"
        running.ns(running.client, str(exe), "-c", connect)
    wait_for(
        lambda: {r["exe"] for r in running.log_rows()} >= set(exes), 10, "both apps in the log"
    )
    done = running.ctl("log", "--app", "fetcher")
    assert done.returncode == 0, done.stderr
    assert f"matches 2 apps: {exes[0]}, {exes[1]}" in done.stderr
    assert all(exe in done.stdout for exe in exes)
    one = running.ctl("log", "--app", exes[0])
    assert one.returncode == 0 and one.stderr == "" and exes[1] not in one.stdout
