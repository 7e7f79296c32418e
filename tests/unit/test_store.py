"""The SQLite store on a real file in tmp_path: rules, ids, lifetimes, the connection log, and the
failures an admin can meet (newer schema, corrupt file, locked database)."""

from __future__ import annotations

import random
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from snitch_common.errors import RuleError, RuleNotFound, StoreError
from snitch_common.records import Attribution, Flow, Process, Proto
from snitch_common.rules import Action, Lifetime, Rule, RuleRecord, parse_rule
from snitchd.store import (
    SCHEMA_VERSION,
    Decision,
    LogQuery,
    Store,
    UnparsableRule,
    check_store,
    keep_unexpired,
)

NOW = 1_700_000_000.0


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "snitch.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    yield s
    s.close()


def reopen(db_path: Path) -> Store:
    """A new Store on the same file: what the daemon sees after a restart."""
    return Store(db_path)


def ids(store: Store) -> list[int]:
    return [r.id for r in store.rules()]


# ---------------------------------------------------------------------------------------------
# Rules


def test_added_rule_is_listed_with_what_was_learnt(store: Store) -> None:
    """`list-rules` shows the rule as added, when and by whom."""
    rule = parse_rule("allow app=/usr/bin/curl port=443 proto=tcp")
    record = store.add_rule(rule, NOW, origin="prompt:uid=1000")
    assert record.id >= 1
    (listed,) = store.rules()
    assert listed == record
    assert (listed.rule, listed.created, listed.hits, listed.last_hit, listed.origin) == (
        rule,
        NOW,
        0,
        None,
        "prompt:uid=1000",
    )


def test_store_creates_its_folder_and_keeps_the_file_private(store: Store, db_path: Path) -> None:
    """The log reveals who talked to whom: only root may read it."""
    assert db_path.exists()
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600


def test_stored_rules_survive_a_restart(store: Store, db_path: Path) -> None:
    """Forever, minutes and process rules are on disk; a new Store reads them back equal."""
    texts = [
        "deny to=10.0.0.0/8",
        "allow app=/usr/bin/curl for=15m",
        "allow app=/usr/bin/curl for=process pid=4242 start=1699999999.5",
        "allow app='/opt/My App/bin/app' to=*.example.org",
    ]
    added = [store.add_rule(parse_rule(t), NOW) for t in texts]
    store.close()
    again = reopen(db_path)
    try:
        assert again.rules() == added
    finally:
        again.close()


def test_minutes_rule_is_stamped_when_added(store: Store) -> None:
    """ "For 15 minutes" counts from the moment of adding, so the stored rule carries `until`."""
    record = store.add_rule(parse_rule("allow app=/usr/bin/curl for=15m"), NOW)
    assert record.rule.until == NOW + 15 * 60
    assert store.rules()[0].rule.until == NOW + 15 * 60


def test_restart_rule_is_kept_in_memory_only(store: Store, db_path: Path) -> None:
    """ "Until restart" means exactly that: the next daemon must not see it."""
    kept = store.add_rule(parse_rule("allow app=/usr/bin/curl"), NOW)
    temporary = store.add_rule(parse_rule("allow app=/usr/bin/wget for=restart"), NOW)
    assert ids(store) == [kept.id, temporary.id]
    assert len(store.rules()) == 2
    with sqlite3.connect(db_path) as raw:
        texts = [row[0] for row in raw.execute("SELECT text FROM rules")]
    raw.close()
    assert texts == ["allow app=/usr/bin/curl"]
    store.close()
    again = reopen(db_path)
    try:
        assert ids(again) == [kept.id]
    finally:
        again.close()


def test_deleted_id_is_never_reused(store: Store, db_path: Path) -> None:
    """Ids are what people type into delete-rule; a reused id could delete the wrong rule from a
    script written yesterday (hence AUTOINCREMENT), even across a restart."""
    first = [store.add_rule(parse_rule(f"allow port={p}"), NOW).id for p in (1, 2, 3)]
    store.delete_rule(first[-1])
    fourth = store.add_rule(parse_rule("allow port=4"), NOW).id
    assert fourth > first[-1]
    store.delete_rule(fourth)
    store.close()
    again = reopen(db_path)
    try:
        assert again.add_rule(parse_rule("allow port=5"), NOW).id > fourth
    finally:
        again.close()


