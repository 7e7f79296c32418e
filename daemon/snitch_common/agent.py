"""The agent side of prompting, shared by `snitchctl agent` (a terminal) and the desktop popup.

An agent exports `org.snitch.Agent1` on its own bus connection and registers it with snitchd;
snitchd then calls `Prompt(a{sv})` for each flow that waits for this user, and `Cancel(t, s)`
when a prompt ends without this agent (timeout, another agent, shutdown). Answers go back with
`Firewall1.AnswerPrompt`. Nothing here decides: it carries prompts to a person and back.
"""

from collections.abc import Callable
from typing import Annotated, Any

from dbus_fast import Variant
from dbus_fast.annotations import DBusSignature, DBusStr, DBusUInt64
from dbus_fast.service import ServiceInterface, dbus_method

from snitch_common.bus import AGENT_INTERFACE, AGENT_PATH, PromptView, plain
from snitch_common.client import Client

__all__ = ["AgentService", "register"]

VarDict = Annotated[dict[str, Variant], DBusSignature("a{sv}")]


class AgentService(ServiceInterface):
    def __init__(
        self,
        on_prompt: Callable[[PromptView], None],
        on_cancel: Callable[[int, str], None],
        on_alert: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__(AGENT_INTERFACE)
        self._on_prompt = on_prompt
        self._on_cancel = on_cancel
        self._on_alert = on_alert

    @dbus_method()
    def Prompt(self, prompt: VarDict) -> None:
        self._on_prompt(PromptView.from_dict(plain(prompt)))

    @dbus_method()
    def Cancel(self, prompt_id: DBusUInt64, reason: DBusStr) -> None:
        self._on_cancel(prompt_id, reason)

    @dbus_method()
    def Alert(self, alert: VarDict) -> None:
        """kind (new-app, exe-changed, rules-changed), message, time, uid, exe."""
        if self._on_alert is not None:
            self._on_alert(plain(alert))


async def register(client: Client, service: AgentService) -> int:
    """Export the agent and register it; returns the uid snitchd will route prompts of."""
    client.bus.export(AGENT_PATH, service)
    return int(await client.call("RegisterAgent", "o", [AGENT_PATH]))
