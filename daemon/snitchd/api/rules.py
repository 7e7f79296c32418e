"""The service's rule methods: the rule store through the firewall, a page at a time."""

import json
import sqlite3
from typing import Any

from dbus_fast import Variant
from dbus_fast.annotations import DBusStr, DBusUInt64
from dbus_fast.service import dbus_method, dbus_signal

from snitch_common.bus import MAX_RULES_PAGE
from snitch_common.errors import NotAuthorized, RuleError
from snitch_common.records import Proto, Runtime
from snitch_common.rulefile import read_rules
from snitch_common.rules import Rule, RuleRecord, parse_rule
from snitchd.api.base import ServiceBase
from snitchd.api.values import VarDict, arg, as_json, count_of, limit_of, record_dict, record_plain
from snitchd.caller import current_caller, handled
from snitchd.decide import PRECEDENCE
from snitchd.explain import Explained, ExplainQuery, explain_flow
from snitchd.queries import RuleStats, read_rule_stats
from snitchd.store import Store

__all__ = ["RulesRoom"]


class RulesRoom(ServiceBase):
    """Rules: listed (paged), added, edited, switched off and on, imported, explained."""

    @dbus_method()
    @handled(query=True)
    async def ListRules(self, query: VarDict) -> DBusStr:
        """A page of the rules as the firewall holds them: `offset` (0), `limit` (at most
        MAX_RULES_PAGE). Texts and counters are made in a worker: at 100k rules, one call
        walking all of them froze the packet loop 2-5 s."""
        offset = count_of(query, "offset", 0)
        entries = await self.firewall.rule_entries()
        page = entries[offset : offset + limit_of(query, MAX_RULES_PAGE)]
        store = self.firewall.store
        return await self.reader.run(lambda conn: as_json(_rules_page(conn, page, store)))

    @dbus_method()
    @handled(admin="add rules")
    async def AddRule(self, text: DBusStr) -> VarDict:
        """Add a rule; a rule equal to one there already is not added twice: that one comes
        back, with `existing` true."""
        return await self._add(text, "")

    @dbus_method()
    @handled(admin="delete rules")
    async def DeleteRule(self, rule_id: DBusUInt64) -> VarDict:
        origin = f"uid {current_caller().uid}"
        return record_dict(await self.firewall.delete_rule(rule_id, origin=origin))

    async def _add(self, text: str, note: str) -> dict[str, Variant]:
        origin = f"uid {current_caller().uid}"
        rule = parse_rule(text)
        if rule.profile is not None and self._switcher is not None:
            self._switcher.check_exists(rule.profile)  # a rule of no profile would hold nowhere
        record, added = await self.firewall.add_new_rule(rule, origin, note, dedup=True)
        return record_dict(record) | {"existing": Variant("b", not added)}

    @dbus_method()
    @handled(query=True)
    async def Explain(self, query: VarDict) -> VarDict:
        dst = arg(query, "dst", str)
        if dst is None:
            raise RuleError("explain needs dst")
        try:
            proto = Proto(arg(query, "proto", str) or "tcp")
        except ValueError:
            raise RuleError("explain: proto must be tcp, udp, icmp or other") from None
        uid, who = arg(query, "uid", int), current_caller()
        if uid is not None and who.own_only not in (None, uid):
            # The names another user's programs resolved are theirs (the log's are too).
            raise NotAuthorized(
                f"explain: uid {uid} is not yours: only an admin explains another user's "
                f"flows (leave out --uid, or give {who.uid})"
            )
        asked = ExplainQuery(
            dst,
            arg(query, "port", int) or 0,
            proto,
            arg(query, "exe", str),
            uid,
            arg(query, "pid", int),
            arg(query, "iface", str) or "",
            arg(query, "host", str),
            arg(query, "script", str),
            arg(query, "sha256", str),
            arg(query, "container", str),
            _explain_runtime(query),
        )
        explained = await explain_flow(self.firewall, asked)
        return _explanation_dict(explained, self.firewall.config.default_action.value)

    @dbus_method()
    @handled(admin="add rules")
    async def AddRuleWithNote(self, text: DBusStr, note: DBusStr) -> VarDict:
        """AddRule, with a note people read (not part of the rule)."""
        return await self._add(text, note)

    @dbus_method()
    @handled(admin="edit rules")
    async def EditRule(self, rule_id: DBusUInt64, text: DBusStr, options: VarDict) -> VarDict:
        """New text for a rule ("": keep it), same id; `note` in options replaces its note.
        A rule of a rules.d file is refused (the error names the file)."""
        note = arg(options, "note", str)
        if not text and note is None:
            raise RuleError("edit-rule needs new rule text or a note")
        origin = f"uid {current_caller().uid}"
        rule = parse_rule(text) if text else None
        return record_dict(await self.firewall.edit_rule(rule_id, rule, note, origin))

    @dbus_method()
    @handled(admin="enable rules")
    async def EnableRule(self, rule_id: DBusUInt64) -> VarDict:
        origin = f"uid {current_caller().uid}"
        return record_dict(await self.firewall.set_rule_enabled(rule_id, True, origin))

    @dbus_method()
    @handled(admin="disable rules")
    async def DisableRule(self, rule_id: DBusUInt64) -> VarDict:
        """Switch a rule off: it stays listed and matches nothing until enabled."""
        origin = f"uid {current_caller().uid}"
        return record_dict(await self.firewall.set_rule_enabled(rule_id, False, origin))

    @dbus_method()
    @handled(admin="import rules")
    async def ImportRules(self, text: DBusStr, options: VarDict) -> DBusStr:
        """Rules as a rules file's text, applied all or nothing: the plan as JSON (`added`,
        `duplicates`, `invalid`, `applied`). With an invalid line, or `dry_run`, nothing
        changes. A duplicate names the rule there (`id`, 0: an earlier line), the `note` it
        keeps, and its line's own note when that is not taken (`dropped_note`, else "")."""
        dry_run = bool(arg(options, "dry_run", bool))
        lines, bad = read_rules(text, lasting_only=False)
        plan: dict[str, Any] = {
            "invalid": [{"line": b.line, "text": b.text, "reason": b.reason} for b in bad],
            "added": [],
            "duplicates": [],
            "applied": False,
        }
        origin = f"import by uid {current_caller().uid}"
        added, twins = await self.firewall.import_rules(lines, origin, dry_run=dry_run or bool(bad))
        plan["added"] = [{"id": r.id, "text": str(r.rule)} for r in added]
        plan["duplicates"] = [
            {"id": t.id, "text": str(t.rule), "note": t.note, "dropped_note": t.dropped_note}
            for t in twins
        ]
        plan["applied"] = not (dry_run or bad)
        return json.dumps(plan)

    # -- issue 19: the rules changed (snitchd/rulenews.py gathers and paces it) ----------------

    @dbus_signal()
    def RulesChanged(self, change: dict[str, Variant]) -> VarDict:
        """Sent to everyone, at most a few times a second, when rules are added, changed or
        removed, whoever changed them: `generation` (t, counts the signals), `changed` and
        `removed` (at, rule ids), `everything` (b: read them all). Ids only: anyone may list
        the rules, never learn more here (snitch_common.rulechange)."""
        return change


