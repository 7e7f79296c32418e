"""`snitchctl top --live`: a full-screen view of per-app traffic, like nethogs, for SSH.

It reads what snitchd already serves: the `Rates` signal (each second, per-app rates) and the
`Apps` totals of the last 24 hours (refreshed every few seconds), and, when a person drills
into an app, its log rows grouped by host. A user who is not an admin sees their own apps
only (snitchd filters). Textual draws it (no hand-written curses); it fits 80x24.

Keys: s sort (rate, total, connections, blocked, name) · / filter · enter an app's hosts ·
escape back · q quit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from dbus_fast import Variant
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from snitch_common.client import Client
from snitch_common.errors import DaemonUnreachable

__all__ = ["SORTS", "AppLine", "HostsScreen", "LiveTop", "human", "run_live"]

SORTS = ("rate", "total", "connections", "blocked", "name")
TOTALS_EVERY = 3.0  # seconds between two Apps reads
MAX_ROWS = 500


@dataclass(frozen=True, slots=True)
class AppLine:
    """One row of the view: an app's live rates and its totals of the last 24 hours."""

    app: str
    rate_out: float = 0.0
    rate_in: float = 0.0
    bytes_out: int = 0
    bytes_in: int = 0
    flows: int = 0
    connections: int = 0
    blocked: int = 0

    def key(self, sort: str) -> tuple[Any, ...]:
        if sort == "name":
            return (self.app,)
        if sort == "total":
            return (-(self.bytes_out + self.bytes_in), self.app)
        if sort == "connections":
            return (-self.connections, self.app)
        if sort == "blocked":
            return (-self.blocked, self.app)
        return (-(self.rate_out + self.rate_in), -(self.bytes_out + self.bytes_in), self.app)


def human(n: float, per_second: bool = False) -> str:
    unit = "/s" if per_second else ""
    for size in ("B", "kB", "MB", "GB"):
        if n < 1000 or size == "GB":
            return f"{n:.0f} {size}{unit}" if size == "B" else f"{n:.1f} {size}{unit}"
        n /= 1000
    return ""


def _compact(n: float) -> str:
    """A size in at most 6 characters, so that every column fits 80 columns."""
    for size in ("", "k", "M", "G"):
        if n < 1000 or size == "G":
            return f"{n:.0f}" if not size else f"{n:.1f}{size}"
        n /= 1000
    return ""


def _short(app: str, width: int = 20) -> str:
    return app if len(app) <= width else "…" + app[-(width - 1) :]


