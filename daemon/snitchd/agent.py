"""The agent side of prompting, shared by `snitchctl agent` (a terminal) and the desktop popup.

An agent exports `org.snitch.Agent1` on its own bus connection and registers it with snitchd;
snitchd then calls `Prompt(a{sv})` for each flow that waits for this user, and `Cancel(t, s)`
when a prompt ends without this agent (timeout, another agent, shutdown). Answers go back with
`Firewall1.AnswerPrompt`. Nothing here decides: it carries prompts to a person and back.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from dbus_fast import Variant
from dbus_fast.annotations import DBusSignature, DBusStr, DBusUInt64
from dbus_fast.service import ServiceInterface, dbus_method

from snitchd.client import Client, plain

__all__ = ["AGENT_INTERFACE", "AGENT_PATH", "AgentService", "PromptView", "register"]

AGENT_INTERFACE = "org.snitch.Agent1"
AGENT_PATH = "/org/snitch/Agent1"

VarDict = Annotated[dict[str, Variant], DBusSignature("a{sv}")]


@dataclass(frozen=True, slots=True)
class PromptView:
    """A prompt as an agent shows it; built from the daemon's a{sv}, unknown keys ignored."""

    id: int
    exe: str | None
    pid: int | None
    uid: int | None
    user: str | None
    cmdline: tuple[str, ...]
    parents: tuple[tuple[int, str], ...]
    sha256: str | None
    proto: str
    dst: str
    port: int
    iface: str
    host: str | None
    deadline: float
    default_action: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PromptView":
        return cls(
            id=int(d["id"]),
            exe=d.get("exe"),
            pid=d.get("pid"),
            uid=d.get("uid"),
            user=d.get("user"),
            cmdline=tuple(d.get("cmdline", ())),
            parents=tuple((int(p), str(e)) for p, e in d.get("parents", ())),
            sha256=d.get("sha256"),
            proto=str(d.get("proto", "")),
            dst=str(d.get("dst", "")),
            port=int(d.get("port", 0)),
            iface=str(d.get("iface", "")),
            host=d.get("host"),
            deadline=float(d.get("deadline", 0.0)),
            default_action=str(d.get("default_action", "deny")),
        )

    @property
    def destination(self) -> str:
        where = f"{self.host} ({self.dst})" if self.host else self.dst
        port = f" port {self.port}" if self.proto in ("tcp", "udp") else ""
        return f"{where}{port}/{self.proto}"

    @property
    def who(self) -> str:
        if self.exe is None:
            return "kernel" if self.uid is None else f"uid {self.uid} (process not found)"
        return self.exe


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
