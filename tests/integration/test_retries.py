"""A denied attempt retried is one prompt and one log row (issue 15): a real curl that retries its
connection, a real snitchd and the real agent code answering "deny once" to every prompt.

With `retry_window = 0` (the memory off: snitch before issue 15) each retry is a new prompt and a
new row; the test prints both figures (they are not asserted beyond "more than one", as the
number of retries curl manages in its time varies with the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from conftest import PYTHON, Lab, curl_exe, start_agent
from snitch_common.bus import PromptView
from tests.integration.readerparams import READERS

AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
# Four connects (one and three retries), one second apart, each timing out after one second.
CURL = ["--connect-timeout", "1", "--retry", "3", "--retry-delay", "1", "--retry-max-time", "30"]


# Each test with one queue reader and with two (issue 21).
pytestmark = pytest.mark.parametrize("lab", READERS, indirect=True)


@contextlib.asynccontextmanager
async def denying(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[PromptView]]:
    """The real agent code answering "deny once" to every prompt; yields the prompts it got."""
    agent = await start_agent(lab, monkeypatch)
    prompts: list[PromptView] = []

    async def deny_all() -> None:
        while True:
            prompt = await agent.prompts.get()
            prompts.append(prompt)
            with contextlib.suppress(Exception):  # it may have timed out meanwhile
                await agent.answer(prompt, "deny", "once")

    task = asyncio.create_task(deny_all())
    try:
        yield prompts
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        agent.stop()


async def curl_retrying(lab: Lab, url: str) -> int:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", lab.client, curl_exe(), "-s", "-o", "/dev/null", *CURL, url,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        return await asyncio.wait_for(proc.wait(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("window", [0, pytest.param(10, marks=pytest.mark.slow)])
async def test_a_denied_curl_retried_is_one_prompt_and_one_row(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    lab.start_daemon(retry_window=window, prompt_timeout=10)
    async with denying(lab, monkeypatch) as prompts:
        status = await curl_retrying(lab, "http://192.0.2.2:9000/")
        await asyncio.sleep(1.0)  # the log writer's next batch
    assert status == 28, "curl was not timed out"
    rows = [r for r in lab.log_rows() if r["dport"] == 9000]
    retries = sum(r["retries"] for r in rows)
    print(f"\nretry_window={window}: prompts={len(prompts)} rows={len(rows)} "
          f"retries on rows={retries}")  # fmt: skip
    assert all(r["action"] == "deny" for r in rows)
    if window == 0:
        assert len(prompts) > 1 and len(rows) > 1 and retries == 0
        return
    assert len(prompts) == 1
    assert len(rows) == 1 and rows[0]["retries"] >= 2
    assert lab.ctl_json("status")["retries"] >= 2
    assert f"(retried {rows[0]['retries']}x)" in lab.ctl("log").stdout


async def test_a_user_flooding_attempts_pushes_out_only_their_own(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: uid 65534 makes 4000 blocked attempts (one per destination port) while
    root's denied curl retries. The memory stays bounded (2048 a user), nobody's attempts push
    out only nobody's, and root's retries are still one prompt and one row."""
    # Past the per-user limit of new flows (its own test: test_attribution_stall), so that
    # what is tested here is the memory's own bound.
    lab.start_daemon(retry_window=30, prompt_timeout=10, new_flows_per_user=0)
    lab.add_rule("deny user=65534")
    flood = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for port in range(20000, 24000):\n"
        "    s.sendto(b'x', ('192.0.2.2', port))\n"
        "print('sent', flush=True)\n"
        "sys.stdin.read()\n"  # keeps its socket until the test ends: its sender stays found
    )
    async with denying(lab, monkeypatch) as prompts:
        curl = asyncio.ensure_future(curl_retrying(lab, "http://192.0.2.2:9000/"))
        for _ in range(100):
            if prompts:
                break
            await asyncio.sleep(0.1)
        attacker = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", lab.client, *AS_NOBODY, PYTHON, "-c", flood,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert attacker.stdout is not None
            line = await asyncio.wait_for(attacker.stdout.readline(), 60)
            assert line.strip() == b"sent"
            assert await curl == 28
            await asyncio.sleep(1.0)
        finally:
            if attacker.returncode is None:
                attacker.kill()
            await attacker.wait()
    status = lab.ctl_json("status")
    rows = [r for r in lab.log_rows(app=curl_exe()) if r["dport"] == 9000]
    print(f"\nflood: attempts remembered {status['attempts_remembered']}, retries "
          f"{status['retries']}, root's rows {len(rows)}")  # fmt: skip
    assert len(prompts) == 1
    assert len(rows) == 1 and rows[0]["retries"] >= 2
    assert status["attempts_remembered"] <= 2048 + 1
