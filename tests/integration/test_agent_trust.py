"""Issue 13: answers you can trust. Only an installed agent program may answer a user's prompts;
permanent allow answers can require polkit; a rule that stops parsing never stops denying; one
user's prompts and packets never push root's or another user's flows to the default.

Attackers run as uid 65534 (setpriv), as malware of the desktop user would; the agents are the
real programs (`snitchctl agent` on a pseudo-terminal) or the real agent code in this process.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    AGENT_LAUNCHER,
    AS_NOBODY,
    HERE,
    PYTHON,
    VENV_BIN,
    Lab,
    Terminal,
    client_outcome,
    lab_agent,
    spawn_netclient,
)
from snitch_common.errors import PromptError
from tests.integration import polkitfake
from tests.integration.scriptagent import ScriptedAgent
from tests.support.lab import wait_for

pytestmark = pytest.mark.usefixtures("end_clients")


FAKE_AGENT = """
import asyncio
from snitch_common.agent import AgentService, register
from snitch_common.client import Client

async def main():
    c = await Client.connect()
    try:
        uid = await register(c, AgentService(print, print))
        print("registered", uid)
    except Exception as e:
        print(type(e).__name__, e)

asyncio.run(main())
"""


# Registers as an agent again and again (each refused: it is not the launcher); prints how
# many of argv[1] attempts were refused.
REGISTER_LOOP = """
import asyncio, sys
from snitch_common.agent import AgentService
from snitch_common.bus import AGENT_PATH
from snitch_common.client import Client

async def main():
    c = await Client.connect()
    c.bus.export(AGENT_PATH, AgentService(print, print))
    refused = 0
    for _ in range(int(sys.argv[1])):
        try:
            await c.call("RegisterAgent", "o", [AGENT_PATH])
        except Exception as e:
            refused += type(e).__name__ == "NotAuthorized"
    print(refused)

asyncio.run(main())
"""


def _nobody_agent(lab: Lab) -> Terminal:
    """The real `snitchctl agent` of uid 65534, on a pseudo-terminal."""
    terminal = Terminal([*AS_NOBODY, str(VENV_BIN / "snitchctl"), "agent"], lab.env)
    terminal.read_until(b"waiting for prompts")
    return terminal


def test_a_script_registering_as_agent_is_refused_and_the_real_agent_is_told(
    running: Lab, shared_dir: Path
) -> None:
    """Before: any process of the user registered, and the newest agent got the prompts. Now
    `snitchctl agent` is accepted; `python -c` using the agent library is refused with a clear
    NotAuthorized, and so is code that PYTHONPATH slips into the real `snitchctl` (it runs
    before the launcher, which ignores PYTHONPATH: before the launcher, snitchd refused the
    real script only because it read PYTHONPATH in its environment); the user's agent hears of
    the first refusal (then once a minute), and of a second genuine agent; prompts stay with
    the oldest agent."""
    running.expect_log(r"alert agent-refused: ", r"alert agent-registered: ")
    first = _nobody_agent(running)
    second: Terminal | None = None
    try:
        fake = subprocess.run(
            [*AS_NOBODY, PYTHON, "-c", FAKE_AGENT],
            capture_output=True, text=True, env=running.env, timeout=30, check=False,
        )  # fmt: skip
        assert fake.stdout.startswith("NotAuthorized cannot register as an agent: pid "), fake
        assert "not the agent launcher" in fake.stdout, fake.stdout
        first.read_until(b"agent-refused")

        # Code of the user's that Python runs at start, found through PYTHONPATH.
        evil = shared_dir
        (evil / "sitecustomize.py").write_text(FAKE_AGENT + "raise SystemExit(0)\n")
        injected = subprocess.run(
            [*AS_NOBODY, str(VENV_BIN / "snitchctl"), "agent"],
            capture_output=True, text=True, env=running.env | {"PYTHONPATH": str(evil)},
            timeout=30, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert "NotAuthorized cannot register as an agent" in injected.stdout, injected
        assert "not the agent launcher" in injected.stdout, injected.stdout

        second = _nobody_agent(running)
        first.read_until(b"agent-registered")
        status = running.ctl_json("status")
        assert status["agents"] == 2 and status["agents_refused"] == 2, status

        # A flow of uid 65534 is asked of the oldest of its agents, not the newest.
        nobody = subprocess.Popen(
            ["ip", "netns", "exec", running.client, *AS_NOBODY, PYTHON,
             str(HERE / "netclient.py"), "tcp", "192.0.2.2", "80", "--timeout", "10"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            first.read_until(b"answer> ")
            first.type("a once\n")
            out, _ = nobody.communicate(timeout=20)
            assert out.strip() == "connected"
            assert "answer> " not in second.screen.decode(errors="replace")
        finally:
            if nobody.poll() is None:
                nobody.kill()
                nobody.communicate()
    finally:
        first.close()
        if second is not None:
            second.close()


# Malware of uid 65534 posing as `snitchctl agent`: it writes the agent's argv over its own
# (/proc/self/mem, while it may still write its own memory), makes itself non-dumpable, and
# registers with the real agent library, which answers snitchd's Prove. Its argv is then
# exactly what the kernel makes of snitchctl's #! line.
IMPOSTOR = (
    """