def test_memory_rules_draw_ids_from_the_same_sequence(store: Store, db_path: Path) -> None:
    """A restart rule's id must never later name a stored rule, or `delete-rule` of a remembered
    id would hit something else after the restart."""
    a = store.add_rule(parse_rule("allow port=1"), NOW).id
    b = store.add_rule(parse_rule("allow port=2 for=restart"), NOW).id
    c = store.add_rule(parse_rule("allow port=3"), NOW).id
    assert a < b < c, "one increasing sequence for stored and in-memory rules"
    store.close()
    again = reopen(db_path)
    try:
        d = again.add_rule(parse_rule("allow port=4"), NOW).id
        assert d not in (a, b, c)
    finally:
        again.close()


def test_delete_rule_returns_what_went(store: Store) -> None:
    """`delete-rule` echoes the deleted rule, stored or in memory, and it is gone from the list."""
    stored = store.add_rule(parse_rule("deny port=25"), NOW)
    memory = store.add_rule(parse_rule("deny port=26 for=restart"), NOW)
    assert store.delete_rule(stored.id) == stored
    assert store.delete_rule(memory.id) == memory
    assert store.rules() == []
    assert len(store.rules()) == 0


def test_deleting_a_missing_rule_says_so(store: Store) -> None:
    """A typo in an id must be an error (RuleNotFound), not a silent success."""
    record = store.add_rule(parse_rule("deny port=25"), NOW)
    store.delete_rule(record.id)
    with pytest.raises(RuleNotFound, match=str(record.id)):
        store.delete_rule(record.id)
    with pytest.raises(RuleNotFound):
        store.delete_rule(999)


def test_rules_version_counts_rule_changes_by_any_process_and_nothing_else(
    store: Store, db_path: Path
) -> None:
    """snitchd alerts on rules changed behind its back; the log writer's commits (rows, hit
    counts, apps) must not look like such a change."""
    before = store.rules_version()
    record = store.add_rule(parse_rule("allow port=443"), NOW)
    store.record_hits({record.id: (1, NOW)})
    store.log_decisions([decision(NOW, "/usr/bin/curl", "allow")])
    store.note_apps({"/usr/bin/curl": (NOW, None)})
    assert store.rules_version() == before + 1
    with sqlite3.connect(db_path) as raw:
        raw.execute("UPDATE rules SET text = 'deny port=443' WHERE id = ?", [record.id])
    assert store.rules_version() == before + 2
    store.delete_rule(record.id)
    assert store.rules_version() == before + 3


def test_own_rule_writes_are_not_changes_from_outside(store: Store, db_path: Path) -> None:
    """Issue 12: the sweep took snitchd's own writes for outside changes and rebuilt the whole
    rule set a second time after each. Own writes (stored, in memory, deleted) move the count
    snitchd holds along; a hand edit leaves a gap, even between two own writes."""
    store.adopt_version(store.load_rules().version)
    stored = store.add_rule(parse_rule("allow port=443"), NOW)
    memory = store.add_rule(parse_rule("allow port=80 for=restart"), NOW)
    store.delete_rule(stored.id)
    store.delete_rule(memory.id)
    assert not store.changed_outside()
    with sqlite3.connect(db_path) as raw:
        raw.execute("INSERT INTO rules (text, created, hits) VALUES ('deny port=25', 0, 0)")
    store.add_rule(parse_rule("allow port=22"), NOW)
    assert store.changed_outside()
    load = store.load_rules()
    assert [str(r.rule) for r in load.records] == ["deny port=25", "allow port=22"]
    store.adopt_version(load.version)
    assert not store.changed_outside()


def test_nothing_is_taken_as_held_before_a_first_load(store: Store) -> None:
    """Until snitchd says which count its rules are from, every count is news to it."""
    store.add_rule(parse_rule("allow port=443"), NOW)
    assert store.changed_outside()


def test_load_rules_reads_rules_and_their_count_together(store: Store) -> None:
    """The count a load returns is the one its rules are from, memory rules included."""
    store.add_rule(parse_rule("allow port=443"), NOW)
    store.add_rule(parse_rule("allow port=80 for=restart"), NOW)
    load = store.load_rules()
    assert load.version == store.rules_version()
    assert [str(r.rule) for r in load.records] == ["allow port=443", "allow port=80 for=restart"]


def test_a_rule_write_waiting_for_a_lock_does_not_hold_up_reads(
    store: Store, db_path: Path
) -> None:
    """A rule write waits (up to the busy timeout) for another process's lock on its own
    connection: listing rules or the log meanwhile must not wait for it, so they are answered
    while the write still waits. Takes the 5 s busy timeout."""
    store.add_rule(parse_rule("allow port=443"), NOW)
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    failures: list[BaseException] = []

    def write() -> None:
        try:
            store.add_rule(parse_rule("deny port=25"), NOW)
        except BaseException as exc:
            failures.append(exc)

    writer = threading.Thread(target=write)
    try:
        writer.start()
        writer.join(0.5)  # let it reach the lock (ordering only: the checks below do not time)
        assert [str(r.rule) for r in store.rules()] == ["allow port=443"]
        assert store.connections(LogQuery()) == []
        assert writer.is_alive(), "the reads waited for the write"
    finally:
        writer.join(30)
        holder.execute("ROLLBACK")
        holder.close()
    assert len(failures) == 1 and isinstance(failures[0], StoreError)
    assert "locked by another process" in str(failures[0])
    assert f"`fuser {db_path}`" in str(failures[0])