class HostsScreen(Screen[None]):
    """The hosts one app talked to, from its newest log rows (up to 1,000)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.pop_screen", "back")]

    def __init__(self, app_name: str, rows: list[dict[str, Any]]) -> None:
        super().__init__()
        self.app_name = app_name
        self.rows = rows

    def compose(self) -> ComposeResult:
        yield Static(f"hosts of {_short(self.app_name, 70)}", id="title")
        table: DataTable[str] = DataTable(id="hosts", cursor_type="row")
        table.add_columns("HOST", "PORT", "CONNS", "BLOCKED", "SENT", "RECEIVED")
        hosts: dict[tuple[str, int], list[int]] = {}
        for row in self.rows:
            acc = hosts.setdefault((row.get("host") or row["dst"], row["dport"]), [0, 0, 0, 0])
            acc[0] += 1
            acc[1] += row["action"] != "allow"
            acc[2] += row.get("bytes_out") or 0
            acc[3] += row.get("bytes_in") or 0
        for (host, port), (conns, blocked, out, into) in sorted(
            hosts.items(), key=lambda kv: (-(kv[1][2] + kv[1][3]), -kv[1][0])
        ):
            table.add_row(
                _short(host, 30), str(port), str(conns), str(blocked), human(out), human(into)
            )
        yield table
        yield Footer()


class LiveTop(App[None]):
    """The view; `client` is made on mount when not given (a test passes none, too)."""

    CSS = "#title { height: 1; background: $boost; } #filter { display: none; height: 3; }"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("s", "sort", "sort"),
        Binding("slash", "filter", "filter"),
        Binding("enter", "hosts", "hosts", show=True),
        Binding("escape", "clear_filter", "clear", show=False),
    ]

    def __init__(self, client: Client | None = None) -> None:
        super().__init__()
        self.client = client
        self.lines: dict[str, AppLine] = {}
        self.sort = "rate"
        self.filter = ""
        self.updates = 0  # Rates signals taken, for tests and the title
        self.stopped = False  # snitchd left the bus: no rate is live until it is back

    def compose(self) -> ComposeResult:
        yield Static("snitch: traffic per app (last 24 h totals)", id="title")
        yield Input(placeholder="filter apps", id="filter")
        table: DataTable[str] = DataTable(id="apps", cursor_type="row")
        table.add_columns("APP", "UP/s", "DOWN/s", "SENT", "RECV", "FL", "CONN", "BLK")
        yield table
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one("#apps", DataTable).focus()
        if self.client is None:
            self.client = await Client.connect()
        await self.client.watch_daemon(self.on_owner)
        await self.client.monitor_rates(self.on_rates)
        await self.refresh_totals()
        self.set_interval(TOTALS_EVERY, self.refresh_totals)

    def on_unmount(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    async def refresh_totals(self) -> None:
        if self.client is None or self.stopped:
            return
        try:
            rows = await self.client.apps(
                {"period": Variant("s", "24h"), "limit": Variant("t", MAX_ROWS)}
            )
        except DaemonUnreachable:  # it left just now: `on_owner` says so, and says when back
            return
        for row in rows:
            old = self.lines.get(row["app"], AppLine(row["app"]))
            self.lines[row["app"]] = replace(
                old,
                bytes_out=row["bytes_out"],
                bytes_in=row["bytes_in"],
                connections=row["connections"],
                blocked=row["blocked"],
            )
        self.redraw()

    def on_owner(self, owner: str) -> None:
        """snitchd's name changed hands: the rates came from one that is gone (none is live
        now), and a new one must be asked for its own."""
        self.stopped = not owner
        self.on_rates({"apps": []})
        if owner and self.client is not None:
            self.run_worker(self.client.monitor_rates(self.on_rates), exit_on_error=False)

    def on_rates(self, rates: dict[str, Any]) -> None:
        seen = set()
        for r in rates["apps"]:
            seen.add(r["app"])
            old = self.lines.get(r["app"], AppLine(r["app"]))
            self.lines[r["app"]] = replace(
                old,
                rate_out=r["rate_out"],
                rate_in=r["rate_in"],
                flows=r["flows"],
                bytes_out=max(old.bytes_out, r["total_out"]),
                bytes_in=max(old.bytes_in, r["total_in"]),
            )
        for app, line in list(self.lines.items()):
            if app not in seen and (line.rate_out or line.rate_in or line.flows):
                self.lines[app] = replace(line, rate_out=0.0, rate_in=0.0, flows=0)
        self.updates += 1
        self.redraw()

    def shown(self) -> list[AppLine]:
        lines = [line for line in self.lines.values() if self.filter.lower() in line.app.lower()]
        return sorted(lines, key=lambda line: line.key(self.sort))[:MAX_ROWS]

    def redraw(self) -> None:
        table: DataTable[str] = self.query_one("#apps", DataTable)
        row = table.cursor_row
        table.clear()
        for line in self.shown():
            table.add_row(
                _short(line.app),
                _compact(line.rate_out),
                _compact(line.rate_in),
                _compact(line.bytes_out),
                _compact(line.bytes_in),
                str(line.flows),
                str(line.connections),
                str(line.blocked),
                key=line.app,
            )
        if table.row_count:
            table.move_cursor(row=min(row, table.row_count - 1))
        title = self.query_one("#title", Static)
        where = f" · filter: {self.filter}" if self.filter else ""
        gone = " · snitchd stopped, waiting for it" if self.stopped else ""
        title.update(f"snitch: traffic per app · sort: {self.sort}{where}{gone}")

    def action_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self.redraw()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.filter = event.value
        self.redraw()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.input.display = bool(event.value)
        self.query_one("#apps", DataTable).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = False
        self.query_one("#apps", DataTable).focus()

    async def action_hosts(self) -> None:
        shown = self.shown()
        table: DataTable[str] = self.query_one("#apps", DataTable)
        if not shown or self.client is None:
            return
        line = shown[min(table.cursor_row, len(shown) - 1)]
        rows = await self.client.log({"exe": Variant("s", line.app), "limit": Variant("t", 1000)})
        await self.push_screen(HostsScreen(line.app, rows))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "apps":
            self.run_worker(self.action_hosts())


def run_live() -> int:
    LiveTop().run()
    return 0
