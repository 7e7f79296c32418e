"""Asking the user: held flows, one prompt per app and destination, answers that become rules.

The agent here is the real agent code (`snitch_common.agent`) on the private bus, driven by the
test; clients are real programs in the client namespace.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import time
from typing import Any

import pytest

from conftest import (
    JOIN_GROUPS,
    PYTHON,
    VENV_BIN,
    Lab,
    Terminal,
    bare_reason,
    client_outcome,
    netclient_who,
    python_exe,
    run_netclient,
    spawn_in_client,
    spawn_netclient,
    start_agent,
)
from snitch_common.errors import PromptError
from tests.integration.readerparams import READERS
from tests.integration.scriptagent import ScriptedAgent

pytestmark = pytest.mark.usefixtures("end_clients")


async def test_flow_is_held_until_allow_then_rule_listed(
    running: Lab, agent: ScriptedAgent
) -> None:
    """The connection waits while the person decides, connects right after "allow", never
    before; the answer is a rule, and the next connection is not prompted."""
    start = time.monotonic()
    proc = await spawn_netclient(running, "tcp", "192.0.2.2", "80", "--timeout", "10")
    prompt = await agent.next_prompt()
    assert prompt.exe == python_exe() and prompt.dst == "192.0.2.2" and prompt.port == 80
    assert prompt.proto == "tcp" and prompt.iface == "veth0" and prompt.pid is not None
    await asyncio.sleep(1.5)
    assert proc.returncode is None, "the client finished before the answer"
    rule_id = await agent.answer(prompt, "allow", "forever", "exact")
    assert await client_outcome(proc) == "connected"
    assert time.monotonic() - start >= 1.5
    rules = running.ctl_json("list-rules")
    assert [r["text"] for r in rules if r["id"] == rule_id] == [
        f"allow {netclient_who()} to=192.0.2.2 port=80 proto=tcp"
    ]
    assert await run_netclient(running, "tcp", "192.0.2.2", "80") == "connected"
    assert agent.prompts.empty()


async def test_a_prompt_of_no_known_app_is_answered_for_its_destination_only(
    running: Lab, agent: ScriptedAgent
) -> None:
    """The kernel's IGMP report (a program joined a multicast group) reaches the admin's agent
    as a prompt of no app. "Anything this app connects to" is refused: its rule would name no
    app, and it was a bare `allow`, every app of the machine let out everywhere. The prompt
    stays open, and "only this destination" makes a rule for that report alone."""
    await asyncio.to_thread(running.client_run, PYTHON, "-c", JOIN_GROUPS)
    prompt = await agent.next_prompt()
    assert (prompt.source, prompt.exe, prompt.proto, prompt.dst) == (
        "kernel",
        None,
        "other",
        "224.0.0.22",
    ), prompt
    with pytest.raises(PromptError, match="no app is known"):
        await agent.answer(prompt, "allow", "forever", "app")
    assert running.ctl_json("list-rules") == []
    rule_id = await agent.answer(prompt, "allow", "forever", "exact")
    rules = running.ctl_json("list-rules")
    assert [(r["id"], r["text"]) for r in rules] == [(rule_id, "allow to=224.0.0.22 proto=other")]


def _spurious_rtx_host_queues(lab: Lab) -> int:
    """TcpExt TCPSpuriousRtxHostQueues: retransmits the kernel skipped because the original
    packet was still held on this host (here: in our queue)."""
    lines = lab.ns(lab.client, "cat", "/proc/net/netstat").stdout.splitlines()
    names, values = next(
        (a.split(), b.split())
        for a, b in itertools.pairwise(lines)
        if a.startswith("TcpExt:") and b.startswith("TcpExt:")
    )
    return int(values[names.index("TCPSpuriousRtxHostQueues")])


async def test_retransmitted_syn_joins_the_open_prompt(running: Lab, agent: ScriptedAgent) -> None:
    """TCP wants to resend its SYN after 1 s. Linux does not send a copy while the original
    is still held on the host (it counts TCPSpuriousRtxHostQueues instead); any SYN that does
    reach the queue joins the open prompt. Either way: one prompt, one verdict for all."""
    before = _spurious_rtx_host_queues(running)
    proc = await spawn_netclient(running, "tcp", "192.0.2.2", "80", "--timeout", "10")
    prompt = await agent.next_prompt()
    await asyncio.sleep(2.5)
    await agent.answer(prompt, "allow", "once")
    assert await client_outcome(proc) == "connected"
    assert agent.prompts.empty()
    rows = [r for r in running.log_rows() if r["dport"] == 80]
    assert {bare_reason(r) for r in rows} == {"answered once"}
    held_retransmits = _spurious_rtx_host_queues(running) - before
    assert len(rows) >= 2 or held_retransmits >= 1, "TCP never tried to resend the held SYN"


async def test_deny_once_then_prompted_again(lab: Lab, monkeypatch: Any) -> None:
    """A retry within `retry_window` gets the same answer unasked (issue 15); after it, the
    app is asked again."""
    lab.start_daemon(retry_window=1)
    agent = await start_agent(lab, monkeypatch)
    try:
        proc = await spawn_netclient(lab, "tcp", "192.0.2.2", "9000", "--timeout", "10")
        await agent.answer(await agent.next_prompt(), "reject", "once")
        assert await client_outcome(proc) == "refused"
        assert lab.ctl_json("list-rules") == []
        await asyncio.sleep(1.5)
        proc = await spawn_netclient(lab, "tcp", "192.0.2.2", "9000", "--timeout", "10")
        second = await agent.next_prompt()
        await agent.answer(second, "allow", "once")
        assert await client_outcome(proc) == "connected"
    finally:
        agent.stop()


async def test_no_answer_gives_default_after_timeout(lab: Lab, monkeypatch: Any) -> None:
    lab.start_daemon(prompt_timeout=1, default_action="reject")
    agent = await start_agent(lab, monkeypatch)
    try:
        start = time.monotonic()
        proc = await spawn_netclient(lab, "tcp", "192.0.2.2", "9000", "--timeout", "10")
        prompt = await agent.next_prompt()
        assert await client_outcome(proc) == "refused"
        assert 0.9 <= time.monotonic() - start < 5
        rows = [r for r in lab.log_rows() if r["dport"] == 9000]
        assert bare_reason(rows[-1]) == "default: timed out" and rows[-1]["action"] == "reject"
        assert await agent.next_cancel() == (prompt.id, "default: timed out")
    finally:
        agent.stop()


@pytest.mark.parametrize("readers", READERS)
async def test_twenty_parallel_connections_one_prompt(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, readers: int
) -> None:
    """One prompt for twenty connects of one app to one destination, and one row for it, also
    when their SYNs reach two queue readers (issue 21): the program sends them from each CPU
    in turn (`--queue-cpu-fanout`); the kernel's counters show both queues got some."""
    cpus = sorted(os.sched_getaffinity(0))
    if readers > len(cpus):
        pytest.skip("one CPU: every flow would reach one reader")
    lab.start_daemon(queue_readers=readers)
    agent = await start_agent(lab, monkeypatch)
    try:
        await _twenty_connects_one_prompt(lab, agent, cpus)
    finally:
        agent.stop()
    if readers > 1:
        queued = lab.queued()
        assert queued.get(4242, 0) > 0 and queued.get(4243, 0) > 0, queued
    rows = [r for r in lab.log_rows() if r["dport"] == 80]
    assert len(rows) == 1 and rows[0]["action"] == "allow", "one row for the one answer"