import asyncio, sys
fake = b"\\0".join(a.encode() for a in sys.argv[1:]) + b"\\0"
with open("/proc/self/stat", "rb") as f:
    fields = f.read().rsplit(b")", 1)[1].split()
start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end
assert len(fake) <= end - start, (len(fake), end - start)
with open("/proc/self/mem", "r+b", buffering=0) as mem:
    mem.seek(start)
    mem.write(fake.ljust(end - start, b"\\0"))
from snitch_common.agent import AgentService, make_undumpable
make_undumpable()
"""
    + FAKE_AGENT
)


def test_a_user_registering_in_a_loop_gets_one_journal_line_a_minute(running: Lab) -> None:
    """Each refused RegisterAgent made a journal line and an alert to the user's agents: a
    user looping over it wrote ~1,200 lines a second, and journald's rate limit (10,000 per 30
    s by default) then drops every line of snitchd's, the alerts about every other user too.
    Now 300 refusals make one line; the status still counts them all."""
    running.expect_log(r"alert agent-refused: ")
    looped = subprocess.run(
        [*AS_NOBODY, PYTHON, "-c", REGISTER_LOOP, "300"],
        capture_output=True, text=True, env=running.env, timeout=120, check=False,
    )  # fmt: skip
    assert looped.stdout.strip() == "300", looped
    lines = [line for line in running.log_text().splitlines() if "alert agent-refused" in line]
    assert len(lines) == 1, lines[:3]
    assert running.ctl_json("status")["agents_refused"] == 300


def test_a_program_that_writes_the_agent_s_argv_over_its_own_is_refused(running: Lab) -> None:
    """Before: snitchd named an agent by its argv, and this impostor was taken as
    `snitchctl agent` (registered, and would have been asked, and answered, its own prompts).
    Now the process must be the launcher's exec, which its memory cannot change."""
    running.expect_log(r"alert agent-refused: ")
    script = str(VENV_BIN / "snitchctl")
    with open(script, "rb") as f:
        interpreter = f.readline()[2:].decode().strip()
    done = subprocess.run(
        [*AS_NOBODY, PYTHON, "-c", IMPOSTOR, interpreter, script, "agent"],
        capture_output=True, text=True, env=running.env, timeout=30, check=False,
    )  # fmt: skip
    assert done.stdout.startswith("NotAuthorized cannot register as an agent: pid "), done
    assert "not the agent launcher" in done.stdout, done.stdout
    assert running.ctl_json("status")["agents"] == 0


# A library preloaded into the real agent that takes its own name out of the environment: the
# kernel shows /proc/PID/environ from the process's memory.
HIDDEN_PRELOAD_C = r"""
#include <string.h>
#include <unistd.h>
extern char **environ;
__attribute__((constructor)) static void hide(void) {
    if (getuid() == 0)  /* setpriv, before it becomes 65534 */
        return;
    for (char **e = environ; *e != 0; e++)
        if (strncmp(*e, "LD_PRELOAD=", 11) == 0)
            (*e)[0] = 'X';
}
"""


def test_a_library_preloaded_into_the_real_agent_does_not_reach_the_registered_agent(
    running: Lab, shared_dir: Path
) -> None:
    """Before: LD_PRELOAD loaded the user's library into the real `snitchctl agent`, which
    renamed the variable in its environment, and snitchd took the agent with the library in
    it. Now the agent that registers is the launcher's exec, in which the kernel's secure mode
    made the loader ignore LD_PRELOAD: the library is not mapped in it."""
    running.expect_log(r"alert agent-registered: ")
    source = shared_dir / "hide.c"
    source.write_text(HIDDEN_PRELOAD_C)
    library = shared_dir / "hide.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    # The real agent with the library; and the launcher itself, given it directly.
    for argv, env in (
        ([str(VENV_BIN / "snitchctl"), "agent"], {"LD_PRELOAD": str(library)}),
        (["env", f"LD_PRELOAD={library}", str(AGENT_LAUNCHER), "terminal"], {}),
    ):
        terminal = Terminal([*AS_NOBODY, *argv], running.env | env)
        try:
            terminal.read_until(b"waiting for prompts")
            pid = terminal.proc.pid
            assert os.readlink(f"/proc/{pid}/exe") == str(AGENT_LAUNCHER)
            assert str(library) not in Path(f"/proc/{pid}/maps").read_text()
            assert running.ctl_json("status")["agents"] == 1
        finally:
            terminal.close()
        wait_for(lambda: running.ctl_json("status")["agents"] == 0, 10, "the agent to leave")


