"""Block lists on snitchd's side: which lists there are, and swapping each new copy in.

snitchd never speaks IP (its unit has IPAddressDeny=any): `snitch-lists`, an unprivileged
updater (systemd/snitch-lists.service, DynamicUser), downloads and parses each list and writes
the parsed copy and a status note to `lists_dir` (its StateDirectory, which no other user can
write), then pokes snitchd (`ListsChanged`). A file, not the bus, carries the list: a parsed list
of 1M names is ~20 MB, which dbus-fast would unmarshal on the packet loop, and the system bus
refuses messages past 32 MB; a file is read in a worker thread, and the poke itself carries
nothing, so anyone may send it (it is coalesced: a flood costs one re-read at a time).

A copy is read, checked line by line, and turned into its lookup structure (`snitchd.places`) in
a worker thread; the loop then swaps it in with one assignment. A copy that cannot be read keeps
the one held, and a status note saying the last download failed raises an alert
(`list-failed`) once per failure. The registry (name, source, format) is `lists.json` next to
the database, written by snitchd only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from snitch_common.blocklists import (
    ListFormat,
    ListSpec,
    ListStatus,
    check_list_name,
    check_list_source,
    iter_parsed,
    read_status,
    specs_from_json,
    specs_json,
)
from snitch_common.errors import ListError
from snitchd.events import Alert
from snitchd.places import DomainSet, ListInfo, LoadedList, NetworkSet, Places

__all__ = ["UPDATER_UNIT", "ListView", "Lists"]

log = logging.getLogger(__name__)

UPDATER_UNIT = "snitch-lists.service"
_MAX_LISTS = 256
_RESCAN = 300.0  # seconds between looks at lists_dir without a poke


@dataclass(frozen=True, slots=True)
class ListView:
    """A list as `lists show` tells it: what is registered, held, and last tried."""

    spec: ListSpec
    held: ListInfo | None
    status: ListStatus | None


class Lists:
    def __init__(
        self,
        registry: Path,
        directory: Path,
        places: Places,
        alert: Callable[[Alert], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.directory = directory
        self.places = places
        self.alert = alert
        self.clock = clock
        self.specs: dict[str, ListSpec] = {}
        self._seen: dict[str, tuple[int, int]] = {}  # name -> (mtime_ns, size) of the held copy
        self._failed: dict[str, float] = {}  # name -> `checked` of the failure last alerted
        self._lock = asyncio.Lock()
        self._again = False
        # Called on the loop after a new copy was swapped in (the firewall cuts the open flows
        # it now denies).
        self.on_loaded: Callable[[str], None] | None = None
        self.load_registry()

    def load_registry(self) -> None:
        try:
            text = self.registry.read_text()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ListError(f"cannot read the list registry {self.registry}: {exc}") from None
        self.specs = {s.name: s for s in specs_from_json(text)}

    def _save(self, specs: dict[str, ListSpec]) -> None:
        tmp = self.registry.with_name(self.registry.name + ".tmp")
        tmp.write_text(specs_json(specs.values()) + "\n")
        os.replace(tmp, self.registry)

    async def add(self, name: str, source: str, fmt: ListFormat) -> ListSpec:
        """Register a list, or give the one of that name a new source or format. Only an
        https:// URL or a local file is taken (`check_list_source`). A registry an earlier
        version wrote may still name an http:// source: that list stays registered (and
        shown), snitch-lists fails its updates saying why, and adding it again fixes it."""
        check_list_name(name)
        check_list_source(source)
        if any(c.isspace() for c in source):
            raise ListError(f"cannot add list {name}: source {source!r} has spaces")
        if name not in self.specs and len(self.specs) >= _MAX_LISTS:
            raise ListError(f"cannot add list {name}: {_MAX_LISTS} lists already")
        spec = ListSpec(name, source, fmt, self.clock())
        specs = {**self.specs, name: spec}
        await asyncio.to_thread(self._save, specs)
        self.specs = specs
        log.info("list added name=%s format=%s source=%s", name, fmt.value, source)
        return spec

    async def remove(self, name: str) -> ListSpec:
        spec = self.specs.get(name)
        if spec is None:
            raise ListError(f"cannot remove list {name!r}: no such list (see: snitchctl lists)")
        specs = {k: v for k, v in self.specs.items() if k != name}
        await asyncio.to_thread(self._save, specs)
        self.specs = specs
        self.places.drop_list(name)
        self._seen.pop(name, None)
        log.info("list removed name=%s", name)
        return spec

    def views(self) -> list[ListView]:
        out = []
        for name, spec in sorted(self.specs.items()):
            held = self.places.lists.get(name)
            try:
                status: ListStatus | None = read_status(self.directory / f"{name}.status")
            except ListError:
                status = None
            out.append(ListView(spec, held.info if held else None, status))
        return out

    async def refresh(self) -> None:
        """Read every list whose parsed copy changed, and alert on failed downloads. One
        refresh runs at a time; a poke during one makes one more run after it."""
        if self._lock.locked():
            self._again = True
            return
        async with self._lock:
            for _ in range(2):  # the pokes during a run make at most one more
                self._again = False
                for name in list(self.specs):
                    await self._refresh_one(name)
                if not self._again:
                    break

    async def follow(self) -> None:
        """Read the lists at start, then look for new copies now and then (a task of `main`;
        the updater's poke makes it look at once)."""
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("cannot refresh the lists")
            await asyncio.sleep(_RESCAN)

    async def _refresh_one(self, name: str) -> None:
        list_path = self.directory / f"{name}.list"
        status, stamp = await asyncio.to_thread(self._look, name)
        if status is not None and not status.ok and self._failed.get(name) != status.checked:
            self._failed[name] = status.checked
            self.alert(
                Alert(
                    "list-failed",
                    f"list {name}: {status.error}; the last good copy stays",
                    self.clock(),
                )
            )
        if stamp is None or self._seen.get(name) == stamp:
            return
        try:
            loaded = await asyncio.to_thread(
                _load, name, list_path, status.updated if status else 0.0, self.clock
            )
        except ListError as exc:
            self._seen[name] = stamp  # the same broken file is reported once
            message = f"{exc.message}; the last good copy stays"
            self.alert(Alert("list-failed", message, self.clock()))
            return
        if name not in self.specs:  # removed while it was read
            return
        self._seen[name] = stamp
        self.places.put_list(loaded)
        if self.on_loaded is not None:
            self.on_loaded(name)
        info = loaded.info
        log.info("list loaded name=%s domains=%d networks=%d", name, info.domains, info.networks)

    def _look(self, name: str) -> tuple[ListStatus | None, tuple[int, int] | None]:
        """Worker thread: the updater's note on `name`, and the (mtime, size) of its parsed
        copy (None: there is none)."""
        try:
            status: ListStatus | None = read_status(self.directory / f"{name}.status")
        except ListError:
            status = None
        list_path = self.directory / f"{name}.list"
        try:
            st = list_path.stat()
        except FileNotFoundError:
            return status, None
        except OSError as exc:
            log.warning("cannot read list %s: %s", list_path, exc)
            return status, None
        return status, (st.st_mtime_ns, st.st_size)

    async def start_update(self, name: str = "") -> None:
        """Ask systemd to run the updater now, for every list or for `name` (the timer runs it
        for every list on its schedule)."""
        unit = f"snitch-lists@{check_list_name(name)}.service" if name else UPDATER_UNIT
        systemctl = shutil.which("systemctl")
        if not os.path.isdir("/run/systemd/system") or systemctl is None:
            raise ListError(
                "cannot start the list updater: systemd is not running here (run snitch-lists "
                "as an unprivileged user with network access, e.g. setpriv --reuid nobody "
                "--regid nogroup --clear-groups snitch-lists)"
            )
        proc = await asyncio.create_subprocess_exec(
            systemctl,
            "start",
            "--no-block",
            unit,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        if proc.returncode != 0:
            raise ListError(
                f"cannot start {unit}: {err.decode(errors='replace').strip()} "
                "(is it installed? see: ./install.sh)"
            )


def _safe(path: Path) -> None:
    """A parsed copy is trusted because of where it is: refuse one anyone may write."""
    for held, st in ((path.parent, path.parent.stat()), (path, path.lstat())):
        if stat.S_ISLNK(st.st_mode):
            raise ListError(f"cannot read list {path}: a symbolic link")
        if st.st_mode & 0o002:
            raise ListError(f"cannot read list {path}: {held} is writable by anyone")


def _load(name: str, path: Path, updated: float, clock: Callable[[], float]) -> LoadedList:
    """Worker thread: read, check and index one parsed list (~1 s for 1M names)."""
    _safe(path)
    networks_text: list[str] = []

    def names() -> Iterator[str]:
        for is_domain, entry in iter_parsed(path):
            if is_domain:
                yield entry
            else:
                networks_text.append(entry)

    domains = DomainSet(names(), os.urandom(16))
    networks = NetworkSet(networks_text)
    info = ListInfo(len(domains), len(networks), clock(), updated, domains.bytes_used())
    return LoadedList(name, domains, networks, info)
