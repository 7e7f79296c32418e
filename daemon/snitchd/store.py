"""The SQLite store (through sqlite-utils): rules, the connection log, and schema migrations.

A side path of the packet path: the queue reader never waits for it. Rules are read once at start
and when another process changed them; rule writes are made from a worker thread, on a connection of
their own, so that one waiting for a lock held by another process holds up nothing else. The
connection log is written by the log writer, a child process (`logwriter`). Every SQLite failure
becomes a `StoreError` that names the file and says what to do; a schema newer than this code stops
start-up rather than being guessed at. Rules that live "until restart" are kept in memory only, but
draw their ids from the same sequence so an id never means two rules.

Whose change is it: the rule-change counter (schema 3) grows with every change by anyone. The
store remembers the count that the rules snitchd holds correspond to (`adopt_version`), and moves
it along with each of its own writes when that write started from it; any other change leaves a
gap that `changed_outside` reports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import sqlite_utils

from snitch_common.errors import RuleError, RuleNotFound, SnitchError, StoreError
from snitch_common.modes import Mode, ModeState
from snitch_common.records import Flow, IPAddress, Process
from snitch_common.rulefile import RuleLine, check_note
from snitch_common.rules import Action, Lifetime, Rule, RuleRecord, parse_rule
from snitchd.attempts import RowRef
from snitchd.profiles import Profile, parse_match
from snitchd.proposals import Proposal
from snitchd.queries import MINUTES_KEPT, LogQuery, read_connections, read_top

__all__ = [
    "SCHEMA_VERSION",
    "Decision",
    "EndRow",
    "FileSync",
    "Finding",
    "FlowBytes",
    "LogQuery",
    "RuleFromFile",
    "RuleLoad",
    "Store",
    "TrafficMinute",
    "Twin",
    "UnparsableRule",
    "check_store",
    "decision_row",
    "keep_unexpired",
    "log_row",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Decision:
    """One row of the connection log: what snitch did with a new flow, and why."""

    time: float
    flow: Flow
    proc: Process
    action: Action
    rule_id: int | None
    reason: str
    host: str | None = None
    mode: str | None = None  # the mode in force when it was decided (issue 17)
    profile: str | None = None  # the profile in force, None for none


@dataclass(frozen=True, slots=True)
class FlowBytes:
    """What conntrack counted for a flow when it ended, keyed by its original 5-tuple."""

    proto: str
    src: str
    sport: int
    dst: str
    dport: int
    bytes_out: int
    bytes_in: int
    ended: float


# A flow's end as the log writer keeps it until it joins it to its row (`Store.join_ends`):
# bytes out, bytes in, when it ended, then the flow as its row has it: dst, dport, sport, src,
# proto. A tuple, not a `FlowBytes`: one is made for every flow, and a tuple costs the least.
EndRow = tuple[int, int, float, str, int, int, str, str]


@dataclass(frozen=True, slots=True)
class TrafficMinute:
    """What to add to one app's rollup of one minute (`minute` = unix time // 60): IP-layer
    bytes, attempts and blocked attempts. `uid` is -1 for flows of no user."""

    minute: int
    app: str
    uid: int
    bytes_out: int
    bytes_in: int
    connections: int
    blocked: int


@dataclass(frozen=True, slots=True)
class RuleLoad:
    """Every rule, and the rule-change count they were read at (one read transaction)."""

    version: int
    records: list[RuleRecord]


class RuleFromFile(RuleError):
    """A rule that a rules.d file holds: it changes with its file, not through snitchctl."""

    def __init__(self, rule_id: int, doing: str, name: str) -> None:
        super().__init__(
            f"cannot {doing} rule {rule_id}: it comes from the rules file {name} (change that "
            "file, then reload snitchd: systemctl reload snitchd, or kill -HUP its pid)"
        )


@dataclass(frozen=True, slots=True)
class FileSync:
    """What loading one rules.d file changed in the store. `renoted`: ids of rules kept whose
    note changed, news to whoever shows notes although the rule set is the same."""

    name: str
    added: tuple[RuleRecord, ...]
    removed: tuple[RuleRecord, ...]
    kept: int
    renoted: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Twin:
    """A line of an import whose rule is there already, so it adds nothing: the rule's `id`
    (0: a line earlier in the same import), the `note` that rule keeps, and this line's own
    note when it differs and is not taken (`dropped_note`), which the plan must say."""

    rule: Rule
    id: int
    note: str
    dropped_note: str


class UnparsableRule(StoreError):
    """A stored rule's text does not parse (edited by hand, a bad disk, a newer snitch). The
    rule set is not loaded without it: what it denied would pass. `version` is the rule-change
    count it was read at (-1: unknown), so a running snitchd can wait for the next change."""

    def __init__(self, path: str, rule_id: int, text: object, reason: str, version: int) -> None:
        super().__init__(
            f"cannot load the rules of {path}: rule {rule_id} does not parse: {text!r}: "
            f"{reason} (fix its text, or delete it, with sqlite3 as root: sqlite3 {path} "
            f'"DELETE FROM rules WHERE id = {rule_id}"; see: snitchctl doctor)'
        )
        self.rule_id = rule_id
        self.version = version


def _migrate_1(db: sqlite_utils.Database) -> None:
    # AUTOINCREMENT (which sqlite-utils cannot ask for) so that a deleted rule's id is never
    # given to another rule: ids are what people type into delete-rule.
    db.execute(
        "CREATE TABLE rules (id INTEGER PRIMARY KEY AUTOINCREMENT, text TEXT NOT NULL, "
        "created FLOAT, last_hit FLOAT, hits INTEGER DEFAULT 0, origin TEXT)"
    )
    db.table("connections").create(
        {
            "id": int,
            "time": float,
            "pid": int,
            "exe": str,
            "uid": int,
            "attribution": str,
            "proto": str,
            "src": str,
            "sport": int,
            "dst": str,
            "dport": int,
            "iface": str,
            "host": str,
            "action": str,
            "rule_id": int,
            "reason": str,
        },
        pk="id",
    )
    db.table("connections").create_index(["time"])
    db.table("connections").create_index(["exe", "time"])


def _migrate_2(db: sqlite_utils.Database) -> None:
    """Byte accounting per flow (joined when conntrack reports its end), and the apps seen
    so far (for the first-connection alert)."""
    conns = db.table("connections")
    for column in ("bytes_out", "bytes_in"):
        conns.add_column(column, int)
    conns.add_column("ended", float)
    conns.create_index(["dst", "dport", "sport"])
    db.table("apps").create({"exe": str, "first_seen": float, "sha256": str}, pk="exe")


def _migrate_3(db: sqlite_utils.Database) -> None:
    """A counter of rule changes kept by triggers, whoever makes them: snitchd notices rules
    changed behind its back without mistaking the log writer's commits for them (PRAGMA
    data_version counts every commit of another connection)."""
    db.execute("CREATE TABLE changes (what TEXT PRIMARY KEY, count INTEGER NOT NULL)")
    db.execute("INSERT INTO changes VALUES ('rules', 0)")
    bump = "BEGIN UPDATE changes SET count = count + 1 WHERE what = 'rules'; END"
    db.execute(f"CREATE TRIGGER rules_inserted AFTER INSERT ON rules {bump}")
    db.execute(f"CREATE TRIGGER rules_deleted AFTER DELETE ON rules {bump}")
    db.execute(f"CREATE TRIGGER rules_edited AFTER UPDATE OF text ON rules {bump}")


def _migrate_4(db: sqlite_utils.Database) -> None:
    """Per-app traffic rollups, per minute (kept `MINUTES_KEPT`) and per hour (kept as long as
    the log): a 30-day chart reads at most 720 rows an app, not the log. Written by the log
    writer only (`logwriter.livebytes`); uid -1 stands for no user (a key cannot be NULL)."""
    for table, unit in (("traffic_minute", "minute"), ("traffic_hour", "hour")):
        db.execute(
            f"CREATE TABLE {table} ({unit} INTEGER NOT NULL, app TEXT NOT NULL, "
            "uid INTEGER NOT NULL, bytes_out INTEGER NOT NULL DEFAULT 0, "
            "bytes_in INTEGER NOT NULL DEFAULT 0, connections INTEGER NOT NULL DEFAULT 0, "
            f"blocked INTEGER NOT NULL DEFAULT 0, PRIMARY KEY ({unit}, app, uid)) WITHOUT ROWID"
        )
        db.execute(f"CREATE INDEX {table}_app ON {table} (app, {unit})")


def _migrate_5(db: sqlite_utils.Database) -> None:
    """How each flow's owner was found (`Source`: bpf, sock_diag, uid-only, kernel; issue 14).
    Rows logged before are left NULL: nobody knows any more."""
    db.table("connections").add_column("source", str)


def _migrate_6(db: sqlite_utils.Database) -> None:
    """A note per rule, rules switched off without being deleted (issue 18), and an index on
    the text so that adding a rule finds its twin without reading every rule. Switching a rule
    on or off is a rule change like any other: the counter of schema 3 counts it."""
    db.execute("ALTER TABLE rules ADD COLUMN note TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE rules ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0")
    db.execute("CREATE INDEX rules_text ON rules (text)")
    bump = "BEGIN UPDATE changes SET count = count + 1 WHERE what = 'rules'; END"
    db.execute(f"CREATE TRIGGER rules_toggled AFTER UPDATE OF disabled ON rules {bump}")


def _migrate_7(db: sqlite_utils.Database) -> None:
    """How many times the attempt of a row was retried within the retry window (issue 15): a
    retry that got the same verdict counts here instead of making a row (`snitchd.attempts`)."""
    db.table("connections").add_column("retries", int, not_null_default=0)


def _migrate_8(db: sqlite_utils.Database) -> None:
    """Modes and profiles (issue 17): the settings snitchd keeps across restarts (the mode in
    force with its time limit, the active profile), the proposals `learn` mode makes (apart
    from the rules: only accepting one makes a rule), the profiles, and in each log row the
    mode and profile in force when it was decided."""
    db.execute("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute(
        "CREATE TABLE proposals (id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE, "
        "uid INTEGER, count INTEGER NOT NULL, first_seen FLOAT, last_seen FLOAT)"
    )
    db.execute(
        "CREATE TABLE profiles (name TEXT PRIMARY KEY, mode TEXT, networks TEXT NOT NULL "
        "DEFAULT '[]', created FLOAT)"
    )
    conns = db.table("connections")
    conns.add_column("mode", str)
    conns.add_column("profile", str)


def _migrate_9(db: sqlite_utils.Database) -> None:
    """The container or guest a forwarded flow came from (issue 16), its name and runtime in
    columns of their own: until now only the reason's text said it, which no query or script
    can rely on. NULL for a flow of this machine, and for rows logged before."""
    conns = db.table("connections")
    conns.add_column("container", str)
    conns.add_column("runtime", str)


_ROLLUP_COUNTS = (
    "bytes_out INTEGER NOT NULL DEFAULT 0, bytes_in INTEGER NOT NULL DEFAULT 0, "
    "connections INTEGER NOT NULL DEFAULT 0, blocked INTEGER NOT NULL DEFAULT 0"
)
_ROLLUP_SUMS = "sum(bytes_out), sum(bytes_in), sum(connections), sum(blocked)"


def _migrate_10(db: sqlite_utils.Database) -> None:
    """Rollups that keep a 30-day chart one small query (issue 19): per app and day (UTC), so
    an app's total over 7 or 30 days sums at most 30 rows, not 720 hours; and per user without
    the app, per minute and per hour, so the machine's total series reads one row per user and
    unit, not one per app (bench/monitorquery.py, 200 apps: `Apps 30d` 368 ms, `Traffic 30d`
    for all apps 400 ms and 24 h 795 ms before). Filled from the hours and minutes kept."""
    db.execute(
        f"CREATE TABLE traffic_day (day INTEGER NOT NULL, app TEXT NOT NULL, "
        f"uid INTEGER NOT NULL, {_ROLLUP_COUNTS}, PRIMARY KEY (day, app, uid)) WITHOUT ROWID"
    )
    db.execute("CREATE INDEX traffic_day_app ON traffic_day (app, day)")
    db.execute(
        f"INSERT INTO traffic_day SELECT hour / 24, app, uid, {_ROLLUP_SUMS} "
        "FROM traffic_hour GROUP BY hour / 24, app, uid"
    )
    for unit in ("minute", "hour"):
        db.execute(
            f"CREATE TABLE traffic_user_{unit} ({unit} INTEGER NOT NULL, uid INTEGER NOT NULL, "
            f"{_ROLLUP_COUNTS}, PRIMARY KEY ({unit}, uid)) WITHOUT ROWID"
        )
        db.execute(
            f"INSERT INTO traffic_user_{unit} SELECT {unit}, uid, {_ROLLUP_SUMS} "
            f"FROM traffic_{unit} GROUP BY {unit}, uid"
        )


# Each entry takes the schema from version i to i+1; append only, never edit a shipped one.
_MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (
    _migrate_1,
    _migrate_2,
    _migrate_3,
    _migrate_4,
    _migrate_5,
    _migrate_6,
    _migrate_7,
    _migrate_8,
    _migrate_9,
    _migrate_10,
)
SCHEMA_VERSION = len(_MIGRATIONS)


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        # The main connection's; re-entrant: a log writer's batch (`batch`) holds it around
        # the writes it makes.
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()  # the rule writer's connection, opened on first use
        self._writer: sqlite3.Connection | None = None
        self._memory_lock = threading.Lock()  # `_memory`: held for dict steps only
        self._memory: dict[int, RuleRecord] = {}
        self._version_lock = threading.Lock()
        self._expected: int | None = None  # the change count the held rules correspond to
        self._parsed: dict[int, tuple[str, Rule]] = {}  # id -> (its text, parsed)
        with self._errors("open"):
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False)
            self.db = sqlite_utils.Database(conn)
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self._migrate()
            except BaseException:
                conn.close()
                raise
        if self.path != ":memory:":
            os.chmod(self.path, 0o600)

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            if "database is locked" in str(exc):
                raise StoreError(self._locked_message(doing)) from exc
            hint = {
                "file is not a database": "the file is corrupt: move it away and restart snitchd",
                "readonly database": "check the permissions of the file and its folder",
            }
            advice = next((v for k, v in hint.items() if k in str(exc)), "see the daemon log")
            raise StoreError(f"cannot {doing} rule store {self.path}: {exc} ({advice})") from exc
        except OSError as exc:
            raise StoreError(f"cannot {doing} rule store {self.path}: {exc.strerror}") from exc

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A write transaction on the main connection that takes SQLite's write lock at its
        start (BEGIN IMMEDIATE), waiting for it up to the busy timeout; inside one, a
        savepoint. sqlite-utils' `atomic` begins a deferred one: a first read (sqlite-utils
        reads a table's columns before an upsert) pins a snapshot, and if another process
        commits before the first write, that write fails at once with "database is locked",
        the busy timeout never applied (SQLITE_BUSY_SNAPSHOT)."""
        conn = self.db.conn
        if conn.in_transaction:
            with self.db.atomic():
                yield
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _locked_message(self, doing: str) -> str:
        """Who holds the lock, if the kernel says (a write lock on the file, or on its -shm
        file in WAL mode), and what to do."""
        holders = ", ".join(f"pid {pid} {_comm(pid)}".rstrip() for pid in _lock_holders(self.path))
        who = f"held by {holders}; " if holders else ""
        if doing == "open":
            advice = f"{who}is another snitchd running? try: snitchctl status"
        else:
            advice = f"{who}try again; `fuser {self.path}` shows who has it open"
        reason = "database is locked by another process"
        return f"cannot {doing} rule store {self.path}: {reason} ({advice})"

    def _migrate(self) -> None:
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"cannot open rule store {self.path}: schema version {version} is newer than this "
                f"snitch ({SCHEMA_VERSION}); upgrade snitch or restore a backup"
            )
        for step in range(version, SCHEMA_VERSION):
            with self._writing():
                _MIGRATIONS[step](self.db)
                self.db.execute(f"PRAGMA user_version = {step + 1}")
            log.info("rule store migrated path=%s version=%d", self.path, step + 1)

    def close(self) -> None:
        with self._lock:
            self.db.close()
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def _record(
        self, row: tuple[Any, ...], parsed: dict[int, tuple[str, Rule]] | None = None
    ) -> RuleRecord:
        """A row of `_RULE_COLUMNS`, parsed unless its text is the one parsed before; what
        was used goes into `parsed` (the cache `rules()` rebuilds)."""
        rule_id, text, created, last_hit, hits, origin, note, disabled = row
        known = self._parsed.get(rule_id)
        if known is None or known[0] != text:
            known = (text, parse_rule(text))
        if parsed is not None:
            parsed[rule_id] = known
        return RuleRecord(
            rule_id, known[1], created, last_hit, hits or 0, origin or "", note or "", not disabled
        )

    def rules(self) -> list[RuleRecord]:
        """Stored rules then in-memory ones. A stored row that no longer parses raises
        `UnparsableRule`: skipping it would drop what it denied (issue 13: fail closed)."""
        with self._lock, self._errors("read"):
            out = self._stored_rules()
        return out + self._memory_rules()

    def load_rules(self) -> RuleLoad:
        """Every rule and the change count they were read at, in one read transaction (for a
        worker thread: at 100k rules this reads and parses for about a second)."""
        with self._lock, self._errors("read"):
            conn = self.db.conn
            conn.execute("BEGIN")
            try:
                version = _count(conn)
                stored = self._stored_rules(version)
            finally:
                conn.execute("COMMIT")
        return RuleLoad(version, stored + self._memory_rules())

    def _stored_rules(self, version: int = -1) -> list[RuleRecord]:
        out: list[RuleRecord] = []
        # Parsed rules are kept with their text: a reload at 100k rules re-parses only what
        # changed (4.8 s -> 0.9 s), and entries of deleted rules go with this rebuild. Rows are
        # streamed as tuples, not read whole as sqlite-utils' dicts: those peaked at 67 MB
        # (tracemalloc) at 100k rules, a high-water mark the daemon's RSS then kept.
        parsed: dict[int, tuple[str, Rule]] = {}
        for row in self.db.execute(f"SELECT {_RULE_COLUMNS} FROM rules ORDER BY id"):
            try:
                out.append(self._record(row, parsed))
            except Exception as exc:  # any failure to parse: RuleError, or a NULL text
                raise UnparsableRule(self.path, row[0], row[1], str(exc), version) from None
        self._parsed = parsed
        return out

    def _memory_rules(self) -> list[RuleRecord]:
        with self._memory_lock:
            memory = list(self._memory.values())
        return sorted(memory, key=lambda r: r.id)

    # -- rule writes: from a worker thread, never the packet loop ------------------------------

    @contextmanager
    def _rule_write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the rule writer's own connection. Waiting for another
        process's lock (up to the busy timeout) holds only this lock, not the main connection
        that `rules()` and the log queries use. The change count is read before and after: a
        write that starts from the count snitchd's rules correspond to moves it along, so that
        snitchd's own changes are never taken for someone else's."""
        with self._write_lock, self._errors("write"):
            if self._writer is None:
                self._writer = sqlite3.connect(
                    self.path, timeout=5.0, isolation_level=None, check_same_thread=False
                )
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                before = _count(conn)
                yield conn
                after = _count(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            with self._version_lock:
                if self._expected == before:
                    self._expected = after

    def add_rule(
        self, rule: Rule, now: float, origin: str = "", note: str = "", *, dedup: bool = False
    ) -> RuleRecord:
        """Store a rule (or keep it in memory, for=restart and process-less lifetimes). With
        `dedup`, a rule whose text equals one already there is not added twice: that one is
        returned (`added_rule` says which happened)."""
        return self.added_rule(rule, now, origin, note, dedup=dedup)[0]

    def added_rule(
        self, rule: Rule, now: float, origin: str = "", note: str = "", *, dedup: bool = False
    ) -> tuple[RuleRecord, bool]:
        """`add_rule`, and whether the rule is new (False: its twin was returned)."""
        if rule.lifetime is Lifetime.ONCE:
            raise RuleError("a for=once rule is never stored: it answers one prompt")
        check_note(note)
        rule = rule.stamped(now)
        # Rules made in code (answers, the monitor, learn mode) skip the parser: one it would
        # refuse must never be stored, or the next start (which parses every row) would fail.
        parse_rule(str(rule))
        if dedup and not rule.is_stored:
            with self._memory_lock:
                twin = next((m for m in self._memory.values() if m.rule == rule), None)
            if twin is not None:
                return twin, False
        with self._rule_write() as conn:
            if rule.is_stored:
                if dedup:
                    row = conn.execute(
                        f"SELECT {_RULE_COLUMNS} FROM rules WHERE text = ? ORDER BY id LIMIT 1",
                        [str(rule)],
                    ).fetchone()
                    if row is not None:
                        return self._record(row), False
                cur = conn.execute(
                    "INSERT INTO rules (text, created, hits, origin, note) VALUES (?, ?, 0, ?, ?)",
                    [str(rule), now, origin, note],
                )
                return RuleRecord(int(cur.lastrowid or 0), rule, now, None, 0, origin, note), True
            # The next id of the rules table, taken without a row (for rules kept in memory).
            rule_id = int(conn.execute("INSERT INTO rules (text) VALUES ('')").lastrowid or 0)
            conn.execute("DELETE FROM rules WHERE id = ?", [rule_id])
        record = RuleRecord(rule_id, rule, now, None, 0, origin, note)
        with self._memory_lock:
            self._memory[rule_id] = record
        return record, True

    def delete_rule(self, rule_id: int, *, files_too: bool = False) -> RuleRecord:
        """Delete a rule. One that a rules.d file holds is refused (`RuleFromFile`) unless
        `files_too` (the file's own reload, and expiry)."""
        with self._memory_lock:
            memory = self._memory.pop(rule_id, None)
        if memory is not None:
            return memory
        with self._rule_write() as conn:
            old = self._editable(conn, rule_id, "delete", files_too=files_too)
            conn.execute("DELETE FROM rules WHERE id = ?", [rule_id])
        return old

    def _editable(
        self, conn: sqlite3.Connection, rule_id: int, doing: str, *, files_too: bool = False
    ) -> RuleRecord:
        row = conn.execute(f"SELECT {_RULE_COLUMNS} FROM rules WHERE id = ?", [rule_id]).fetchone()
        if row is None:
            raise RuleNotFound(f"no rule with id {rule_id} (see: snitchctl list-rules)")
        record = self._record(row)
        if record.from_file is not None and not files_too:
            raise RuleFromFile(rule_id, doing, record.from_file)
        return record

    def edit_rule(self, rule_id: int, rule: Rule, now: float, note: str | None) -> RuleRecord:
        """Give a rule new text (and a note, unless None), keeping its id, counters and
        whether it is on. A rule of a rules.d file is refused (`RuleFromFile`)."""
        if note is not None:
            check_note(note)
        rule = rule.stamped(now)
        with self._memory_lock:
            memory = self._memory.get(rule_id)
            if memory is not None and not rule.is_stored:
                new = replace(memory, rule=rule, note=memory.note if note is None else note)
                self._memory[rule_id] = new
                return new
        if memory is not None or not rule.is_stored:
            raise RuleError(
                f"cannot edit rule {rule_id}: the new text moves it between the rules kept "
                "until restart and the stored ones (for=); delete it and add the new one"
            )
        with self._rule_write() as conn:
            old = self._editable(conn, rule_id, "edit")
            conn.execute(
                "UPDATE rules SET text = ?, note = ? WHERE id = ?",
                [str(rule), old.note if note is None else note, rule_id],
            )
        return replace(old, rule=rule, note=old.note if note is None else note)

    def set_enabled(self, rule_id: int, enabled: bool) -> RuleRecord:
        """Switch a rule on or off (off: kept, listed, never matched)."""
        with self._memory_lock:
            memory = self._memory.get(rule_id)
            if memory is not None:
                self._memory[rule_id] = memory = replace(memory, enabled=enabled)
                return memory
        with self._rule_write() as conn:
            old = self._editable(conn, rule_id, "enable" if enabled else "disable")
            conn.execute("UPDATE rules SET disabled = ? WHERE id = ?", [int(not enabled), rule_id])
        return replace(old, enabled=enabled)

    def sync_file(self, name: str, lines: list[RuleLine], now: float) -> FileSync:
        """Make the stored rules of rules.d file `name` be those of `lines`, with their notes,
        in one transaction: a rule whose text is unchanged keeps its id (and counters) and
        takes the line's note; the others go or come."""
        origin = f"file:{name}"
        wanted: dict[str, list[RuleLine]] = {}
        for line in lines:
            if line.rule.lifetime is Lifetime.ONCE or not line.rule.is_stored:
                raise RuleError(f"{name}: a rules file holds lasting rules: drop for=")
            check_note(line.note)
            wanted.setdefault(str(line.rule), []).append(line)
        removed: list[RuleRecord] = []
        added: list[RuleRecord] = []
        renoted: list[int] = []
        kept = 0
        with self._rule_write() as conn:
            rows = conn.execute(
                f"SELECT {_RULE_COLUMNS} FROM rules WHERE origin = ? ORDER BY id", [origin]
            ).fetchall()
            for row in rows:
                same = wanted.get(row[1])
                if same:
                    note = same.pop(0).note
                    if note != (row[6] or ""):
                        conn.execute("UPDATE rules SET note = ? WHERE id = ?", [note, row[0]])
                        renoted.append(row[0])
                    kept += 1
                    continue
                conn.execute("DELETE FROM rules WHERE id = ?", [row[0]])
                try:
                    removed.append(self._record(row))
                except RuleError:
                    removed.append(RuleRecord(row[0], Rule(Action.DENY), 0.0, origin=origin))
            for text, left in wanted.items():
                for line in left:
                    cur = conn.execute(
                        "INSERT INTO rules (text, created, hits, origin, note) "
                        "VALUES (?, ?, 0, ?, ?)",
                        [text, now, origin, line.note],
                    )
                    record = RuleRecord(
                        int(cur.lastrowid or 0), line.rule, now, origin=origin, note=line.note
                    )
                    added.append(record)
        return FileSync(name, tuple(added), tuple(removed), kept, tuple(renoted))

    def file_names(self) -> set[str]:
        """The rules.d files that have rules in the store."""
        with self._lock, self._errors("read"):
            rows = self.db.execute(
                "SELECT DISTINCT origin FROM rules WHERE origin LIKE 'file:%'"
            ).fetchall()
        return {str(r[0])[5:] for r in rows}

    def import_rules(
        self, lines: list[RuleLine], now: float, origin: str, *, dry_run: bool
    ) -> tuple[list[RuleRecord], list[Twin]]:
        """Add every rule whose twin is not stored yet, with its note, all in one transaction
        (nothing with `dry_run`). Returns the rules added and the lines left out because their
        rule is there already (`Twin`: that rule keeps its note; the line's other note is named,
        not taken)."""
        for line in lines:
            if not line.rule.is_stored:
                raise RuleError(f"cannot import {line.rule}: only lasting rules are imported")
            check_note(line.note)
        added: list[RuleRecord] = []
        twins: list[Twin] = []
        seen: dict[str, tuple[int, str]] = {}  # text: (stored id or 0, the note it keeps)
        with self._rule_write() as conn:
            for line in lines:
                rule = line.rule.stamped(now)
                text = str(rule)
                kept = seen.get(text)
                if kept is None:
                    found = conn.execute(
                        "SELECT id, note FROM rules WHERE text = ? ORDER BY id LIMIT 1", [text]
                    ).fetchone()
                    if found is not None:
                        kept = seen[text] = (int(found[0]), found[1] or "")
                if kept is not None:
                    dropped = line.note if line.note != kept[1] else ""
                    twins.append(Twin(rule, kept[0], kept[1], dropped))
                    continue
                seen[text] = (0, line.note)
                if dry_run:
                    added.append(RuleRecord(0, rule, now, origin=origin, note=line.note))
                    continue
                cur = conn.execute(
                    "INSERT INTO rules (text, created, hits, origin, note) VALUES (?, ?, 0, ?, ?)",
                    [text, now, origin, line.note],
                )
                added.append(
                    RuleRecord(int(cur.lastrowid or 0), rule, now, origin=origin, note=line.note)
                )
        return added, twins

    def set_note(self, rule_id: int, note: str) -> RuleRecord:
        """A rule's note (free text people read; not part of the rule)."""
        check_note(note)
        with self._memory_lock:
            memory = self._memory.get(rule_id)
            if memory is not None:
                self._memory[rule_id] = memory = replace(memory, note=note)
                return memory
        with self._rule_write() as conn:
            old = self._editable(conn, rule_id, "edit")
            conn.execute("UPDATE rules SET note = ? WHERE id = ?", [note, rule_id])
        return replace(old, note=note)

    def adopt_version(self, version: int) -> None:
        """The rules snitchd holds now are those of change count `version`."""
        with self._version_lock:
            self._expected = version

    def changed_outside(self) -> bool:
        """Whether the stored rules changed since `adopt_version` other than by this store's
        own writes (sqlite3 by hand, another program)."""
        current = self.rules_version()
        with self._version_lock:
            return current != self._expected

    def record_memory_hits(self, hits: dict[int, tuple[int, float]]) -> None:
        """Hit counts of the rules kept in memory (the log writer counts the stored ones)."""
        with self._memory_lock:
            for rule_id, (count, last) in hits.items():
                m = self._memory.get(rule_id)
                if m is not None:
                    self._memory[rule_id] = replace(m, last_hit=last, hits=m.hits + count)

    def record_hits(self, hits: dict[int, tuple[int, float]]) -> None:
        self.record_memory_hits(hits)
        with self._lock, self._errors("write"), self._writing():
            for rule_id, (count, last) in hits.items():
                if rule_id in self._memory:
                    continue
                self.db.execute(
                    "UPDATE rules SET hits = coalesce(hits, 0) + ?, last_hit = ? WHERE id = ?",
                    [count, last, rule_id],
                )

    def record_retries(self, retries: dict[RowRef, int]) -> int:
        """Add each count to its attempt's row (`attempts.RowRef`: the newest row of that flow
        and time); returns the rows updated. A row pruned meanwhile is not found: no harm."""
        updated = 0
        with self._lock, self._errors("write to"), self._writing():
            for ref, count in retries.items():
                cur = self.db.execute(
                    "UPDATE connections SET retries = retries + ? WHERE id = "
                    "(SELECT id FROM connections WHERE dst = ? AND dport = ? AND sport = ? "
                    "AND src = ? AND proto = ? AND time = ? ORDER BY id DESC LIMIT 1)",
                    [count, ref.dst, ref.dport, ref.sport, ref.src, ref.proto, ref.time],
                )
                updated += cur.rowcount
        return updated

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction around several writes (each of them a savepoint inside it): the log
        writer's batch is written whole or not at all, so a batch sent again after a failure
        part-way never writes its rows twice."""
        with self._lock, self._errors("write to"), self._writing():
            yield

    def log_decisions(self, decisions: Iterable[Decision]) -> None:
        self.log_rows([log_row(d) for d in decisions])

    def log_rows(self, rows: list[tuple[object, ...]]) -> None:
        """Rows made by `log_row`. executemany on tuples: 6 µs a row against 14 µs for
        sqlite-utils' insert_all of dicts (bench/bench_micro.py)."""
        with self._lock, self._errors("write to"), self._writing():
            self.db.conn.executemany(_LOG_INSERT, rows)

    def connections(self, query: LogQuery) -> list[dict[str, Any]]:
        """The log on this connection, for tools and tests; D-Bus callers go through
        `queries.Reader`, off the packet loop."""
        with self._lock, self._errors("read"):
            return read_connections(self.db.conn, query)

    def record_flow_ends(self, ends: Iterable[FlowBytes]) -> int:
        """Join counters to the newest log row of the same flow, if that flow was let out;
        returns the rows updated. A blocked flow's entry (kept to hold its verdict, see
        `snitchd.connmark`) counts the packets the kernel dropped: they were never sent."""
        return self.join_ends(
            [
                (e.bytes_out, e.bytes_in, e.ended, e.dst, e.dport, e.sport, e.src, e.proto)
                for e in ends
            ]
        )

    def join_ends(self, ends: list[EndRow]) -> int:
        """`record_flow_ends` of ends as the log writer keeps them (`EndRow`): one prepared
        UPDATE run for all of them in SQLite's C loop, ~2 µs an end, where a Python-level
        execute each was ~4 µs (bench/bench_micro.py)."""
        if not ends:
            return 0
        with self._lock, self._errors("write to"), self._writing():
            return int(self.db.conn.executemany(_END_UPDATE, ends).rowcount)

    def top(self, since: float | None, uid: int | None = None) -> list[dict[str, Any]]:
        """Per app: connections, blocked ones, and bytes (see `queries.read_top`)."""
        with self._lock, self._errors("read"):
            return read_top(self.db.conn, since, uid, -1)

    def memory_record(self, rule_id: int) -> RuleRecord | None:
        """A rule kept in memory only (until restart), with its hits; None for a stored one."""
        return self._memory.get(rule_id)

    def known_apps(self) -> dict[str, str | None]:
        with self._lock, self._errors("read"):
            return {row["exe"]: row["sha256"] for row in self.db.table("apps").rows}

    def note_apps(self, apps: dict[str, tuple[float, str | None]]) -> None:
        with self._lock, self._errors("write to"):
            self.db.table("apps").upsert_all(
                [{"exe": exe, "first_seen": t, "sha256": h} for exe, (t, h) in apps.items()],
                pk="exe",
            )

    def add_traffic(self, rollup: Iterable[TrafficMinute]) -> None:
        """Add to the rollups (per app: minute, hour, day; per user: minute, hour), in one
        transaction."""
        rows = [
            (m.minute, m.app, m.uid, m.bytes_out, m.bytes_in, m.connections, m.blocked)
            for m in rollup
        ]
        if not rows:
            return
        hours = [(r[0] // 60, *r[1:]) for r in rows]
        days = [(r[0] // 1440, *r[1:]) for r in rows]
        users = [(r[0], *r[2:]) for r in rows]
        user_hours = [(r[0] // 60, *r[2:]) for r in rows]
        with self._lock, self._errors("write to"), self._writing():
            self.db.conn.executemany(_TRAFFIC_ADD.format("traffic_minute", "minute"), rows)
            self.db.conn.executemany(_TRAFFIC_ADD.format("traffic_hour", "hour"), hours)
            self.db.conn.executemany(_TRAFFIC_ADD.format("traffic_day", "day"), days)
            self.db.conn.executemany(_USER_TRAFFIC_ADD.format("minute"), users)
            self.db.conn.executemany(_USER_TRAFFIC_ADD.format("hour"), user_hours)

    def prune(self, now: float, max_age: float, max_rows: int) -> int:
        """Keep the log within its age and size limits (and the rollups: minutes for
        MINUTES_KEPT, hours as long as the log); returns the log rows removed."""
        with self._lock, self._errors("prune"), self._writing():
            self.db.execute(
                "DELETE FROM traffic_minute WHERE minute < ?", [int((now - MINUTES_KEPT) // 60)]
            )
            self.db.execute(
                "DELETE FROM traffic_user_minute WHERE minute < ?",
                [int((now - MINUTES_KEPT) // 60)],
            )
            for table, unit, size in (
                ("traffic_hour", "hour", 3600),
                ("traffic_user_hour", "hour", 3600),
                ("traffic_day", "day", 86400),
            ):
                self.db.execute(
                    f"DELETE FROM {table} WHERE {unit} < ?", [int((now - max_age) // size)]
                )
            gone = self.db.execute("DELETE FROM connections WHERE time < ?", [now - max_age])
            removed = gone.rowcount
            (count,) = self.db.execute("SELECT count(*) FROM connections").fetchone()
            if count > max_rows:
                extra = self.db.execute(
                    "DELETE FROM connections WHERE id IN "
                    "(SELECT id FROM connections ORDER BY id LIMIT ?)",
                    [count - max_rows],
                )
                removed += extra.rowcount
        return int(removed)

    def rules_version(self) -> int:
        """Grows with every change to the stored rules, by any process."""
        with self._lock, self._errors("read"):
            return _count(self.db.conn)

    # -- modes, proposals, profiles (issue 17): written from worker threads -------------------

    def setting(self, key: str) -> str | None:
        with self._lock, self._errors("read"):
            row = self.db.execute("SELECT value FROM settings WHERE key = ?", [key]).fetchone()
        return None if row is None else str(row[0])

    def set_settings(self, values: tuple[tuple[str, str | None], ...]) -> None:
        """Set (or, for None, remove) settings, in one transaction."""
        with self._rule_write() as conn:
            for key, value in values:
                if value is None:
                    conn.execute("DELETE FROM settings WHERE key = ?", [key])
                else:
                    conn.execute(
                        "INSERT INTO settings (key, value) VALUES (?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        [key, value],
                    )

    def load_mode(self) -> ModeState | None:
        """The mode stored by the last `save_mode`; None if none was, or it does not read
        (a newer snitch, a hand edit: the caller starts in its default mode and says so)."""
        text = self.setting("mode")
        if text is None:
            return None
        try:
            d = json.loads(text)
            until = d.get("until")
            previous = d.get("previous")
            return ModeState(
                Mode(d["mode"]),
                float(d.get("since", 0.0)),
                str(d.get("by", "")),
                None if until is None else float(until),
                None if previous is None else Mode(previous),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(
                f"cannot read the stored mode of {self.path}: {text!r}: {exc} (set it again: "
                "snitchctl mode ask)"
            ) from None

    def save_mode(self, state: ModeState, profile: str | None = None) -> None:
        """The mode in force (and the active profile, when given), so a restart keeps them."""
        d = {
            "mode": state.mode.value,
            "since": state.since,
            "by": state.by,
            "until": state.until,
            "previous": state.previous.value if state.previous is not None else None,
        }
        values: tuple[tuple[str, str | None], ...] = (("mode", json.dumps(d)),)
        if profile is not None:
            values += (("profile", profile or None),)
        self.set_settings(values)

    def load_proposals(self) -> tuple[list[Proposal], int]:
        """The stored proposals, and the next id to give (never one given before). A row that
        no longer parses is left out and said: a proposal is only a suggestion."""
        out: list[Proposal] = []
        with self._lock, self._errors("read"):
            rows = self.db.execute(
                "SELECT id, text, uid, count, first_seen, last_seen FROM proposals ORDER BY id"
            ).fetchall()
            row = self.db.execute("SELECT value FROM settings WHERE key = 'proposal_next'")
            found = row.fetchone()
        next_id = int(found[0]) if found is not None and str(found[0]).isdigit() else 1
        for pid, text, uid, count, first, last in rows:
            try:
                out.append(Proposal(pid, parse_rule(text), uid, count, first or 0.0, last or 0.0))
            except Exception as exc:
                log.warning("stored proposal left out id=%s: %r: %s", pid, text, exc)
            next_id = max(next_id, int(pid) + 1)
        return out, next_id

    def write_proposals(self, changed: list[Proposal], removed: list[int], next_id: int) -> None:
        """Proposals made or counted since the last write, those accepted or rejected, and
        the next id, in one transaction."""
        with self._rule_write() as conn:
            conn.executemany(
                "INSERT INTO proposals (id, text, uid, count, first_seen, last_seen) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "count = excluded.count, last_seen = excluded.last_seen",
                [(p.id, str(p.rule), p.uid, p.count, p.first_seen, p.last_seen) for p in changed],
            )
            conn.executemany("DELETE FROM proposals WHERE id = ?", [(i,) for i in removed])
            conn.execute(
                "INSERT INTO settings (key, value) VALUES ('proposal_next', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [str(next_id)],
            )

    def load_profiles(self) -> list[Profile]:
        """The profiles by name. One that no longer reads is left out and said (its rules
        then hold nowhere until it is made again)."""
        with self._lock, self._errors("read"):
            rows = self.db.execute(
                "SELECT name, mode, networks, created FROM profiles ORDER BY name"
            ).fetchall()
        out = []
        for name, mode, networks, created in rows:
            try:
                matches = tuple(parse_match(str(m)) for m in json.loads(networks))
                out.append(Profile(name, Mode(mode) if mode else None, matches, created or 0.0))
            except (ValueError, TypeError, SnitchError) as exc:
                log.warning("stored profile left out name=%s: %s", name, exc)
        return out

    def save_profile(self, profile: Profile) -> None:
        with self._rule_write() as conn:
            conn.execute(
                "INSERT INTO profiles (name, mode, networks, created) VALUES (?, ?, ?, ?)",
                [
                    profile.name,
                    profile.mode.value if profile.mode is not None else None,
                    json.dumps([str(m) for m in profile.networks]),
                    profile.created,
                ],
            )

    def delete_profile(self, name: str) -> None:
        with self._rule_write() as conn:
            conn.execute("DELETE FROM profiles WHERE name = ?", [name])


_RULE_COLUMNS = "id, text, created, last_hit, hits, origin, note, disabled"
_LOG_COLUMNS = (
    "time",
    "pid",
    "exe",
    "uid",
    "attribution",
    "proto",
    "src",
    "sport",
    "dst",
    "dport",
    "iface",
    "host",
    "action",
    "rule_id",
    "reason",
    "source",
    "mode",
    "profile",
    "container",
    "runtime",
)
_LOG_INSERT = (
    f"INSERT INTO connections ({', '.join(_LOG_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_LOG_COLUMNS))})"
)

# A flow's end joined to its row (`Store.join_ends`), parameters in `EndRow`'s order.
_END_UPDATE = (
    "UPDATE connections SET bytes_out = ?, bytes_in = ?, ended = ? WHERE id = "
    "(SELECT id FROM connections WHERE dst = ? AND dport = ? AND sport = ? "
    "AND src = ? AND proto = ? ORDER BY id DESC LIMIT 1) AND action = 'allow'"
)

_TRAFFIC_ADD = (
    "INSERT INTO {0} ({1}, app, uid, bytes_out, bytes_in, connections, blocked) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT ({1}, app, uid) DO UPDATE SET "
    "bytes_out = bytes_out + excluded.bytes_out, bytes_in = bytes_in + excluded.bytes_in, "
    "connections = connections + excluded.connections, blocked = blocked + excluded.blocked"
)

# The machine's total per user (no app): the same sums, keyed by (unit, uid).
_USER_TRAFFIC_ADD = (
    "INSERT INTO traffic_user_{0} ({0}, uid, bytes_out, bytes_in, connections, blocked) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT ({0}, uid) DO UPDATE SET "
    "bytes_out = bytes_out + excluded.bytes_out, bytes_in = bytes_in + excluded.bytes_in, "
    "connections = connections + excluded.connections, blocked = blocked + excluded.blocked"
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One result of `check_store`: what was checked, whether it is a problem, what to do."""

    problem: bool
    what: str
    advice: str = ""


def check_store(path: str) -> list[Finding]:
    """`snitchctl doctor`: is the database whole, of a schema this snitch knows, and does
    every rule parse? Opens it read-only and changes nothing (no migration either)."""
    if not Path(path).exists():
        return [Finding(True, f"{path}: no such file", "snitchd creates it on its first start")]
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        return [Finding(True, f"{path}: cannot open: {exc}", "check the path and its permissions")]
    restore = (
        f"stop snitchd, keep a copy, then try: sqlite3 {path} .recover | sqlite3 new.db "
        "(or move the file away: snitchd starts with an empty one)"
    )
    try:
        out: list[Finding] = []
        for pragma in ("quick_check", "integrity_check"):
            rows = [str(r[0]) for r in conn.execute(f"PRAGMA {pragma}").fetchmany(20)]
            if rows != ["ok"]:
                out.append(Finding(True, f"PRAGMA {pragma}: {'; '.join(rows)}", restore))
                return out
            out.append(Finding(False, f"PRAGMA {pragma}: ok"))
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            out.append(
                Finding(
                    True,
                    f"schema version {version} is newer than this snitch's ({SCHEMA_VERSION})",
                    "upgrade snitch or restore a backup",
                )
            )
        elif version < SCHEMA_VERSION:
            out.append(
                Finding(
                    False,
                    f"schema version {version}: snitchd migrates it to "
                    f"{SCHEMA_VERSION} when it starts",
                )
            )
        else:
            out.append(Finding(False, f"schema version {version}: current"))
        if version >= 1:
            bad = 0
            count = 0
            for rule_id, text in conn.execute("SELECT id, text FROM rules ORDER BY id"):
                count += 1
                try:
                    parse_rule(text)
                except Exception as exc:
                    bad += 1
                    out.append(Finding(True, f"rule {rule_id} does not parse: {text!r}: {exc}",
                        f"fix its text or delete it: sqlite3 {path} "
                        f"\"DELETE FROM rules WHERE id = {rule_id}\" (snitchd refuses to "
                        "start while it is there)"))  # fmt: skip
            if not bad:
                out.append(Finding(False, f"rules: all {count} parse"))
        return out
    except sqlite3.Error as exc:
        return [Finding(True, f"{path}: {exc}", restore)]
    finally:
        conn.close()


def _count(conn: sqlite3.Connection) -> int:
    """The rule-change counter the triggers of schema 3 keep."""
    return int(conn.execute("SELECT count FROM changes WHERE what = 'rules'").fetchone()[0])


def _lock_holders(path: str) -> list[int]:
    """Other processes holding a write lock on the database or its WAL index (-shm), from
    /proc/locks (sqlite takes POSIX locks: a writer in WAL mode holds byte 120 of -shm; in
    rollback mode, bytes of the database file itself). Empty when unknown."""
    inodes = set()
    for name in (path, path + "-shm"):
        try:
            st = os.stat(name)
        except OSError:
            continue
        inodes.add(f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}")
    pids: list[int] = []
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            for line in locks:
                fields = line.split()
                # "1: POSIX  ADVISORY  WRITE 25588 fe:00:2151646 120 120"; blocked waiters
                # ("1: -> POSIX ...") are not holders.
                if len(fields) >= 6 and fields[1] == "POSIX" and fields[3] == "WRITE":
                    pid, where = int(fields[4]), fields[5]
                    if where in inodes and pid != os.getpid() and pid not in pids:
                        pids.append(pid)
    except (OSError, ValueError):
        return []
    return pids


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
            return comm.read().strip()
    except OSError:
        return ""


# The text of each address a log row names, kept by its number (IPv6 ones negated: ~n), as
# the packet loop makes a row per decision: `str()` of an address is ~0.95 µs of Python
# (ipaddress formats it afresh each time, and its __hash__ is Python too, so the address
# itself is a slow key), `int()` and a lookup ~0.15 µs; a machine talks to few addresses.
_ADDRESS_TEXTS: dict[int, str] = {}
_ADDRESS_TEXTS_MAX = 1 << 14  # dropped all at once when full


def _address_text(addr: IPAddress) -> str:
    key = int(addr) if type(addr) is IPv4Address else ~int(addr)
    text = _ADDRESS_TEXTS.get(key)
    if text is None:
        if len(_ADDRESS_TEXTS) >= _ADDRESS_TEXTS_MAX:
            _ADDRESS_TEXTS.clear()
        text = _ADDRESS_TEXTS[key] = str(addr)
    return text


def log_row(d: Decision) -> tuple[object, ...]:
    """A decision as the log writer stores it (the columns of `_LOG_COLUMNS`), made on the
    packet loop for each decision: so in as few Python steps as can be (`_value_` of an enum
    is its value without `.value`'s Python-level property)."""
    flow, proc = d.flow, d.proc
    source, box = proc.source, proc.container
    return (
        d.time, proc.pid, proc.exe, proc.uid, proc.attribution._value_,
        flow.proto._value_, _address_text(flow.src), flow.sport, _address_text(flow.dst),
        flow.dport, flow.iface, d.host, d.action._value_, d.rule_id, d.reason,
        None if source is None else source._value_, d.mode, d.profile,
        None if box is None else box.name, None if box is None else box.runtime._value_,
    )  # fmt: skip


def decision_row(d: Decision) -> dict[str, Any]:
    """A decision as a connection-log row (and as the monitor's signal shows it)."""
    return dict(zip(_LOG_COLUMNS, log_row(d), strict=True))


def keep_unexpired(now: float, alive: Callable[[int, float], bool]) -> Callable[[RuleRecord], bool]:
    """Whether a rule may stay: False once its time or its process is up."""

    def keep(record: RuleRecord) -> bool:
        rule = record.rule
        if rule.until is not None and rule.until <= now:
            return False
        if rule.lifetime is Lifetime.PROCESS and rule.pid is not None and rule.start is not None:
            return alive(rule.pid, rule.start)
        return True

    return keep
