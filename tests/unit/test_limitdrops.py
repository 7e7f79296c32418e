"""The kernel's rate-limit counters, as `nft -j` and `iptables-save -c` print them (texts
taken from nft 1.0.6 and iptables 1.8.9 here), and one reading at a time however many ask."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

import snitchd.limitdrops as limitdrops
from snitchd.limitdrops import DropWatch, LimitDrops, nft_drops, xt_drops


def _rule(chain: str, packets: int | None) -> dict[str, object]:
    expr: list[object] = [{"set": {"op": "update", "elem": {"meta": {"key": "skuid"}}}}]
    if packets is not None:
        expr.append({"counter": {"packets": packets, "bytes": 80 * packets}})
    expr.append({"drop": None})
    return {"rule": {"family": "inet", "table": "snitch_limit", "chain": chain, "expr": expr}}


def test_nft_counts_the_two_drop_chains_and_nothing_else() -> None:
    text = json.dumps(
        {
            "nftables": [
                {"metainfo": {"version": "1.0.6"}},
                {"chain": {"family": "inet", "table": "snitch_limit", "name": "query"}},
                {"rule": {"chain": "output", "expr": [{"counter": {"packets": 99}}]}},
                _rule("query", 7),
                _rule("count", 1234),
            ]
        }
    )
    assert nft_drops(text) == LimitDrops(flows=1234, queries=7)
    assert nft_drops(json.dumps({"nftables": [_rule("count", None)]})) == LimitDrops()
    with pytest.raises(ValueError):
        nft_drops("table inet snitch_limit {")


def test_iptables_save_counts_the_drop_rules_of_the_forward_limit_chains() -> None:
    text = "\n".join(
        [
            "*mangle",
            ":SNITCH_FWDQ - [0:0]",
            "[1550:93000] -A SNITCH_FWDQ -m hashlimit --hashlimit-above 500/sec --hashlimit-burst "
            "500 --hashlimit-mode srcip --hashlimit-name snfwd500 -j DROP",
            "[2000:120000] -A SNITCH_FWDQ -m limit --limit 2000/sec --limit-burst 2000 "
            "-j NFQUEUE --queue-num 4242",
            "[3:180] -A SNITCH_FWDQ -j DROP",
            "[40:2400] -A SNITCH_DNSFQ -m hashlimit --hashlimit-above 200/sec -j DROP",
            "[77:4620] -A SNITCH_QUEUE -m connmark --mark 0x5a1d0000/0xffff0000 -j DROP",
            "COMMIT",
        ]
    )
    assert xt_drops(text) == LimitDrops(flows=1553, queries=40)


async def test_callers_share_one_reading_and_a_failed_one_keeps_the_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Twenty status calls at once make one reading (in a thread); one made within `FRESH`
    makes none; a reading that fails leaves the last one shown."""
    readings: list[tuple[str, ...]] = []
    release = threading.Event()

    def read(families: tuple[str, ...]) -> LimitDrops:
        release.wait(5)
        readings.append(families)
        if len(readings) > 1:
            raise OSError("nft: not found")
        return LimitDrops(5, 6)

    monkeypatch.setattr(limitdrops, "read_drops", read)
    watch = DropWatch(("iptables",))
    calls = [asyncio.create_task(watch.refresh()) for _ in range(20)]
    await asyncio.sleep(0.05)
    release.set()
    assert await asyncio.gather(*calls) == [LimitDrops(5, 6)] * 20
    assert await watch.refresh() == LimitDrops(5, 6) and len(readings) == 1
    monkeypatch.setattr(limitdrops, "FRESH", 0.0)
    assert await watch.refresh() == LimitDrops(5, 6) and len(readings) == 2