def test_record_hits_accumulates_for_stored_and_memory_rules(store: Store, db_path: Path) -> None:
    """Hit counts tell the user which rules are dead weight; they add up across batches and
    survive a restart for stored rules."""
    stored = store.add_rule(parse_rule("allow port=443"), NOW)
    memory = store.add_rule(parse_rule("allow port=80 for=restart"), NOW)
    store.record_hits({stored.id: (3, NOW + 1), memory.id: (1, NOW + 2)})
    store.record_hits({stored.id: (2, NOW + 5), 9999: (1, NOW)})
    by_id = {r.id: r for r in store.rules()}
    assert (by_id[stored.id].hits, by_id[stored.id].last_hit) == (5, NOW + 5)
    assert (by_id[memory.id].hits, by_id[memory.id].last_hit) == (1, NOW + 2)
    store.close()
    again = reopen(db_path)
    try:
        (record,) = again.rules()
        assert (record.hits, record.last_hit) == (5, NOW + 5)
    finally:
        again.close()


def test_unparsable_stored_row_stops_the_load_naming_it(store: Store, db_path: Path) -> None:
    """Issue 13: a bad row was skipped with a warning, so a deny whose text broke let its
    flows through. Now the load fails, naming the row and its text, and what to do."""
    store.add_rule(parse_rule("deny port=25"), NOW)
    with sqlite3.connect(db_path) as raw:
        raw.execute("INSERT INTO rules (text, created) VALUES ('deny port=0', 1.0)")
    raw.close()
    with pytest.raises(UnparsableRule) as caught:
        store.rules()
    with pytest.raises(UnparsableRule, match=r"rule 2 does not parse: 'deny port=0'") as loaded:
        store.load_rules()
    assert caught.value.rule_id == 2 and loaded.value.version == 2
    assert "DELETE FROM rules WHERE id = 2" in loaded.value.message


def test_a_rule_its_own_parser_refuses_is_never_stored(store: Store, db_path: Path) -> None:
    """Rules made in code (an answer, the monitor, learn mode) skip the parser: one it would
    refuse (`for=process` without `app=`) was stored, and the next start failed on it."""
    no_app = Rule(Action.ALLOW, ports=(443, 443), lifetime=Lifetime.PROCESS, pid=7, start=1.0)
    with pytest.raises(RuleError, match="for=process needs app="):
        store.add_rule(no_app, NOW)
    assert store.rules() == [] and Store(str(db_path)).load_rules().records == []


def test_check_store_names_what_is_wrong_and_what_to_do(store: Store, db_path: Path) -> None:
    """`snitchctl doctor`'s checks: a sound store is all ok; a rule that does not parse and a
    newer schema are problems, each with advice."""
    store.add_rule(parse_rule("deny port=25"), NOW)
    assert not any(f.problem for f in check_store(str(db_path)))
    with sqlite3.connect(db_path) as raw:
        raw.execute("INSERT INTO rules (text, created) VALUES ('nonsense', 1.0)")
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    problems = [f for f in check_store(str(db_path)) if f.problem]
    assert [f.what.split(":")[0] for f in problems] == [
        f"schema version {SCHEMA_VERSION + 1} is newer than this snitch's ({SCHEMA_VERSION})",
        "rule 2 does not parse",
    ]
    assert all(f.advice for f in problems)


