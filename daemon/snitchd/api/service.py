"""The D-Bus service `org.snitch.Firewall1` put together from its rooms, its status, and its
place on the system bus (`serve`).
"""

import dataclasses
import logging

from dbus_fast import BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.service import dbus_method

from snitch_common.bus import BUS_NAME, OBJECT_PATH, call_bus_daemon, patient_writes
from snitch_common.errors import SnitchError
from snitchd.api.lists import ListsRoom
from snitchd.api.modes import ModesRoom
from snitchd.api.monitor import MonitorRoom
from snitchd.api.prompts import DBusTransport, PromptsRoom
from snitchd.api.rules import RulesRoom
from snitchd.api.values import VarDict, variants
from snitchd.caller import CallerAwareBus, handled
from snitchd.firewall import Firewall
from snitchd.logind import Logind
from snitchd.queries import Reader
from snitchd.status import Status, current_status
from snitchd.switching import Switcher

__all__ = ["FirewallService", "serve"]

# One logger for the whole service, as before the split: its lines keep their name.
log = logging.getLogger("snitchd.api")


class FirewallService(RulesRoom, PromptsRoom, MonitorRoom, ListsRoom, ModesRoom):
    """`org.snitch.Firewall1`: the rooms together, and the status."""

    @dbus_method()
    @handled()
    async def Status(self) -> VarDict:
        status = await current_status(self.firewall, self.backend, self.agents_refused)
        shown = _status_dict(dataclasses.replace(status, routing=self._routing()))
        if self._switcher is not None:  # the network profiles follow (issue 17)
            shown["network"] = Variant("s", self._switcher.network.describe())
        return shown


def _status_dict(status: Status) -> dict[str, Variant]:
    """The one place a `Status` becomes a{sv}: its fields by name, the kernel's as kernel_*."""
    fields = {f.name: getattr(status, f.name) for f in dataclasses.fields(status)}
    kernel = fields.pop("kernel")
    routing = fields.pop("routing")
    out = variants(fields | {f"kernel_{key}": value for key, value in kernel})
    out["routing"] = Variant("as", list(routing))
    return out


async def serve(firewall: Firewall, backend: str, switcher: Switcher | None = None) -> MessageBus:
    """Connect to the system bus (DBUS_SYSTEM_BUS_ADDRESS when set), export, own the name."""
    try:
        bus = patient_writes(await CallerAwareBus(bus_type=BusType.SYSTEM).connect())
    except Exception as exc:
        raise SnitchError(
            f"cannot connect to the system bus: {exc} (is dbus running? apt-get install dbus)"
        ) from None
    service = FirewallService(firewall, bus, backend, Reader(firewall.store.path), switcher)
    bus.export(OBJECT_PATH, service)
    if switcher is not None:
        switcher.listeners.append(service.on_mode_changed)
        switcher.profile_listeners.append(service.on_profile_changed)
    firewall.events.listeners.append(service.on_decision)
    firewall.events.rate_listeners.append(service.on_rates)
    firewall.events.live_wanted = service.watching_rates
    firewall.news.listeners.append(lambda news: service.RulesChanged(news.to_bus()))
    firewall.broker.transport = DBusTransport(bus, firewall.config.default_action.value)

    def on_signal(msg: Message) -> None:
        if (
            msg.message_type is MessageType.SIGNAL
            and msg.member == "NameOwnerChanged"
            and msg.sender == "org.freedesktop.DBus"
            and msg.body[2] == ""
        ):
            service.name_lost(msg.body[0])

    bus.add_message_handler(on_signal)
    owner_changes = "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'"
    await call_bus_daemon(bus, "AddMatch", "s", [owner_changes])
    service.logind = Logind(bus)
    firewall.broker.use_sessions(service.session_active, service.session_known)
    await service.logind.watch()
    try:
        reply = await bus.request_name(BUS_NAME)
    except DBusError as exc:
        bus.disconnect()
        raise SnitchError(
            f"cannot own {BUS_NAME} on the system bus: {exc.text} (is the D-Bus policy "
            "/usr/share/dbus-1/system.d/org.snitch.Firewall1.conf installed?)"
        ) from None
    if reply.value != 1:
        bus.disconnect()
        raise SnitchError(
            f"cannot own {BUS_NAME} on the system bus (reply {reply.name}): is another snitchd "
            "running? try: snitchctl status"
        )
    log.info("D-Bus service ready name=%s", BUS_NAME)
    return bus
