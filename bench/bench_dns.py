"""What DNS snooping costs: `parse_dns_packet` per answer, `NameCache` lookups per packet.

Answers are real DNS messages made by dnspython behind hand-built IPv4/UDP and IPv4/TCP headers.
Prints figures, asserts nothing. No root needed: python -m bench.bench_dns
"""

import statistics
import timeit
from ipaddress import IPv4Address

import dns.message
import dns.rrset

from snitchd.dnssnoop import Resolution, parse_dns_packet
from snitchd.names import NameCache
from tests.support import packets
from tests.support.packets import framed, ipv4

ADDR = IPv4Address("203.0.113.7")


def udp(payload):
    return packets.udp(53, 41000, payload)


def tcp(payload):
    return packets.tcp(53, 41000, payload, flags=0x18)


def response(qname, records, rdtype="A"):
    message = dns.message.make_response(dns.message.make_query(qname, rdtype, use_edns=0))
    for owner, ttl, kind, value in records:
        message.answer.append(dns.rrset.from_text(owner, ttl, "IN", kind, value))
    return message.to_wire(max_size=65535)


def per_call_us(func, number):
    runs = timeit.repeat(func, number=number, repeat=5)
    return min(runs) / number * 1e6, statistics.median(runs) / number * 1e6


def main():
    answers = {
        "A, 1 record": response("api.example.org", [("api.example.org.", 300, "A", str(ADDR))]),
        "CNAME + 2 A (typical CDN)": response(
            "www.example.org",
            [
                ("www.example.org.", 3600, "CNAME", "cdn.example.net."),
                ("cdn.example.net.", 60, "A", "203.0.113.7"),
                ("cdn.example.net.", 60, "A", "203.0.113.8"),
            ],
        ),
        "2 CNAME + 8 AAAA": response(
            "www.example.org",
            [
                ("www.example.org.", 300, "CNAME", "a.example.net."),
                ("a.example.net.", 300, "CNAME", "b.example.com."),
                *[("b.example.com.", 60, "AAAA", f"2001:db8::{i}") for i in range(1, 9)],
            ],
            "AAAA",
        ),
    }
    # The largest answer whose records are read (MAX_ANSWER_BYTES): what any user's own domain
    # can have the system's resolver send, at the rate the user looks it up.
    answers["252 A (4 KiB, the largest read)"] = response(
        "big.example.org",
        [("big.example.org.", 60, "A", f"203.0.{i // 250}.{i % 250}") for i in range(252)],
    )
    nx = dns.message.make_response(dns.message.make_query("nope.example.org", "A", use_edns=0))
    nx.set_rcode(3)
    answers["NXDOMAIN"] = nx.to_wire()

    print("parse_dns_packet, µs per answer (best of 5 / median of 5):")
    for label, wire in answers.items():
        for transport, packet in (
            ("udp", ipv4(17, udp(wire))),
            ("tcp", ipv4(6, tcp(framed(wire)))),
        ):
            best, median = per_call_us(lambda p=packet: parse_dns_packet(p), 2000)
            print(f"  {label:32} {transport} {len(packet):4} B  {best:7.1f} / {median:7.1f}")
        best, median = per_call_us(lambda w=wire: dns.message.from_wire(w, keyring=False), 200)
        print(f"  {'  dnspython from_wire (baseline)':32}          {best:7.1f} / {median:7.1f}")

    cache = NameCache()
    now = 1000.0
    for i in range(100_000):
        address = IPv4Address(0xC6336400 + i)  # 198.51.100.0 onwards
        cache.learn([Resolution((f"h{i}.example.org", "cdn.example.net"), address, 300)], now)
    typical = parse_dns_packet(ipv4(17, udp(answers["CNAME + 2 A (typical CDN)"])))
    cache.learn(typical, now)
    hit, miss = typical[0].address, IPv4Address("192.0.2.99")
    print(f"\nNameCache with {len(cache)} addresses (the default bound), µs per call:")
    rows = [
        ("names(), known address", lambda: cache.names(hit, now + 1), 200_000),
        ("names(), unknown address", lambda: cache.names(miss, now + 1), 200_000),
        ("best(), known address", lambda: cache.best(hit, now + 1), 200_000),
        ("learn(), typical answer", lambda: cache.learn(typical, now + 2), 50_000),
        ("IPv4Address(bytes) (for scale)", lambda: IPv4Address(b"\xcb\x00\x71\x07"), 200_000),
    ]
    for label, func, number in rows:
        best, median = per_call_us(func, number)
        print(f"  {label:32} {best:6.3f} / {median:6.3f}")


if __name__ == "__main__":
    main()
