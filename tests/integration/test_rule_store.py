"""Rule changes against the real daemon (issue 12, "let nothing block the packet loop"): a rule
write that waits for another process's lock on the store delays only its caller, never the
flows of others, and says who holds the lock; snitchd's own changes are not taken for changes
made behind its back, which are still alerted."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from conftest import VENV_BIN, Lab, Terminal

HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
conn.execute("INSERT INTO rules (text, created, hits) VALUES ('deny port=7', 0, 0)")
print("locked", flush=True)
time.sleep(60)
"""


def _hold_lock(db: Path) -> subprocess.Popen[str]:
    """A process (as an admin with sqlite3 would) holding an exclusive write lock."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(db)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_locked_store_delays_only_the_rule_change_not_other_flows(running: Lab) -> None:
    """Issue 12: adding a rule while another process held the store's lock stalled every new
    flow for the 5 s busy timeout (the write ran on the packet loop), and the error blamed
    another snitchd. Now a steady client keeps connecting while the add-rule call waits, and
    the call's error says the store is locked by another process, and by which."""
    running.expect_log(r"ERROR snitchd.events: connection log write failed")
    running.add_rule("allow port=80")
    holder = _hold_lock(running.db)
    adding: subprocess.Popen[str] | None = None
    try:
        adding = subprocess.Popen(
            [str(VENV_BIN / "snitchctl"), "add-rule", "allow port=443"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=running.env,
        )
        while_waiting: list[str] = []
        deadline = time.monotonic() + 30
        while adding.poll() is None and time.monotonic() < deadline:
            seen = running.py("tcp", "192.0.2.2", 80)
            if adding.poll() is None:
                while_waiting.append(seen)
        _, err = adding.communicate(timeout=30)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
        if adding is not None and adding.poll() is None:
            adding.kill()
            adding.communicate()
    # A new connection takes ~0.1 s here (a process started in the namespace); the call waits
    # 5 s. Before the fix the first connection waited for the call, so none completed during it.
    assert len(while_waiting) >= 3, while_waiting
    assert set(while_waiting) == {"connected"}, while_waiting
    assert adding.returncode == 1, err
    assert f"cannot write rule store {running.db}: database is locked by another process" in err
    assert f"pid {holder.pid} " in err and "another snitchd" not in err
    # The lock is gone: the same call now works, and the held rules follow the store.
    running.add_rule("allow port=443")
    texts = [r["text"] for r in running.ctl_json("list-rules")]
    assert texts == ["allow port=80", "allow port=443"]


def test_an_answer_while_the_store_is_locked_delays_no_other_flow(running: Lab) -> None:
    """Issue 12: a prompt's answer wrote its rule to the store on the packet loop, so an answer
    given while another process held the store's lock stalled every new flow for the 5 s busy
    timeout. Now the write waits in a worker: a steady client keeps connecting meanwhile, and
    the agent is told why its answer was not taken."""
    running.expect_log(r"ERROR snitchd.events: connection log write failed")
    running.add_rule("allow port=80")
    terminal = Terminal([str(VENV_BIN / "snitchctl"), "agent"], running.env)
    asking: subprocess.Popen[str] | None = None
    holder: subprocess.Popen[str] | None = None
    try:
        terminal.read_until(b"waiting for prompts")
        asking = running.spawn_client("tcp", "192.0.2.2", "443", "--timeout", "20")
        terminal.read_until(b"answer> ")
        holder = _hold_lock(running.db)
        terminal.type("a forever\n")
        while_waiting: list[str] = []
        deadline = time.monotonic() + 20
        while not terminal.shows(b"not answered") and time.monotonic() < deadline:
            seen = running.py("tcp", "192.0.2.2", 80)
            if not terminal.shows(b"not answered"):
                while_waiting.append(seen)
        assert terminal.shows(b"database is locked by another process"), terminal.screen
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
            if holder.stdout is not None:
                holder.stdout.close()
        terminal.close()
        if asking is not None:
            asking.kill()
            asking.communicate()
    # Before the fix the loop waited with the answer, so not one connection completed meanwhile.
    assert len(while_waiting) >= 3, while_waiting
    assert set(while_waiting) == {"connected"}, while_waiting


def test_own_rule_changes_are_not_outside_changes_but_hand_edits_are(running: Lab) -> None:
    """Issue 12: the sweep counted snitchd's own writes as outside changes and read every rule
    again after each (twice the cost of a change). Now own changes update the held rules in
    place and the sweep leaves them be; a hand edit with sqlite3 is still read and alerted."""
    running.expect_log(r"alert rules-changed: ")
    running.add_rule("allow port=80")
    gone = running.add_rule("allow port=443")
    assert running.ctl("delete-rule", str(gone)).returncode == 0
    time.sleep(2.5)  # two sweeps (1 s apart) see the own changes; nothing must come of them
    running.insert_rule_by_hand("allow port=4444")
    deadline = time.monotonic() + 10
    while "rules were changed outside snitch" not in running.log_text():
        assert time.monotonic() < deadline, running.log_text()
        time.sleep(0.1)
    log = running.log_text()
    assert "rules were changed outside snitch: 1 added or changed, 0 removed" in log
    assert log.count("rules were changed outside snitch") == 1, log
    # Read whole at start and after the hand edit, never for snitchd's own changes.
    assert log.count("rules loaded count=") == 1, log
    assert log.count("rules reloaded from the store") == 1, log
    assert running.py("tcp", "192.0.2.2", 80) == "connected"
    texts = [r["text"] for r in running.ctl_json("list-rules")]
    assert texts == ["allow port=80", "allow port=4444"]