@pytest.fixture
async def root_agent(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ScriptedAgent]:
    """An admin's agent (root, in this process) for a lab whose daemon the test starts."""
    agent = lab_agent(lab, monkeypatch)
    yield agent
    agent.stop()


async def test_allow_forever_waits_for_polkit_and_is_refused_when_it_says_no(
    lab: Lab, root_agent: ScriptedAgent
) -> None:
    """answers_need_auth: before, an allow-forever answer made its rule at once. Now it waits
    for polkit (a fake PolicyKit1 on the lab's bus); "no" refuses it and the prompt stays open
    for another answer; "yes" makes the rule."""
    assert lab.bus is not None
    conn, authority = await polkitfake.serve(lab.bus)
    try:
        lab.start_daemon(answers_need_auth=True, prompt_timeout=30)
        await root_agent.start()
        proc = await spawn_netclient(lab, "tcp", "192.0.2.2", "80", "--timeout", "20")
        prompt = await root_agent.next_prompt()
        answering = asyncio.ensure_future(root_agent.answer(prompt, "allow", "forever"))
        await asyncio.wait_for(authority.asked.wait(), 10)
        ((name, action, flags),) = authority.calls
        assert action == "org.snitch.answer-allow-forever" and flags == 1
        assert name == root_agent.client.bus.unique_name  # type: ignore[union-attr]
        await asyncio.sleep(0.5)
        assert not answering.done() and proc.returncode is None
        authority.decide(False)
        # Refused as an answer (the prompt stays open: `left_open`), not as an agent.
        with pytest.raises(PromptError, match="authentication failed or was cancelled"):
            await answering
        assert lab.ctl_json("list-rules") == [] and proc.returncode is None
        authority.asked.clear()
        answering = asyncio.ensure_future(root_agent.answer(prompt, "allow", "forever"))
        await asyncio.wait_for(authority.asked.wait(), 10)
        authority.decide(True)
        rule_id = await answering
        assert await client_outcome(proc) == "connected"
        assert [r["id"] for r in lab.ctl_json("list-rules")] == [rule_id]
        # An answer that makes no permanent allow rule needs no authentication.
        proc = await spawn_netclient(lab, "tcp", "192.0.2.2", "443", "--timeout", "20")
        assert await root_agent.answer(await root_agent.next_prompt(), "allow", "15m") > 0
        assert await client_outcome(proc) == "connected" and len(authority.calls) == 2
    finally:
        conn.disconnect()


def _corrupt(lab: Lab, rule_id: int, text: str) -> None:
    """A rule row's text broken by hand (a bad disk, a bad edit): sqlite3 as root would."""
    with sqlite3.connect(lab.db) as raw:
        raw.execute("UPDATE rules SET text = ? WHERE id = ?", (text, rule_id))
    raw.close()


def test_a_corrupted_deny_rule_keeps_denying_and_stops_the_next_start(lab: Lab) -> None:
    """Before: a stored rule that no longer parsed was skipped with a warning, and the flow it
    denied connected. Now a running snitchd keeps its last good rules (and alerts, and says so
    in status); a new start fails naming the row; `snitchctl doctor` names it too."""
    lab.expect_log(r"alert rules-unreadable: ")
    lab.start_daemon(default_action="allow")
    rule_id = lab.add_rule("reject to=192.0.2.2 port=80")
    assert lab.py("tcp", "192.0.2.2", 80) == "refused"
    broken = "reject to=192.0.2.2 port=80 oops=1"
    _corrupt(lab, rule_id, broken)
    deadline = time.monotonic() + 10
    while "alert rules-" not in lab.log_text():  # the sweep (once a second) has read it
        assert time.monotonic() < deadline, lab.log_text()
        time.sleep(0.1)
    assert lab.py("tcp", "192.0.2.2", 80) == "refused"
    assert "alert rules-unreadable" in lab.log_text()
    status = lab.ctl_json("status")
    assert f"rule {rule_id} does not parse: {broken!r}" in status["rules_error"], status
    assert lab.stop_daemon() == 0

    done = lab.run_snitchd()
    assert done.returncode == 1, done
    assert f"rule {rule_id} does not parse: {broken!r}" in done.stderr, done.stderr
    assert f"DELETE FROM rules WHERE id = {rule_id}" in done.stderr
    assert "filtering" not in done.stderr and lab.iptables_save().count("NFQUEUE") == 0

    doctor = lab.ctl("doctor", "--config", str(lab.config_path))
    assert doctor.returncode == 1, doctor
    assert "ok: PRAGMA integrity_check: ok" in doctor.stdout
    assert f"problem: rule {rule_id} does not parse: {broken!r}" in doctor.stdout, doctor.stdout
    _corrupt(lab, rule_id, "reject to=192.0.2.2 port=80")
    fixed = lab.ctl("doctor", "--config", str(lab.config_path))
    assert fixed.returncode == 0, fixed.stdout


