"""The service's block lists (issue 9): what snitchd holds of each, and the updater's pokes."""

import asyncio
import json
from typing import Any

from dbus_fast.annotations import DBusStr
from dbus_fast.service import dbus_method

from snitch_common.blocklists import ListFormat
from snitch_common.errors import ListError
from snitchd.api.base import ServiceBase
from snitchd.caller import handled
from snitchd.lists import ListView

__all__ = ["ListsRoom"]


class ListsRoom(ServiceBase):
    """Block lists: registered, removed, updated, refreshed."""

    @dbus_method()
    @handled(query=True)
    async def Lists(self) -> DBusStr:
        """Every registered list (JSON): name, source, format, what snitchd holds of it
        (domains, networks, loaded, updated, bytes) and the updater's last try (ok, checked,
        error). Anyone may read it: the updater, an unprivileged DynamicUser, reads its
        sources here. The status notes are files: read in a worker thread."""
        views = await asyncio.to_thread(self.firewall.lists.views)
        return json.dumps([_list_view(v) for v in views], sort_keys=True)

    @dbus_method()
    @handled(admin="add lists")
    async def AddList(self, name: DBusStr, source: DBusStr, format: DBusStr) -> DBusStr:
        try:
            fmt = ListFormat(format)
        except ValueError:
            raise ListError(f"invalid list format {format!r}: use hosts, domains or ips") from None
        spec = await self.firewall.lists.add(name, source, fmt)
        return json.dumps(_list_view(ListView(spec, None, None)), sort_keys=True)

    @dbus_method()
    @handled(admin="remove lists")
    async def RemoveList(self, name: DBusStr) -> DBusStr:
        spec = await self.firewall.lists.remove(name)
        return json.dumps(_list_view(ListView(spec, None, None)), sort_keys=True)

    @dbus_method()
    @handled(admin="update lists")
    async def UpdateLists(self, name: DBusStr) -> None:
        """Run the updater now (through systemd); `name` "" for every list."""
        if name and name not in self.firewall.lists.specs:
            raise ListError(f"cannot update list {name!r}: no such list (see: snitchctl lists)")
        await self.firewall.lists.start_update(name)

    @dbus_method()
    @handled()
    async def ListsChanged(self) -> None:
        """The updater's poke: new copies may be in lists_dir. It carries nothing, so anyone
        may send it; snitchd reads only what changed there, one refresh at a time."""
        task = asyncio.create_task(self.firewall.lists.refresh(), name="lists-refresh")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _list_view(view: ListView) -> dict[str, Any]:
    spec, held, status = view.spec, view.held, view.status
    row: dict[str, Any] = {
        "name": spec.name,
        "source": spec.source,
        "format": spec.format.value,
        "added": spec.added,
    }
    if held is not None:
        row |= {
            "domains": held.domains,
            "networks": held.networks,
            "loaded": held.loaded,
            "updated": held.updated,
            "bytes": held.bytes,
        }
    if status is not None:
        row |= {"ok": status.ok, "checked": status.checked, "error": status.error}
    return row
