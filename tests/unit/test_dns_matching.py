"""What makes an answer believable (issue 13): a query seen leaving with the same ports, id and
question (`dnsasked`), read from real query and answer packets (`dnssnoop.read_dns_packet`);
and the resolvers snitch believes, read from resolv.conf, systemd-resolved and NetworkManager
property values (`resolvers`)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import dns.message
import dns.rrset
import pytest
from dbus_fast import Variant

from snitch_common.errors import PacketError
from snitch_common.records import Proto
from snitchd.dnsasked import Asked, QueryKey, QueryLog
from snitchd.dnssnoop import Question, read_dns_packet
from snitchd.resolvers import (
    LOCAL_STUBS,
    Resolvers,
    parse_nm_configuration,
    parse_resolv_conf,
    parse_resolved_servers,
)
from tests.support import packets

ME, RESOLVER = IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2")
API = Question("api.example.org", 1)


def query_packet(qid: int, name: str = "api.example.org", sport: int = 41000) -> bytes:
    query = dns.message.make_query(name, "A", id=qid)
    return packets.ipv4(17, packets.udp(sport, 53, query.to_wire()), src=ME, dst=RESOLVER)


def answer_packet(qid: int, name: str = "api.example.org", dport: int = 41000) -> bytes:
    query = dns.message.make_query(name, "A", id=qid)
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text(name + ".", 300, "IN", "A", "203.0.113.7"))
    return packets.ipv4(17, packets.udp(53, dport, response.to_wire()), src=RESOLVER, dst=ME)


def key_of_query(raw: bytes) -> tuple[QueryKey, Question | None]:
    p = read_dns_packet(raw, answer=False)
    m = p.messages[0]
    return QueryKey(p.proto, p.src, p.sport, p.dst, p.dport, m.id), m.question


def key_of_answer(raw: bytes) -> tuple[QueryKey, Question | None]:
    p = read_dns_packet(raw)
    m = p.messages[0]
    return QueryKey(p.proto, p.dst, p.dport, p.src, p.sport, m.id), m.question


# -- reading queries ------------------------------------------------------------------------


def test_a_query_is_read_with_its_id_and_lowercase_question() -> None:
    found = read_dns_packet(query_packet(4711, "API.Example.ORG"), answer=False)
    assert (found.answer, found.proto, found.src, found.sport) == (False, Proto.UDP, ME, 41000)
    assert found.messages[0].id == 4711 and found.messages[0].question == API
    assert found.messages[0].resolutions == ()


def test_an_answer_is_not_a_query_and_a_query_is_not_an_answer() -> None:
    with pytest.raises(PacketError):
        read_dns_packet(answer_packet(1), answer=False)
    with pytest.raises(PacketError):
        read_dns_packet(query_packet(1))


# -- matching answers to queries ------------------------------------------------------------


def asked(uid: int = 1000, at: float = 0.0, question: Question = API) -> Asked:
    return Asked(question, None, uid, at)


def test_an_answer_matches_its_query_once() -> None:
    log = QueryLog()
    key, question = key_of_query(query_packet(4711))
    assert question is not None
    log.record(key, asked(question=question))
    answer_key, answer_question = key_of_answer(answer_packet(4711))
    assert answer_key == key
    first = log.take(answer_key, answer_question, 1.0)
    assert first is not None and not first.answered
    again = log.take(answer_key, answer_question, 1.5)
    assert again is not None and again.answered, "a second answer is a duplicate"


@pytest.mark.parametrize(
    ("qid", "name", "dport"),
    [
        (4712, "api.example.org", 41000),
        (4711, "evil.example.org", 41000),
        (4711, "api.example.org", 41001),
    ],
    ids=["other id", "other question", "other port"],
)
def test_an_answer_differing_in_id_question_or_port_matches_nothing(
    qid: int, name: str, dport: int
) -> None:
    log = QueryLog()
    key, _ = key_of_query(query_packet(4711))
    log.record(key, asked())
    assert log.take(*key_of_answer(answer_packet(qid, name, dport)), 1.0) is None
    assert log.take(*key_of_answer(answer_packet(4711)), 1.0) is not None, "still waiting"


def test_a_query_is_forgotten_after_max_age() -> None:
    log = QueryLog(max_age=30.0)
    key, _ = key_of_query(query_packet(1))
    log.record(key, asked(at=0.0))
    assert log.take(*key_of_answer(answer_packet(1)), 30.5) is None


def test_a_user_flooding_queries_pushes_out_only_their_own() -> None:
    log = QueryLog(max_total=100, max_per_uid=10)
    victim, _ = key_of_query(query_packet(1, sport=5000))
    log.record(victim, asked(uid=1000))
    for i in range(1000):
        key, _ = key_of_query(query_packet(i, sport=10000 + i))
        log.record(key, asked(uid=1001))
    assert len(log) == 11 and log.pushed_out == 990
    assert log.take(victim, API, 1.0) is not None


def test_the_log_is_bounded_in_total() -> None:
    log = QueryLog(max_total=50, max_per_uid=50)
    for i in range(500):
        key, _ = key_of_query(query_packet(i, sport=10000 + i))
        log.record(key, asked(uid=1000 + i))
    assert len(log) == 50


# -- the resolvers --------------------------------------------------------------------------


def test_resolv_conf_nameservers_are_read_and_the_rest_skipped() -> None:
    text = (
        "# generated\nsearch example.org\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\n"
        "nameserver not-an-address\noptions edns0\n nameserver 2001:db8::53\n"
    )
    assert parse_resolv_conf(text) == {
        ip_address("192.0.2.53"),
        ip_address("fe80::1"),
        ip_address("2001:db8::53"),
    }


def test_resolved_dns_property_values_are_read() -> None:
    dns_ = [(0, 2, b"\xc0\x00\x02\x35"), (3, 10, IPv6Address("2001:db8::53").packed)]
    dns_ex = [(0, 2, b"\xc6\x33\x64\x35", 53, "dns.example.net"), (0, 2, b"\x01", 53, "")]
    assert parse_resolved_servers(dns_) == {ip_address("192.0.2.53"), ip_address("2001:db8::53")}
    assert parse_resolved_servers(dns_ex) == {ip_address("198.51.100.53")}


def test_network_manager_configuration_is_read() -> None:
    config = [
        {"nameservers": Variant("as", ["192.0.2.53", "bad"]), "interface": Variant("s", "eth0")},
        {"interface": Variant("s", "wg0")},
    ]
    assert parse_nm_configuration(config) == {ip_address("192.0.2.53")}


def test_system_means_resolv_conf_and_the_local_stubs(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.2\n")
    resolvers = Resolvers(("system", "198.51.100.53"), str(conf))
    assert resolvers.addresses == LOCAL_STUBS | {
        ip_address("192.0.2.2"),
        ip_address("198.51.100.53"),
    }
    assert resolvers.trusts(ip_address("127.0.0.53")) and resolvers.trusts(ip_address("::1"))
    assert not resolvers.trusts(ip_address("203.0.113.66"))


def test_without_system_only_the_listed_servers_count(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.2\n")
    resolvers = Resolvers(("198.51.100.53",), str(conf))
    assert resolvers.addresses == {ip_address("198.51.100.53")}


def test_a_rewritten_resolv_conf_is_read_again_an_unchanged_one_is_not(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.2\n")
    resolvers = Resolvers(("system",), str(conf))
    assert not resolvers.check_file()
    replacement = tmp_path / "new"
    replacement.write_text("nameserver 198.51.100.2\n")
    replacement.replace(conf)  # a new inode, as resolvconf and NetworkManager write it
    assert resolvers.check_file()
    assert resolvers.trusts(ip_address("198.51.100.2"))
    assert not resolvers.trusts(ip_address("192.0.2.2"))
