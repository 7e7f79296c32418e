"""A small authoritative DNS server for the server namespace (dnspython), UDP port 53.

Zone (documentation addresses only):
  api.example.org      A     203.0.113.7
  www.example.org      CNAME cdn.example.net
  cdn.example.net      A     203.0.113.8
  brief.example.org    A     203.0.113.9   (TTL 1)
  v6.example.org       AAAA  2001:db8:1::2
  other.example.net    A     203.0.113.7   (a second name of api.example.org's address)
Anything that is not a DNS query is echoed back, so plain UDP tests can use port 53 too.
Prints "ready" once it listens.
"""

import socket

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

ZONE = {
    ("api.example.org.", "A"): [("A", "203.0.113.7", 300)],
    ("www.example.org.", "A"): [("CNAME", "cdn.example.net.", 300), ("A", "203.0.113.8", 300)],
    ("brief.example.org.", "A"): [("A", "203.0.113.9", 1)],
    ("v6.example.org.", "AAAA"): [("AAAA", "2001:db8:1::2", 300)],
    ("other.example.net.", "A"): [("A", "203.0.113.7", 300)],
}


def answer(query: dns.message.Message) -> dns.message.Message:
    response = dns.message.make_response(query)
    question = query.question[0]
    qname = question.name.to_text().lower()
    records = ZONE.get((qname, dns.rdatatype.to_text(question.rdtype)))
    if records is None:
        response.set_rcode(dns.rcode.NXDOMAIN)
        return response
    owner = qname
    for rtype, value, ttl in records:
        response.answer.append(dns.rrset.from_text(owner, ttl, "IN", rtype, value))
        if rtype == "CNAME":
            owner = value
    return response


def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # Tests also send forged "answers" from port 53 of this namespace.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", 53))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            reply = answer(dns.message.from_wire(data)).to_wire()
        except Exception:
            reply = data  # not DNS: echo, like the plain UDP test server
        sock.sendto(reply, peer)


if __name__ == "__main__":
    main()
