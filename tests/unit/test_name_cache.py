"""The name cache per owner (issue 13): a name one program resolved labels that program's flows
only, a user's names of unknown process that user's, a system service's everyone's; and the
cache is bounded by bytes, an estimate checked here against what Python really allocates."""

from __future__ import annotations

import tracemalloc
from ipaddress import IPv4Address

import pytest

from snitch_common.records import Attribution, Process
from snitchd.dnssnoop import Resolution
from snitchd.names import COST_ENTRY, SHARED, NameCache, Owner

ADDR = IPv4Address("203.0.113.7")
CURL = Process(Attribution.PROCESS, pid=100, uid=1000, exe="/usr/bin/curl")
WGET = Process(Attribution.PROCESS, pid=200, uid=1000, exe="/usr/bin/wget")
OTHER_USER = Process(Attribution.PROCESS, pid=300, uid=1001, exe="/usr/bin/curl")


def api(ttl: int = 300) -> list[Resolution]:
    return [Resolution(("api.example.org",), ADDR, ttl)]


def test_a_processes_name_labels_its_own_flows_only() -> None:
    cache = NameCache()
    cache.learn(api(), 0.0, Owner(1000, 100))
    assert cache.names(ADDR, 1.0, CURL) == {"api.example.org"}
    assert cache.best(ADDR, 1.0, CURL) == "api.example.org"
    for other in (WGET, OTHER_USER, Process.uid_only(1000), Process.kernel(), None):
        assert cache.names(ADDR, 1.0, other) == frozenset(), other
        assert cache.best(ADDR, 1.0, other) is None


def test_a_users_name_of_unknown_process_labels_that_users_flows() -> None:
    cache = NameCache()
    cache.learn(api(), 0.0, Owner(1000))
    assert cache.names(ADDR, 1.0, CURL) == {"api.example.org"}
    assert cache.names(ADDR, 1.0, WGET) == {"api.example.org"}
    assert cache.names(ADDR, 1.0, Process.uid_only(1000)) == {"api.example.org"}
    assert cache.names(ADDR, 1.0, OTHER_USER) == frozenset()


def test_shared_names_label_every_flow() -> None:
    cache = NameCache()
    cache.learn(api(), 0.0, SHARED)
    for proc in (CURL, OTHER_USER, Process.uid_only(5), Process.kernel(), None):
        assert cache.names(ADDR, 1.0, proc) == {"api.example.org"}


def test_own_names_come_first_and_all_apply() -> None:
    """The popup shows the name this process asked for; rules may match any name it may carry."""
    cache = NameCache()
    cache.learn([Resolution(("shared.example.net",), ADDR, 300)], 0.0, SHARED)
    cache.learn([Resolution(("user.example.net",), ADDR, 300)], 1.0, Owner(1000))
    cache.learn(api(), 0.5, Owner(1000, 100))
    assert cache.best(ADDR, 2.0, CURL) == "api.example.org"
    assert cache.best(ADDR, 2.0, WGET) == "user.example.net"
    assert cache.best(ADDR, 2.0, OTHER_USER) == "shared.example.net"
    assert cache.names(ADDR, 2.0, CURL) == {
        "api.example.org",
        "user.example.net",
        "shared.example.net",
    }


def test_each_owners_names_expire_on_their_own() -> None:
    cache = NameCache(grace=0.0)
    cache.learn(api(ttl=10), 0.0, Owner(1000, 100))
    cache.learn([Resolution(("long.example.org",), ADDR, 100)], 0.0, Owner(1001, 300))
    assert cache.names(ADDR, 10.0, CURL) == frozenset()
    assert cache.names(ADDR, 10.0, OTHER_USER) == {"long.example.org"}
    assert cache.names(ADDR, 100.0, OTHER_USER) == frozenset()
    assert len(cache) == 0 and cache.bytes == 0


def test_the_cache_stays_within_its_byte_bound_with_long_names() -> None:
    """Many long names (the case that reached ~1.2 GB before): the estimate never passes the
    bound, the oldest addresses go first, the newest are kept."""
    bound = 1 << 20
    cache = NameCache(max_bytes=bound)
    for i in range(2000):
        address = IPv4Address(0x0A000000 + i)
        names = tuple(f"{j}.{i}." + "x" * 240 for j in range(4))
        cache.learn([Resolution(names, address, 300)], float(i), SHARED)
        assert cache.bytes <= bound
    assert cache.names(IPv4Address(0x0A000000 + 1999), 2000.0)
    assert not cache.names(IPv4Address(0x0A000000), 2000.0)


def test_one_user_cannot_push_out_everybody_elses_names() -> None:
    """A user resolving name after name takes at most a quarter of the bound: the names of
    other users and the shared ones stay."""
    cache = NameCache(max_bytes=1 << 20)
    cache.learn(api(), 0.0, Owner(1000, 100))
    cache.learn([Resolution(("shared.example.net",), ADDR, 300)], 0.0, SHARED)
    for i in range(20_000):
        address = IPv4Address(0xC6336400 + i % 200)  # 198.51.100.0/24
        cache.learn([Resolution((f"{i}.flood.example",), address, 300)], 1.0, Owner(1001, 300))
    assert cache.names(ADDR, 2.0, CURL) == {"api.example.org", "shared.example.net"}
    assert cache.bytes <= (1 << 20) // 4 + 2 * (COST_ENTRY + 300)


def test_a_flood_through_the_system_s_resolver_pushes_out_shared_names_only() -> None:
    """A user who looks up name after name through a caching resolver (systemd-resolved):
    the resolver's own queries make shared names, which took the whole cache and pushed out
    every user's own names. Now the shared ones take at most a quarter, like one user's."""
    cache = NameCache(max_bytes=1 << 20)
    cache.learn(api(), 0.0, Owner(1000, 100))
    for i in range(20_000):
        address = IPv4Address(0xC6336400 + i % 200)  # 198.51.100.0/24
        cache.learn([Resolution((f"{i}.flood.example",), address, 300)], 1.0, SHARED)
    assert cache.names(ADDR, 2.0, CURL) == {"api.example.org"}
    assert cache.bytes <= (1 << 20) // 4 + 2 * (COST_ENTRY + 300)


@pytest.mark.parametrize(("length", "per_address"), [(20, 1), (250, 32), (60, 4)])
def test_the_byte_estimate_is_what_python_allocates(length: int, per_address: int) -> None:
    """`bytes` is an estimate: within 25 % of tracemalloc's count of what learning allocated
    (names, entries, dicts), over short and long names, few and many per address."""
    cache = NameCache(max_bytes=1 << 40, max_addresses=1 << 30)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            address = IPv4Address(0x0A000000 + i)
            for j in range(per_address):
                name = (f"{i}-{j}-" + "x" * length)[:length]
                owner = Owner(1000 + i % 7, i % 3 or None)
                cache.learn([Resolution((name,), address, 300)], 0.0, owner)
            cache.names(address, 1.0)
        real = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert 0.75 <= real / cache.bytes <= 1.25, (real, cache.bytes)


def test_a_smaller_bound_on_reload_applies_at_once() -> None:
    cache = NameCache()
    for i in range(100):
        cache.learn([Resolution((f"n{i}.example.org",), IPv4Address(0x0A000000 + i), 300)], 0.0)
    cache.configure(60.0, COST_ENTRY * 10)
    assert cache.bytes <= COST_ENTRY * 10 and len(cache) < 10


def test_bad_byte_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        NameCache(max_bytes=10)
