"""bench/disturb.py's figures: a connect that gave up while snitchd stalled must show as the
stall it waited through, not vanish from the latencies (it first did: max 0.55 ms printed for
a window whose lost connect had waited 3 s)."""

from bench.disturb import Connect, Stats, meets, stats

QUICK_NS = 500_000  # 0.5 ms
GAVE_UP_NS = 3_000_000_000  # connload's 3 s limit
EINPROGRESS = 115


def quick(n: int) -> list[Connect]:
    return [Connect(start_ns=i, latency_ns=QUICK_NS, errno=0) for i in range(n)]


def test_a_lost_connect_counts_with_its_wait() -> None:
    s = stats([*quick(99), Connect(99, GAVE_UP_NS, EINPROGRESS)])
    assert s == Stats(connects=100, lost=1, p50_ms=0.5, p99_ms=0.5, max_ms=3000.0)
    assert meets(s, stats(quick(100))) == (False, False)


def test_percentiles_are_nearest_rank_as_connload_computes_them() -> None:
    s = stats([Connect(i, (i + 1) * 1_000_000, 0) for i in range(100)])  # 1..100 ms
    assert (s.p50_ms, s.p99_ms, s.max_ms, s.lost) == (51.0, 99.0, 100.0, 0)


def test_a_window_within_both_targets_meets_them() -> None:
    assert meets(stats(quick(50)), stats(quick(50))) == (True, True)


def test_a_window_without_connects_has_no_figures() -> None:
    s = stats([])
    assert s == Stats(0, 0, None, None, None)
    assert meets(s, stats(quick(10))) == (None, None)