def _rules_page(
    conn: sqlite3.Connection, page: list[tuple[int, Rule]], store: Store
) -> list[dict[str, object]]:
    """In a worker: each rule's text, and its counters (from the store, or from memory for a
    rule kept until restart)."""
    stats = read_rule_stats(conn, [rule_id for rule_id, _ in page])
    out = []
    for rule_id, rule in page:
        record = store.memory_record(rule_id)
        if record is None:
            s = stats.get(rule_id, RuleStats(0.0, None, 0, ""))
            record = RuleRecord(
                rule_id, rule, s.created, s.last_hit, s.hits, s.origin, s.note, s.enabled
            )
        out.append(record_plain(record))
    return out


def _explain_runtime(query: dict[str, Variant]) -> Runtime | None:
    """Explain's `runtime` (issue 16), which needs a `container`."""
    value = arg(query, "runtime", str)
    if not value:
        return None
    if not arg(query, "container", str):
        raise RuleError("explain: runtime needs container (give --container NAME)")
    try:
        return Runtime(value)
    except ValueError:
        names = "|".join(r.value for r in Runtime)
        raise RuleError(f"explain: invalid runtime {value!r}: use {names}") from None


def _explanation_dict(explained: Explained, default: str) -> dict[str, Variant]:
    """The verdict and winner are the packet path's (`decide`); the matches are for reading."""
    verdict = explained.verdict
    winner = -1 if verdict is None or verdict.rule_id is None else verdict.rule_id
    return {
        "verdict": Variant("s", verdict.action.value if verdict else default),
        "winner": Variant("x", winner),
        "matches": Variant("a(ts)", [(i, str(r)) for i, r in explained.explanation.matches]),
        "default_action": Variant("s", default),
        "precedence": Variant("s", PRECEDENCE),
        "dst": Variant("s", str(explained.dst)),
        "names": Variant("as", sorted(explained.names)),
        "note": Variant("s", explained.note),
    }