def _nobody_sender(lab: Lab, code: str) -> subprocess.Popen[str]:
    """uid 65534 runs `code`, says "sent", then keeps its socket open (so that snitchd still
    finds the sender of each packet) until the test ends it."""
    script = code + "print('sent', flush=True)\nimport time\ntime.sleep(120)\n"
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.client, *AS_NOBODY, PYTHON, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "sent"
    return proc


def _end(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.communicate()


def _held(lab: Lab) -> int:
    return int(lab.ctl_json("status").get("kernel_held", 0))


# The agent leaves at the end with prompts it never took up: calls to it fail then.
_AGENT_GONE = r"WARNING snitchd.api: agent :\S+ (Prompt|Cancel) failed: "


async def test_6000_datagrams_joining_one_prompt_do_not_stop_roots_allowed_connections(
    lab: Lab, root_agent: ScriptedAgent
) -> None:
    """Before: every datagram of a flow that waited for a person was held, until the kernel's
    queue (4096) was full and it dropped every new flow, root's allowed ones too. Now a prompt
    holds max_prompt_packets (64); the rest are dropped and counted."""
    lab.expect_log(_AGENT_GONE)
    # With the per-user limit of new flows (1000 a second) most datagrams would not even reach
    # the queue: off here, so that what is tested is the prompts' own share.
    lab.start_daemon(prompt_timeout=60, new_flows_per_user=0)
    lab.add_rule("allow user=0 to=192.0.2.2 port=80")
    await root_agent.start()  # an admin's agent that never answers: nobody's prompt stays
    # 100 sockets, 60 datagrams each (a socket's send buffer holds a few hundred held ones):
    # one app, one destination, so all of them join one prompt.
    flood = (
        "import socket\n"
        "socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(100)]\n"
        "for s in socks:\n"
        "    s.setblocking(False)\n"
        "for _ in range(60):\n"
        "    for s in socks:\n"
        "        try:\n"
        "            s.sendto(b'x', ('192.0.2.2', 9000))\n"
        "        except OSError:\n"
        "            pass\n"
    )
    sender = await asyncio.to_thread(_nobody_sender, lab, flood)
    try:
        prompt = await root_agent.next_prompt()
        assert prompt.uid == 65534 and prompt.port == 9000
        settled, last = time.monotonic() + 10, -1
        while time.monotonic() < settled and (held := _held(lab)) != last:  # queue drains
            last = held
            await asyncio.sleep(0.3)
        for _ in range(3):
            assert await asyncio.to_thread(lab.py, "tcp", "192.0.2.2", 80) == "connected"
        status = lab.ctl_json("status")
        assert status["prompts_open"] == 1 and status["prompt_packets_held"] == 64, status
        # Past its share; the kernel itself drops what comes faster than snitchd reads.
        dropped = status["prompt_packets_dropped"] + status.get("kernel_queue_dropped", 0)
        assert status["prompt_packets_dropped"] > 1000 and dropped >= 5000, status
        assert status["kernel_held"] <= 64, status
    finally:
        _end(sender)


async def test_64_prompts_of_one_user_do_not_push_anothers_flow_to_the_default(
    lab: Lab, root_agent: ScriptedAgent
) -> None:
    """Before: max_prompts (64) was one limit for all users: a user whose agent never answers
    held 64 prompts, and root's next flow got the default at once. Now it is per user."""
    lab.expect_log(_AGENT_GONE)
    lab.start_daemon(prompt_timeout=60)
    await root_agent.start()
    ports = ", ".join(str(p) for p in range(10000, 10064))
    opener = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for port in ({ports}):\n"
        "    s.sendto(b'x', ('192.0.2.2', port))\n"
    )
    sender = await asyncio.to_thread(_nobody_sender, lab, opener)
    try:
        for _ in range(64):
            assert (await root_agent.next_prompt()).uid == 65534
        proc = await spawn_netclient(lab, "tcp", "192.0.2.2", "80", "--timeout", "20")
        mine = await root_agent.next_prompt()
        assert mine.uid == 0 and mine.port == 80
        await root_agent.answer(mine, "allow", "once")
        assert await client_outcome(proc) == "connected"
        status: dict[str, Any] = lab.ctl_json("status")
        assert status["prompts_open"] == 64 and status["prompts_over_quota"] == 0, status
    finally:
        _end(sender)
