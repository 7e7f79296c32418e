"""Staying snitchd's agent for as long as the bus connection lasts.

snitchd keeps agents in memory only: after it restarts (an upgrade, a crash) nobody would be
asked and every prompt would get the default. So we watch `NameOwnerChanged` for snitchd's
name and register again when it comes back, and say when it leaves (its prompts are void then).
When snitchd is not running yet we wait for it instead of failing. Shared by the popup's bridge
and the notifications fallback; it talks to no person and keeps no prompt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from snitch_common.agent import AgentService, register
from snitch_common.bus import AGENT_PATH, disconnected
from snitch_common.client import Client
from snitch_common.errors import DaemonUnreachable, SnitchError

__all__ = ["Listener", "stay_registered"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Listener:
    """Who hears about the registration: all three are called on the asyncio loop."""

    registered: Callable[[int], None]  # the uid snitchd routes prompts of
    failed: Callable[[str], None]  # a message people read (not running, refused)
    daemon_gone: Callable[[str], None]  # every shown prompt is void


async def stay_registered(
    client: Client, service: AgentService, listener: Listener, stop: asyncio.Event
) -> None:
    """Register `service` and keep it registered until `stop` is set or the bus goes away."""
    owners: asyncio.Queue[str] = asyncio.Queue()
    await client.watch_daemon(owners.put_nowait)
    await _register(client, service, listener)
    stopped = asyncio.ensure_future(stop.wait())
    gone = disconnected(client.bus)
    try:
        while True:
            owner = asyncio.ensure_future(owners.get())
            waiters: set[asyncio.Future[Any]] = {stopped, gone, owner}
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if owner not in done:
                owner.cancel()
                break
            if owner.result():
                log.info("snitchd (re)started: registering again")
                await _register(client, service, listener)
            else:
                log.warning("snitchd left the bus: its prompts are void")
                listener.daemon_gone("snitchd stopped")
        if gone.done():
            log.warning("lost the system bus (%s)", gone.exception() or "closed")
            listener.daemon_gone("lost the system bus")
    finally:
        stopped.cancel()
        gone.cancel()


async def _register(client: Client, service: AgentService, listener: Listener) -> None:
    # register() exports the agent object; a second registration on the same connection
    # (snitchd restarted) must not trip over the first export.
    client.bus.unexport(AGENT_PATH)
    try:
        uid = await register(client, service)
    except DaemonUnreachable as exc:
        log.warning("snitchd is not running: waiting for it (%s)", exc.message)
        listener.failed(exc.message)
        return
    except SnitchError as exc:
        log.error("snitchd refused this agent: %s", exc.message)
        listener.failed(exc.message)
        return
    log.info("registered as the agent of uid=%d", uid)
    listener.registered(uid)
