"""Prompts go to the screen a person sits at (issue 15): a terminal agent (`snitchctl agent`, as in
a forgotten SSH session) and a desktop agent both registered, the prompt goes to the desktop
agent of the session logind says is Active and at a seat; when that session is switched away
from, the terminal agent gets the next one; `snitchctl status` says which agent gets what.

logind is a stand-in on the lab's private bus (`logindfake.py`, a bus service); snitchd, the
terminal agent, the desktop agent stand-in (`deskagent.py`, the agent library as the notifier
uses it) and the client are real processes.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator

import pytest

from conftest import HERE, PYTHON, VENV_BIN, Lab, Terminal, forge, run_netclient
from tests.integration import logindfake
from tests.integration.logindfake import FakeSession
from tests.support.lab import Lines, end_child


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


@pytest.fixture
async def sessions(running: Lab) -> AsyncIterator[tuple[FakeSession, FakeSession]]:
    """logind: the desktop agent sits in session 2 (seat0, x11, active), the terminal agent in
    session 5 (remote: SSH, no seat)."""
    assert running.bus is not None
    desktop = FakeSession("2", "seat0", "x11", remote=False, active=True)
    ssh = FakeSession("5", "", "tty", remote=True, active=True)

    def session_for(pid: int) -> FakeSession | None:
        cmdline = _cmdline(pid)
        if b"deskagent" in cmdline:
            return desktop
        if b"snitchctl" in cmdline or b"snitch-agent\0terminal" in cmdline:
            return ssh
        return None

    conn = await logindfake.serve(running.bus, [desktop, ssh], session_for)
    try:
        yield desktop, ssh
    finally:
        conn.disconnect()


async def connect(lab: Lab, port: int) -> str:
    return await run_netclient(lab, "tcp", "192.0.2.2", str(port), "--timeout", "10")


async def routing(lab: Lab) -> list[str]:
    status = await asyncio.to_thread(lab.ctl_json, "status")
    return list(status["routing"])


async def test_prompts_go_to_the_desktop_a_person_sits_at(
    running: Lab, sessions: tuple[FakeSession, FakeSession]
) -> None:
    desktop, _ = sessions
    running.expect_log(r"alert agent-registered: another agent registered for uid 0")
    # The terminal agent registers first: the oldest, which is who got the prompts before.
    terminal = Terminal([str(VENV_BIN / "snitchctl"), "agent"], running.env)
    desk = subprocess.Popen(
        [PYTHON, str(HERE / "deskagent.py")], stdout=subprocess.PIPE, text=True, env=running.env
    )
    try:
        await asyncio.to_thread(terminal.read_until, b"waiting for prompts")
        lines = Lines(desk)
        assert (await asyncio.to_thread(lines.next, 10)) == {"registered": True}
        order = await routing(running)
        assert len(order) == 2, order
        assert f"pid {desk.pid} (desktop; session 2 (x11, seat seat0, active))" in order[0]
        assert "gets the prompts" in order[0]
        assert "(terminal; session 5 (tty, remote, active))" in order[1]

        assert await connect(running, 80) == "connected"
        assert (await asyncio.to_thread(lines.next, 10))["port"] == 80
        assert not terminal.shows(b"a new connection waits")

        # The person switches to another session (logind: session 2 no longer Active).
        desktop.switch(False)
        for _ in range(50):
            if "(terminal;" in (await routing(running))[0]:
                break
            await asyncio.sleep(0.1)
        assert "(terminal;" in (await routing(running))[0]
        client = asyncio.ensure_future(connect(running, 443))
        text = await asyncio.to_thread(terminal.read_until, b"answer> ")
        assert "192.0.2.2 port 443/tcp" in text
        terminal.type("a once\n")
        assert await client == "connected"
        assert lines.queue.empty(), "the desktop agent was asked too"

        # Back at the desktop; then a terminal agent started with --take-over goes first.
        desktop.switch(True)
        for _ in range(50):
            if "(desktop;" in (await routing(running))[0]:
                break
            await asyncio.sleep(0.1)
        assert "(desktop;" in (await routing(running))[0]
        taker = Terminal([str(VENV_BIN / "snitchctl"), "agent", "--take-over"], running.env)
        try:
            await asyncio.to_thread(taker.read_until, b"waiting for prompts")
            order = await routing(running)
            assert "(terminal, --take-over;" in order[0] and len(order) == 3, order
        finally:
            taker.close()
    finally:
        terminal.close()
        desk.kill()  # it has no stdin to close: ended by its pid
        end_child(desk)


async def test_only_logind_s_own_signal_makes_snitchd_read_a_session_again(
    running: Lab, sessions: tuple[FakeSession, FakeSession]
) -> None:
    """uid 65534 sends snitchd's connection a PropertiesChanged at the desktop session's path:
    a signal addressed to a connection passes no match rule, so only logind's own broadcast
    (its sender checked by the bus) makes snitchd read the session again; a flood of forged
    ones would otherwise keep snitchd asking logind."""
    desktop, _ = sessions
    desk = subprocess.Popen(
        [PYTHON, str(HERE / "deskagent.py")], stdout=subprocess.PIPE, text=True, env=running.env
    )
    try:
        assert (await asyncio.to_thread(Lines(desk).next, 10)) == {"registered": True}
        assert "(desktop;" in (await routing(running))[0]
        before = desktop.reads
        assert before >= 1  # snitchd read the session when the agent registered
        await asyncio.to_thread(forge, running)
        await routing(running)  # a call after the forged signals: snitchd has taken them
        await asyncio.sleep(0.5)  # and a read they started would have reached logind by now
        assert desktop.reads == before, "a forged signal made snitchd read the session"

        desktop.switch(False)  # logind's own signal: read again at once
        for _ in range(50):
            if "inactive" in (await routing(running))[0]:
                break
            await asyncio.sleep(0.1)
        assert "session 2 (x11, seat seat0, inactive)" in (await routing(running))[0]
        assert desktop.reads > before
    finally:
        desk.kill()  # it has no stdin to close: ended by its pid
        end_child(desk)