def test_check_store_finds_a_corrupt_page(tmp_path: Path) -> None:
    """A page overwritten on disk: integrity checks say so, and how to recover."""
    path = tmp_path / "bad.db"
    s = Store(path)
    s.log_rows([(float(i), 1, "/x", 0, "process", "tcp", "192.0.2.1", 1, "192.0.2.2", 80, "",
                 None, "allow", None, "r", None, "ask", None, None, None)
                for i in range(3000)])  # fmt: skip
    s.close()
    data = bytearray(path.read_bytes())
    data[4096 * 3 : 4096 * 3 + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    problems = [f for f in check_store(str(path)) if f.problem]
    assert problems and ".recover" in problems[0].advice


# ---------------------------------------------------------------------------------------------
# Expiry sweep


def sweep(store: Store, keep: Callable[[RuleRecord], bool]) -> list[RuleRecord]:
    """What the daemon's sweeper does with the test: delete every rule it refuses."""
    gone = [r for r in store.rules() if not keep(r)]
    for record in gone:
        store.delete_rule(record.id)
    return gone


def test_keep_unexpired_drops_minutes_rules_whose_time_is_up(store: Store) -> None:
    """The sweeper deletes what `decide` already ignores, so the list matches reality."""
    short = store.add_rule(parse_rule("allow app=/bin/a for=5m"), NOW)
    long = store.add_rule(parse_rule("allow app=/bin/b for=60m"), NOW)
    forever = store.add_rule(parse_rule("allow app=/bin/c"), NOW)
    gone = sweep(store, keep_unexpired(NOW + 300, lambda pid, start: True))
    assert gone == [short]
    assert store.rules() == [long, forever]


def test_keep_unexpired_asks_whether_the_process_still_lives(store: Store) -> None:
    """A "for this process" rule lives as long as that exact process (pid and start time, so a
    reused pid does not keep it alive)."""
    seen: list[tuple[int, float]] = []

    def alive(pid: int, start: float) -> bool:
        seen.append((pid, start))
        return pid == 100

    living = store.add_rule(parse_rule("allow app=/bin/a for=process pid=100 start=5.0"), NOW)
    dead = store.add_rule(parse_rule("allow app=/bin/a for=process pid=200 start=6.0"), NOW)
    unpinned = store.add_rule(parse_rule("allow app=/bin/a for=process"), NOW)
    gone = sweep(store, keep_unexpired(NOW, alive))
    assert gone == [dead]
    assert store.rules() == [living, unpinned]
    assert sorted(seen) == [(100, 5.0), (200, 6.0)]


# ---------------------------------------------------------------------------------------------
# Connection log


def decision(t: float, exe: str | None, action: str, dport: int = 443) -> Decision:
    proc = (
        Process(Attribution.PROCESS, pid=7, uid=1000, exe=exe)
        if exe is not None
        else Process.kernel()
    )
    flow = Flow(
        Proto.TCP, IPv4Address("192.0.2.1"), 40000, IPv4Address("93.184.216.34"), dport, "eth0", 6
    )
    return Decision(t, flow, proc, Action(action), 1, "rule 1", host="example.org")


def test_logged_decision_reads_back_with_its_fields(store: Store) -> None:
    """The log is what `snitchctl log` and the notifier show: every field must come back."""
    store.log_decisions([decision(NOW, "/usr/bin/curl", "allow")])
    (row,) = store.connections(LogQuery())
    assert {
        k: row[k]
        for k in (
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
        )
    } == {
        "time": NOW,
        "pid": 7,
        "exe": "/usr/bin/curl",
        "uid": 1000,
        "attribution": "process",
        "proto": "tcp",
        "src": "192.0.2.1",
        "sport": 40000,
        "dst": "93.184.216.34",
        "dport": 443,
        "iface": "eth0",
        "host": "example.org",
        "action": "allow",
        "rule_id": 1,
        "reason": "rule 1",
    }


def test_log_rows_name_each_address_as_str_does_whatever_its_family(store: Store) -> None:
    """A row's addresses are their text as `str()` gives it, though rows keep the text of the
    addresses they saw by number: an IPv6 address with the number of an IPv4 one (::c000:201
    and 192.0.2.1) is still itself, and so is every address after many others."""
    v4 = IPv4Address("192.0.2.1")
    v6 = IPv6Address(int(v4))
    flows = [
        Flow(Proto.TCP, v4, 40000, v6, 443, "eth0", 6),
        Flow(Proto.TCP, v6, 40001, v4, 443, "eth0", 6),
        *(
            Flow(Proto.UDP, v4, 1, IPv6Address(f"2001:db8::{i:x}"), 53, "eth0", 17)
            for i in range(20_000)
        ),
        Flow(Proto.TCP, v6, 40002, v4, 443, "eth0", 6),
    ]
    proc = Process(Attribution.PROCESS, pid=7, uid=1000, exe="/usr/bin/curl")
    store.log_decisions(Decision(NOW, f, proc, Action.ALLOW, None, "default") for f in flows)
    rows = store.connections(LogQuery(limit=30_000))
    assert [(r["src"], r["dst"]) for r in rows] == [(str(f.src), str(f.dst)) for f in flows]


def test_kernel_flows_are_logged_without_a_process(store: Store) -> None:
    """Kernel flows have no pid/exe/uid; the log stores NULLs, not made-up values."""
    store.log_decisions([decision(NOW, None, "allow")])
    (row,) = store.connections(LogQuery())
    assert (row["pid"], row["exe"], row["uid"], row["attribution"]) == (None, None, None, "kernel")


def test_log_query_filters(store: Store) -> None:
    """`snitchctl log --since/--app/--action/--limit` narrow the log; the last N come back in
    time order."""
    store.log_decisions(
        [
            decision(NOW + 0, "/usr/bin/curl", "allow", 1),
            decision(NOW + 1, "/usr/bin/wget", "deny", 2),
            decision(NOW + 2, "/usr/bin/curl", "deny", 3),
            decision(NOW + 3, "/usr/bin/curl", "allow", 4),
        ]
    )
    store.log_decisions([])

    def ports(query: LogQuery) -> list[int]:
        return [row["dport"] for row in store.connections(query)]

    assert ports(LogQuery()) == [1, 2, 3, 4]
    assert ports(LogQuery(since=NOW + 2)) == [3, 4]
    assert ports(LogQuery(exe="/usr/bin/curl")) == [1, 3, 4]
    assert ports(LogQuery(action="deny")) == [2, 3]
    assert ports(LogQuery(exe="/usr/bin/curl", action="deny")) == [3]
    assert ports(LogQuery(limit=2)) == [3, 4]
    assert ports(LogQuery(exe="/usr/bin/nope")) == []


# ---------------------------------------------------------------------------------------------
# Schema and failures


def test_new_file_is_migrated_to_the_current_schema(store: Store, db_path: Path) -> None:
    """The schema version is recorded so the next start-up knows which migrations ran."""
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    raw.close()


def test_reopening_does_not_migrate_twice(store: Store, db_path: Path) -> None:
    """Migrations run once; a second start-up on a current file changes nothing."""
    record = store.add_rule(parse_rule("deny port=25"), NOW)
    store.close()
    again = reopen(db_path)
    try:
        assert again.rules() == [record]
    finally:
        again.close()


def test_newer_schema_stops_start_up(db_path: Path) -> None:
    """A database written by a newer snitch must not be guessed at (or "migrated" backwards)."""
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreError, match="newer") as info:
        Store(db_path)
    assert str(db_path) in str(info.value)
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    raw.close()


