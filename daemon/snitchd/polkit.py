"""Asking polkit whether a person may make a permanent allow rule (`answers_need_auth`).

Little Snitch can require an admin's password before rules change; with `answers_need_auth`,
snitchd asks polkit (`org.freedesktop.PolicyKit1`, the action `ANSWER_ALLOW_FOREVER`, whose
policy in systemd/ says `auth_admin_keep`) before it turns an answer into an allow rule that
lasts forever. The subject is the agent's own bus connection, so polkit asks the person at that
agent's session (through their polkit authentication agent) and caches a yes for a few minutes.
Malware that drives a genuine agent must then also type an admin's password. The call waits for
the person: it runs on its own (the D-Bus method awaits it), never on the packet loop's path.
"""

from __future__ import annotations

import logging

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from snitch_common.errors import NotAuthorized

__all__ = ["ANSWER_ALLOW_FOREVER", "check_authorization"]

log = logging.getLogger(__name__)

ANSWER_ALLOW_FOREVER = "org.snitch.answer-allow-forever"
_ALLOW_USER_INTERACTION = 1


async def check_authorization(bus: MessageBus, name: str, action: str) -> None:
    """Return when polkit authorizes the bus connection `name` for `action` (after asking
    the person if the policy says so); raise NotAuthorized otherwise, or when polkit cannot
    be asked (fail closed: the setting asked for authentication)."""
    reply = await bus.call(
        Message(
            destination="org.freedesktop.PolicyKit1",
            path="/org/freedesktop/PolicyKit1/Authority",
            interface="org.freedesktop.PolicyKit1.Authority",
            member="CheckAuthorization",
            signature="(sa{sv})sa{ss}us",
            body=[
                ["system-bus-name", {"name": Variant("s", name)}],
                action,
                {},
                _ALLOW_USER_INTERACTION,
                "",
            ],
        )
    )
    if reply is None or reply.message_type is MessageType.ERROR:
        detail = reply.body[0] if reply is not None and reply.body else "no reply"
        name_ = reply.error_name if reply is not None else ""
        log.warning("polkit could not be asked action=%s: %s %s", action, name_, detail)
        raise NotAuthorized(
            f"cannot make a permanent allow rule: polkit could not be asked ({name_}: {detail}); "
            "answers_need_auth is on (is polkitd running? or answer for a shorter time)"
        )
    authorized, challenge, _details = reply.body[0]
    if not authorized:
        log.info("polkit said no action=%s name=%s challenge=%s", action, name, challenge)
        raise NotAuthorized(
            "cannot make a permanent allow rule: authentication failed or was cancelled "
            "(answers_need_auth is on: an admin's password is needed; or answer for a "
            "shorter time)"
        )
