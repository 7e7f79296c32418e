"""`Recent`: the bounded map of the packet path's memories (repeats, flows in flight)."""

from __future__ import annotations

from snitch_common.recent import Recent


def test_the_oldest_entry_goes_first_and_put_renews() -> None:
    recent: Recent[str, int] = Recent(3)
    for key in "abc":
        assert recent.put(key, 1) is None
    assert recent.put("a", 2) == 1  # renewed: now the newest
    recent.put("d", 1)
    assert list(recent) == ["c", "a", "d"]  # b, the oldest, went
    assert recent.get("c") == 1
    assert list(recent) == ["c", "a", "d"]  # a read does not renew


def test_it_never_holds_more_than_its_limit() -> None:
    recent: Recent[int, int] = Recent(100)
    for i in range(10_000):
        recent.put(i % 250, i)
        assert len(recent) <= 100
    assert list(recent) == [i % 250 for i in range(9_900, 10_000)]
