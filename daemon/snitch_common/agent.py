"""The agent side of prompting, shared by `snitchctl agent` (a terminal) and the desktop popup.

An agent exports `org.snitch.Agent1` on its own bus connection and registers it with snitchd;
snitchd then calls `Prompt(a{sv})` for each flow that waits for this user, and `Cancel(t, s)`
when a prompt ends without this agent (timeout, another agent, shutdown). Answers go back with
`Firewall1.AnswerPrompt`. Nothing here decides: it carries prompts to a person and back.

snitchd accepts an agent only from a process the kernel started from the set-group-id agent
launcher, which the user's other processes cannot reach into (snitchd/agents.py): each agent
program starts through it first thing (`snitch_common.launcher.start_agent`, which then calls
`make_undumpable`), and answers snitchd's `Prove(nonce)` while it registers by naming its thread
after the nonce,
which ties the bus connection to this very process. Only root may call Agent1 methods (the bus
policy), so no other process can make this one prove anything for it.
"""

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from typing import Annotated, Any

from dbus_fast import Variant
from dbus_fast.annotations import DBusSignature, DBusStr, DBusUInt64
from dbus_fast.service import ServiceInterface, dbus_method

from snitch_common.bus import AGENT_INTERFACE, AGENT_PATH, PromptView, plain
from snitch_common.client import Client

__all__ = ["AgentService", "make_undumpable", "register"]

VarDict = Annotated[dict[str, Variant], DBusSignature("a{sv}")]

_PR_SET_NAME = 15
_PR_SET_DUMPABLE = 4
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def make_undumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0): from now on a process of the same user can neither ptrace
    this one nor read or write its memory (/proc/PID/mem), and snitchd sees that it did this
    (its /proc files turn root's). Call it before anything else: a tracer attached earlier
    stays attached (snitchd refuses a traced agent). Raises OSError if the kernel refuses."""
    if _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(err)}")


def _thread_name() -> bytes:
    try:
        with open("/proc/thread-self/comm", "rb") as f:
            return f.read().strip()
    except OSError:
        return b"python3"


def _set_thread_name(name: bytes) -> None:
    _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name[:15]), 0, 0, 0)


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
        self._name_before: bytes | None = None

    @dbus_method()
    def Prompt(self, prompt: VarDict) -> None:
        self._on_prompt(PromptView.from_dict(plain(prompt)))

    @dbus_method()
    def Cancel(self, prompt_id: DBusUInt64, reason: DBusStr) -> None:
        self._on_cancel(prompt_id, reason)

    @dbus_method()
    def Alert(self, alert: VarDict) -> None:
        """kind (new-app, exe-changed, rules-changed, rules-unreadable, agent-registered,
        agent-refused), message, time, uid, exe."""
        if self._on_alert is not None:
            self._on_alert(plain(alert))

    @dbus_method()
    def Prove(self, nonce: DBusStr) -> None:
        """snitchd, while we register: name this thread `nonce` so that it can see the process
        behind this connection is this one (see the module docstring); `register` puts the
        name back."""
        if self._name_before is None:
            self._name_before = _thread_name()
        _set_thread_name(nonce.encode("ascii", "replace"))

    def proved(self) -> None:
        """Registration is over: this thread gets its own name back."""
        if self._name_before is not None:
            _set_thread_name(self._name_before)
            self._name_before = None


async def register(
    client: Client, service: AgentService, *, terminal: bool = False, take_over: bool = False
) -> int:
    """Export the agent and register it; returns the uid snitchd will route prompts of.
    `terminal`: a terminal agent, asked only when no desktop agent of the user is active, or
    first with `take_over` (issue 15)."""
    client.bus.export(AGENT_PATH, service)
    options = {"terminal": Variant("b", terminal), "take_over": Variant("b", take_over)}
    try:
        return int(await client.call("RegisterAgentWith", "oa{sv}", [AGENT_PATH, options]))
    finally:
        service.proved()
