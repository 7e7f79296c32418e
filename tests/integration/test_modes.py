"""Modes in the lab (issue 17): a real snitchd, real clients, the real agent code and snitchctl.

What each mode does with a flow no rule covers, with and without an agent; learn's proposals
for a scripted set of apps and destinations, accepted, then silent-deny letting exactly those
through; a short time limit that ends by itself; a held prompt settled at once by a switch; a
user who is not an admin refused (exit 4); bad words refused with nothing changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

import pytest

from conftest import (
    HERE,
    MODE_ALERT,
    PYTHON,
    Lab,
    bare_reason,
    client_outcome,
    curl_exe,
    forge,
    netclient_who,
    run_netclient,
    spawn_netclient,
)
from tests.integration.readerparams import READERS
from tests.integration.scriptagent import ScriptedAgent

# Each test with one queue reader and with two (issue 21).
pytestmark = [
    pytest.mark.usefixtures("end_clients"),
    pytest.mark.parametrize("lab", READERS, indirect=True),
]

NOBODY = 65534


@pytest.fixture
def running(lab: Lab) -> Lab:
    lab.expect_log(MODE_ALERT)
    lab.start_daemon()
    return lab


def set_mode(lab: Lab, *argv: str) -> dict[str, Any]:
    state: dict[str, Any] = lab.ctl_json("mode", *argv)
    return state


def rows_to(lab: Lab, dst: str, port: int) -> list[dict[str, Any]]:
    return [r for r in lab.log_rows() if r["dst"] == dst and r["dport"] == port]


# -- each mode, with and without an agent --------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "seen", "action"),
    [("silent-allow", "connected", "allow"), ("silent-deny", "timeout", "deny"),
     ("learn", "connected", "allow")],
)  # fmt: skip
async def test_each_silent_mode_decides_an_uncovered_flow_without_asking(
    running: Lab, agent: ScriptedAgent, mode: str, seen: str, action: str
) -> None:
    """With an agent there: nobody is asked, the mode decides, the row names the mode. The
    agent leaves, and the same holds for the next destination."""
    assert set_mode(running, mode)["mode"] == mode
    assert await run_netclient(running, "tcp", "192.0.2.2", "80") == seen
    assert agent.prompts.empty()
    agent.stop()
    assert await run_netclient(running, "tcp", "192.0.2.2", "443") == seen
    for port in (80, 443):
        (row,) = rows_to(running, "192.0.2.2", port)
        assert row["action"] == action and row["mode"] == mode and "rule_id" not in row
        assert bare_reason(row).startswith(f"mode {mode}: no rule covers it")
    status = running.ctl_json("status")
    assert status["mode"] == mode
    assert status[f"decided_{mode.replace('-', '_')}"] == 2


async def test_ask_mode_asks_the_agent_and_without_one_applies_the_default(
    running: Lab, agent: ScriptedAgent
) -> None:
    assert set_mode(running)["mode"] == "ask"  # the mode of a fresh install
    proc = await spawn_netclient(running, "tcp", "192.0.2.2", "80", "--timeout", "10")
    prompt = await asyncio.wait_for(agent.prompts.get(), 10)
    await agent.answer(prompt, "allow", "once")
    assert await client_outcome(proc) == "connected"
    agent.stop()
    assert await run_netclient(running, "tcp", "192.0.2.2", "443") == "timeout"
    (asked,) = rows_to(running, "192.0.2.2", 80)
    (default,) = rows_to(running, "192.0.2.2", 443)
    assert asked["mode"] == default["mode"] == "ask"
    assert bare_reason(default) == "default: no agent" and default["action"] == "deny"


async def test_a_rule_decides_whatever_the_mode(running: Lab) -> None:
    running.add_rule("deny port=80")
    set_mode(running, "silent-allow")
    assert running.py("tcp", "192.0.2.2", 80) == "timeout"
    assert running.py("tcp", "192.0.2.2", 443) == "connected"


# -- learn, accept, silent-deny ------------------------------------------------------------------


def proposal_texts(lab: Lab) -> dict[str, int]:
    return {p["text"]: p["count"] for p in lab.ctl_json("proposals")}


async def test_learn_proposes_exactly_the_pairs_seen_and_silent_deny_then_passes_only_those(
    running: Lab,
) -> None:
    set_mode(running, "learn")
    scripted = [
        (("tcp", "192.0.2.2", 80), "connected"),
        (("tcp", "198.51.100.2", 8080), "connected"),
        (("udp", "192.0.2.2", 9000), "reply"),
        (("resolve", "api.example.org", 443), "connected"),  # a DNS query, then a connection
        (("tcp", "192.0.2.2", 80), "connected"),  # again: counts, proposes nothing new
    ]
    for (kind, host, port), seen in scripted:
        assert running.py(kind, host, port) == seen
    assert running.curl("http://192.0.2.2:8080/") == "connected"
    py, curl = netclient_who(), curl_exe()
    with open(curl, "rb") as f:
        curl_sha = hashlib.file_digest(f, "sha256").hexdigest()
    expected = {
        f"allow {py} to=192.0.2.2 port=80 proto=tcp": 2,
        f"allow {py} to=198.51.100.2 port=8080 proto=tcp": 1,
        f"allow {py} to=192.0.2.2 port=9000 proto=udp": 1,
        f"allow {py} to=192.0.2.2 port=53 proto=udp": 1,
        f"allow {py} to=api.example.org port=443 proto=tcp": 1,
        f"allow app={curl} sha256={curl_sha} to=192.0.2.2 port=8080 proto=tcp": 1,
    }
    assert proposal_texts(running) == expected
    assert running.ctl_json("list-rules") == []  # proposals are not rules
    status = running.ctl_json("status")
    print(f"\nlearn: {status['decided_learn']} flows decided, {status['proposals']} proposals")
    assert status["proposals"] == 6 and status["decided_learn"] >= 7

    made = running.ctl_json("accept-proposals", "--all")
    assert sorted(r["text"] for r in made) == sorted(expected)
    assert running.ctl_json("proposals") == []
    set_mode(running, "silent-deny")
    for (kind, host, port), seen in scripted:
        assert running.py(kind, host, port) == seen, (kind, host, port)
    assert running.curl("http://192.0.2.2:8080/") == "connected"
    # Anything else is denied, and learns nothing.
    assert running.py("tcp", "192.0.2.2", 443) == "timeout"
    assert running.py("tcp", "198.51.100.2", 80) == "timeout"
    assert running.curl("http://192.0.2.2:80/") == "timeout"
    assert running.ctl_json("proposals") == []


async def test_accepting_a_proposal_that_is_gone_changes_nothing(running: Lab) -> None:
    set_mode(running, "learn")
    assert running.py("tcp", "192.0.2.2", 80) == "connected"
    (p,) = running.ctl_json("proposals")
    done = running.ctl("accept-proposals", str(p["id"]), str(p["id"] + 100))
    assert done.returncode == 1
    assert f"proposal {p['id'] + 100}: no such proposal" in done.stderr
    assert running.ctl_json("list-rules") == [] and len(running.ctl_json("proposals")) == 1
    assert running.ctl("accept-proposals").returncode == 1  # neither ids nor --all
    assert running.ctl_json("reject-proposals", str(p["id"]))[0]["id"] == p["id"]
    assert running.ctl("reject-proposals", str(p["id"])).returncode == 1  # gone now


# -- time limits, restarts, held prompts ---------------------------------------------------------


async def test_a_two_second_mode_reverts_by_itself_with_an_alert(running: Lab) -> None:
    set_mode(running, "silent-deny")
    state = set_mode(running, "silent-allow", "--for", "2s")
    assert state["mode"] == "silent-allow" and state["previous"] == "silent-deny"
    assert state["until"] > time.time()
    assert running.py("tcp", "192.0.2.2", 80) == "connected"
    mode = "silent-allow"
    for _ in range(100):  # bounded: the limit is 2 s, the sweeper checks once a second
        mode = set_mode(running)["mode"]
        if mode != "silent-allow":
            break
        await asyncio.sleep(0.1)
    assert mode == "silent-deny"
    assert running.py("tcp", "192.0.2.2", 443) == "timeout"
    assert "alert mode-changed: mode silent-deny (was silent-allow), its time limit ended" in (
        running.log_text()
    )


async def test_the_mode_and_its_time_limit_survive_a_restart(running: Lab) -> None:
    state = set_mode(running, "learn", "--for", "1h")
    running.stop_daemon()
    running.start_daemon()
    again = set_mode(running)
    assert (again["mode"], again["until"], again["previous"]) == ("learn", state["until"], "ask")
    assert running.py("tcp", "192.0.2.2", 80) == "connected"
    assert len(running.ctl_json("proposals")) == 1


async def test_a_held_prompt_is_settled_at_once_by_a_mode_switch(
    running: Lab, agent: ScriptedAgent
) -> None:
    """The flow waits for a person; an admin switches to silent-allow: the flow connects
    then (not at the prompt's timeout), the agent's popup is withdrawn, the row says so."""
    proc = await spawn_netclient(running, "tcp", "192.0.2.2", "80", "--timeout", "20")
    prompt = await asyncio.wait_for(agent.prompts.get(), 10)
    assert proc.returncode is None
    set_mode(running, "silent-allow")
    assert await client_outcome(proc) == "connected"
    cancelled = await asyncio.wait_for(agent.cancelled.get(), 10)
    assert cancelled == (prompt.id, "mode silent-allow: no rule covers it")
    (row,) = rows_to(running, "192.0.2.2", 80)
    assert row["mode"] == "silent-allow" and row["action"] == "allow"
    assert any(a["kind"] == "mode-changed" for a in agent.alerts)


async def test_mode_changes_are_signalled_to_every_client(
    running: Lab, agent: ScriptedAgent
) -> None:
    """...and only snitchd's own: a ModeChanged that another user sends the agent (to
    silent-allow) is not believed."""
    seen: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    assert agent.client is not None
    await agent.client.watch_mode(seen.put_nowait)
    await asyncio.to_thread(forge, running)
    set_mode(running, "silent-deny", "--for", "15m")
    change = await asyncio.wait_for(seen.get(), 10)
    assert (change["mode"], change["was"], change["why"]) == ("silent-deny", "ask", "by uid 0")


# -- who may, and bad words ----------------------------------------------------------------------


def test_a_user_who_is_not_an_admin_cannot_switch_but_can_read_the_mode(running: Lab) -> None:
    done = running.ctl("mode", "silent-allow", "--for", "15m", uid=NOBODY)
    assert done.returncode == 4, done.stderr
    assert "not authorized to switch modes" in done.stderr
    assert running.ctl("accept-proposals", "--all", uid=NOBODY).returncode == 4
    shown = running.ctl("--json", "mode", uid=NOBODY)
    assert shown.returncode == 0
    state = json.loads(shown.stdout)
    assert state["mode"] == "ask" and state["may_switch"] is False
    assert running.ctl_json("mode")["may_switch"] is True


def test_unknown_modes_and_bad_limits_change_nothing(running: Lab) -> None:
    set_mode(running, "silent-deny")
    for argv in (("pause",), ("silent-allow", "--for", "0s"), ("--for", "5m")):
        done = running.ctl("mode", *argv)
        assert done.returncode in (1, 2) and "error" in done.stderr, argv
    done = running.ctl("--json", "mode", "pause")
    assert json.loads(done.stderr)["error"]["code"] == "InvalidMode"
    assert set_mode(running)["mode"] == "silent-deny"


def test_a_user_flooding_learn_mode_fills_only_their_share_of_proposals(lab: Lab) -> None:
    """An unprivileged program connects to destination after destination while the machine
    learns: it gets its share (a quarter of max_proposals) and no more, the admins hear once,
    its flows are still allowed, and root's flows are still proposed."""
    lab.expect_log(MODE_ALERT, r"WARNING snitchd\.firewall: alert proposals-full: ")
    lab.start_daemon(max_proposals=8)
    set_mode(lab, "learn")
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    seen = [
        lab.client_run(*as_nobody, PYTHON, str(HERE / "netclient.py"), "tcp", "192.0.2.2", port)
        for port in ("22", "53", "80", "443", "8080", "9000")
    ]
    assert seen == ["connected"] * 6
    assert lab.py("tcp", "198.51.100.2", 80) == "connected"  # root's
    proposals = lab.ctl_json("proposals")
    assert [p["uid"] for p in proposals] == [NOBODY, NOBODY, 0]
    status = lab.ctl_json("status")
    assert (status["proposals"], status["proposals_left_out"]) == (3, 4)
    assert lab.log_text().count("alert proposals-full: ") == 1
