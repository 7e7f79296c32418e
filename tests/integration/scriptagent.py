"""The real agent code (`snitch_common.agent`) on the lab's bus, driven by the test: what snitchd
sends it (prompts, cancellations, alerts) is queued for the test to read, and the test answers
with the same words a person types. It registers as the uid the test runs as (root: an admin's
agent)."""

from __future__ import annotations

import asyncio
from typing import Any

from snitch_common.agent import AgentService, register
from snitch_common.answers import parse_answer
from snitch_common.bus import PromptView
from snitch_common.client import Client


class ScriptedAgent:
    def __init__(self) -> None:
        self.prompts: asyncio.Queue[PromptView] = asyncio.Queue()
        self.cancelled: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        self.alerts: list[dict[str, Any]] = []
        self.client: Client | None = None

    async def start(self) -> None:
        """Connect to the bus DBUS_SYSTEM_BUS_ADDRESS names and register."""
        self.client = await Client.connect()
        service = AgentService(
            self.prompts.put_nowait,
            lambda prompt_id, reason: self.cancelled.put_nowait((prompt_id, reason)),
            self.alerts.append,
        )
        await register(self.client, service)

    async def next_prompt(self, timeout: float = 10) -> PromptView:
        return await asyncio.wait_for(self.prompts.get(), timeout)

    async def next_cancel(self, timeout: float = 10) -> tuple[int, str]:
        """The next (prompt id, reason) snitchd withdrew."""
        return await asyncio.wait_for(self.cancelled.get(), timeout)

    async def answer(
        self, prompt: PromptView, action: str, duration: str = "forever", scope: str = "exact"
    ) -> int:
        """Answer as a person would (`allow`, `once`, `host`…); returns the rule id (0: none)."""
        assert self.client is not None
        return await self.client.answer_prompt(parse_answer(prompt.id, action, duration, scope))

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