def test_corrupt_file_is_a_clear_store_error(db_path: Path) -> None:
    """Random bytes where the database should be: the admin is told the file is corrupt and what
    to do, instead of a sqlite3 traceback."""
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(random.Random(1).randbytes(8192))
    with pytest.raises(StoreError) as info:
        Store(db_path)
    message = str(info.value)
    assert str(db_path) in message
    assert "corrupt" in message
    assert "not a database" in message


def test_locked_database_is_a_store_error_mentioning_the_lock(db_path: Path) -> None:
    """Another process holding the database (a second snitchd) must give a clear "locked" error
    after the busy timeout, not hang or crash. Takes the store's 5 s busy timeout."""
    db_path.parent.mkdir(parents=True)
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match="locked") as info:
            Store(db_path)
        assert "another snitchd" in str(info.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_lifetime_enum_values_are_what_the_store_writes() -> None:
    """Stored text uses `for=process`/`for=Nm`; renaming an enum value would orphan rows."""
    assert [lt.value for lt in Lifetime] == ["once", "process", "minutes", "restart", "forever"]


def test_a_batch_that_reads_first_survives_another_process_writing(tmp_path: Path) -> None:
    """The log writer's batch with a new app and no rows (a flow still waiting for its prompt)
    read the apps table's columns before its first write. In a deferred transaction that read
    pins a snapshot; snitchd's main process then wrote (a profile switched) and the batch's
    write failed at once with "database is locked", with no busy wait (SQLITE_BUSY_SNAPSHOT),
    twice in CI. A batch takes the write lock first now; the other writer waits for it."""
    path = tmp_path / "snitch.db"
    store = Store(path)
    other = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    wrote = threading.Event()

    def write_elsewhere() -> None:
        other.execute("INSERT INTO apps VALUES ('/usr/bin/elsewhere', 1.0, NULL)")
        wrote.set()

    elsewhere = threading.Thread(target=write_elsewhere)
    try:
        with store.batch():
            assert store.known_apps() == {}  # a read first
            elsewhere.start()
            elsewhere.join(0.5)  # room for it to commit, if it may
            store.note_apps({"/usr/bin/waiting": (2.0, None)})
        elsewhere.join(10)
        assert wrote.is_set()
        assert set(store.known_apps()) == {"/usr/bin/elsewhere", "/usr/bin/waiting"}
    finally:
        elsewhere.join(10)
        other.close()
        store.close()