async def _twenty_connects_one_prompt(lab: Lab, agent: ScriptedAgent, cpus: list[int]) -> None:
    running = lab
    script = (
        "import os, socket, selectors\n"
        f"cpus = {cpus!r}\n"
        "socks = []\n"
        "for i in range(20):\n"
        "    os.sched_setaffinity(0, {cpus[i % len(cpus)]})\n"
        "    s = socket.socket(); s.setblocking(False); s.connect_ex(('192.0.2.2', 80))\n"
        "    socks.append(s)\n"
        "sel = selectors.DefaultSelector()\n"
        "for s in socks: sel.register(s, selectors.EVENT_WRITE)\n"
        "ok = 0\n"
        "import time; end = time.monotonic() + 15\n"
        "while ok < 20 and time.monotonic() < end:\n"
        "    for key, _ in sel.select(1):\n"
        "        sel.unregister(key.fileobj)\n"
        "        ok += key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0\n"
        "print(ok)\n"
    )
    proc = await spawn_in_client(running, PYTHON, "-c", script)
    prompt = await agent.next_prompt()
    await asyncio.sleep(0.5)
    await agent.answer(prompt, "allow", "once")
    assert await client_outcome(proc) == "20"
    assert agent.prompts.empty(), "more than one prompt for one app and destination"


