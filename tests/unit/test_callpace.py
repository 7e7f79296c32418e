"""`callpace.CallPace`: a user's D-Bus calls past the rate wait their turn, and past
`WAITING_MAX` waiting are refused; root's and the system's uids are never paced. Turns are
counted, not timed: at one call a second, a call that waits is still waiting when the test
looks."""

from __future__ import annotations

import asyncio

import pytest

from snitch_common.errors import Busy
from snitchd.callpace import WAITING_MAX, CallPace

USER = 1000


async def _started(
    pace: CallPace, uid: int, count: int, per_second: int
) -> list[asyncio.Task[None]]:
    tasks = [asyncio.create_task(pace.take(uid, per_second)) for _ in range(count)]
    for _ in range(3):  # every take that need not wait is done by now
        await asyncio.sleep(0)
    return tasks


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_user_s_burst_runs_at_once_and_the_next_call_waits() -> None:
    pace = CallPace()
    tasks = await _started(pace, USER, 5, per_second=3)
    try:
        assert [t.done() for t in tasks] == [True, True, True, False, False]
    finally:
        await _cancel(tasks)


async def test_past_the_waiting_calls_a_user_s_next_is_refused_and_others_are_not_held() -> None:
    pace = CallPace()
    tasks = await _started(pace, USER, 1 + WAITING_MAX, per_second=1)
    try:
        assert sum(t.done() for t in tasks) == 1
        with pytest.raises(Busy, match="dbus_calls_per_user"):
            await pace.take(USER, 1)
        await asyncio.wait_for(pace.take(USER + 1, 1), 5)  # another user: its own turns
        await asyncio.wait_for(pace.take(0, 1), 5)  # root: never paced
        await asyncio.wait_for(pace.take(999, 1), 5)  # nor a system uid
    finally:
        await _cancel(tasks)


async def test_a_cancelled_wait_gives_its_place_back_and_0_is_no_limit() -> None:
    pace = CallPace()
    tasks = await _started(pace, USER, 1 + WAITING_MAX, per_second=1)
    await _cancel(tasks[1:])  # callers gone (their connections left the bus)
    waiting = await _started(pace, USER, 1, per_second=1)
    try:
        assert not waiting[0].done()  # waits: it is not refused
        await asyncio.wait_for(pace.take(USER, 0), 5)
    finally:
        await _cancel([tasks[0], *waiting])
