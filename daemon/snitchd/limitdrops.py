"""What the kernel's rate limits dropped before the queues, for `snitchctl status` and the
metrics: a user's new flows and DNS queries (the nft table, `netfilter.limit_script`), and a
forwarded source's (the iptables chains of `netfilter._limited_queue_lines`).

The counters live in the kernel's rules, so reading them takes an `nft` run and an
`iptables-save` run per family (~10 ms each). Never on the loop, and never once per caller: a
status call gets the last reading, made anew in a thread when it is older than `FRESH` seconds,
one at a time however many callers ask meanwhile. A reading that fails keeps the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass

from snitch_common.errors import BackendFailed
from snitchd.netfilter import DNS_FORWARD_CHAIN, FORWARD_QUEUE_CHAIN, LIMIT_TABLE, run_tool

__all__ = ["FRESH", "DropWatch", "LimitDrops", "nft_drops", "read_drops", "xt_drops"]

log = logging.getLogger(__name__)

FRESH = 1.0  # seconds a reading is shown before a status call makes a new one
_SAVED = re.compile(r"^\[(\d+):\d+\] -A (\S+) .*-j DROP$")


@dataclass(frozen=True, slots=True)
class LimitDrops:
    flows: int = 0  # new flows past new_flows_per_user (users', and forwarded sources')
    queries: int = 0  # DNS queries past dns_queries_per_user (users', and forwarded sources')

    def __add__(self, other: LimitDrops) -> LimitDrops:
        return LimitDrops(self.flows + other.flows, self.queries + other.queries)


def nft_drops(text: str) -> LimitDrops:
    """The drop rules' counters in `nft -j list table inet snitch_limit`: chain "count" (new
    flows) and chain "query" (DNS queries). Raises ValueError on text that is not nft's JSON."""
    found = {"count": 0, "query": 0}
    for item in json.loads(text).get("nftables", []):
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict) or rule.get("chain") not in found:
            continue
        for expr in rule.get("expr", []):
            counter = expr.get("counter") if isinstance(expr, dict) else None
            if isinstance(counter, dict):
                found[rule["chain"]] += int(counter.get("packets", 0))
    return LimitDrops(found["count"], found["query"])


def xt_drops(text: str) -> LimitDrops:
    """The DROP rules' packet counters of our two forward limit chains in `iptables-save -c`."""
    found = {FORWARD_QUEUE_CHAIN: 0, DNS_FORWARD_CHAIN: 0}
    for line in text.splitlines():
        match = _SAVED.match(line)
        if match is not None and match[2] in found:
            found[match[2]] += int(match[1])
    return LimitDrops(found[FORWARD_QUEUE_CHAIN], found[DNS_FORWARD_CHAIN])


def read_drops(families: tuple[str, ...]) -> LimitDrops:
    """One reading of every counter (a thread's job). A table or chain that is not there
    counts 0 (no nft, or no table: no limit set, said at start); raises BackendFailed when
    iptables-save fails."""
    total = LimitDrops()
    if shutil.which("nft") is not None:
        with contextlib.suppress(BackendFailed):
            total += nft_drops(run_tool(("nft", "-j", "list", "table", "inet", LIMIT_TABLE)))
    for tool in families:
        total += xt_drops(run_tool((f"{tool}-save", "-c", "-t", "mangle")))
    return total


class DropWatch:
    """The last reading, and at most one new one at a time (see the module)."""

    def __init__(self, families: tuple[str, ...]) -> None:
        self.families = families
        self.last = LimitDrops()
        self._at = float("-inf")
        self._reading: asyncio.Task[LimitDrops] | None = None

    async def refresh(self) -> LimitDrops:
        """The counters, read anew unless the last reading is fresh; the last on failure."""
        if self._reading is None and time.monotonic() - self._at > FRESH:
            self._reading = asyncio.create_task(asyncio.to_thread(read_drops, self.families))
            self._reading.add_done_callback(self._done)
        if self._reading is not None:
            await asyncio.wait([self._reading])  # a failure is said by `_done`, not raised
        return self.last

    def _done(self, task: asyncio.Task[LimitDrops]) -> None:
        self._reading = None
        self._at = time.monotonic()
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.debug("limit counters unreadable: %s", error)
            return
        self.last = task.result()