async def test_until_process_quits_rule_ends_with_the_process(
    running: Lab, agent: ScriptedAgent
) -> None:
    proc = await spawn_netclient(running, "tcp", "192.0.2.2", "80", "--timeout", "10")
    rule_id = await agent.answer(await agent.next_prompt(), "allow", "process", "app")
    assert await client_outcome(proc) == "connected"
    for _ in range(50):
        if all(r["id"] != rule_id for r in running.ctl_json("list-rules")):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the for=process rule outlived its process")


async def test_agent_leaving_releases_its_prompts(lab: Lab, monkeypatch: Any) -> None:
    """No other agent: the held flow gets the default at once, not after the timeout."""
    lab.start_daemon(prompt_timeout=30, default_action="reject")
    agent = await start_agent(lab, monkeypatch)
    start = time.monotonic()
    proc = await spawn_netclient(lab, "tcp", "192.0.2.2", "80", "--timeout", "20")
    await agent.next_prompt()
    agent.stop()
    assert await client_outcome(proc) == "refused"
    assert time.monotonic() - start < 10
    assert bare_reason(lab.log_rows()[-1]) == "default: agent left"


async def test_other_user_cannot_answer_or_see_a_prompt(running: Lab, agent: ScriptedAgent) -> None:
    proc = await spawn_netclient(running, "tcp", "192.0.2.2", "80", "--timeout", "10")
    prompt = await agent.next_prompt()
    code = (
        "import asyncio, sys\n"
        "from snitch_common.answers import parse_answer\n"
        "from snitch_common.client import Client\n"
        "async def main():\n"
        "    c = await Client.connect()\n"
        "    print(len(await c.call('ListPrompts')))\n"
        "    try:\n"
        f"        await c.answer_prompt(parse_answer({prompt.id}, 'allow', 'forever', 'app'))\n"
        "    except Exception as e:\n"
        "        print(type(e).__name__, e)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", PYTHON, "-c", code],
        capture_output=True,
        text=True,
        env=running.env,
        timeout=30,
        check=False,
    )
    assert done.stdout.splitlines() == [
        "0",
        f"NotAuthorized no open prompt {prompt.id} for this agent",
    ], done.stderr
    assert proc.returncode is None
    await agent.answer(prompt, "allow", "once")
    assert await client_outcome(proc) == "connected"
    assert running.ctl_json("list-rules") == []


def test_snitchctl_agent_answers_in_a_terminal(running: Lab) -> None:
    """`snitchctl agent` in a pseudo-terminal shows the prompt and takes a typed answer."""
    terminal = Terminal([str(VENV_BIN / "snitchctl"), "agent"], running.env)
    try:
        terminal.read_until(b"waiting for prompts")
        with running.spawn_client("tcp", "192.0.2.2", "443", "--timeout", "10") as proc:
            text = terminal.read_until(b"answer> ")
            assert "192.0.2.2 port 443/tcp" in text and python_exe() in text, text
            terminal.type("a 15m host\n")
            terminal.read_until(b"rule ")
            out, _ = proc.communicate(timeout=20)
        assert out.strip() == "connected"
        rules = running.ctl_json("list-rules")
        assert rules[0]["text"].startswith(f"allow {netclient_who()} to=192.0.2.2 for=15m")
    finally:
        terminal.close()
