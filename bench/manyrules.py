"""A large rule set for the bench: mostly rules of other apps, plus the client's allow rule.

Shared by connbench.py (configuration "snitch, 100k rules", written straight into the SQLite
store before snitchd starts) and bench_micro.py (RuleSet.match). The mix, for n = 100,000:

- the load client's own rules: `allow app=CLIENT` and 70 narrower deny rules for other
  destinations (addresses, /29 networks of 198.51.100.0/24, ports) that a flow to the load
  server must be checked against first;
- 2,700 rules for every app: 2,000 for single addresses (203.0.113.x with a port), 500 for
  single UDP ports, 200 for /29 networks with a port range (6 or 7 on each network);
- the rest for ~9,700 other apps, 10 each: addresses, ports, networks, host names.

Nothing in it matches a flow from the client to 192.0.2.2:9000 except the allow rule, and no
rule names 192.0.2.0/24, so the rules cannot change the other configurations' results.
"""

import itertools

OWN_EXTRA = 70
ANY_ADDR, ANY_PORT, ANY_REST = 2000, 500, 200


def other_app(i):
    return f"/usr/lib/bench/app{i:05d}/bin/app{i:05d}"


def _own(exe):
    yield f"allow app={exe}"
    for k in range(OWN_EXTRA):
        kind = k % 3
        if kind == 0:
            yield f"deny app={exe} to=203.0.113.{k} port={1000 + k} proto=tcp"
        elif kind == 1:
            yield f"deny app={exe} to=198.51.100.{(k * 8) % 256}/29"
        else:
            yield f"reject app={exe} port={2000 + k} proto=udp"


def _any_app():
    for k in range(ANY_ADDR):
        yield f"deny to=203.0.113.{k % 256} port={1 + k // 256}"
    for k in range(ANY_PORT):
        yield f"deny port={20000 + k} proto=udp"
    for k in range(ANY_REST):
        net = f"198.51.100.{(k % 32) * 8}/29"
        yield f"reject to={net} port={100 + k}-{200 + k} proto=tcp"


def _apps():
    for i in itertools.count():
        exe = other_app(i)
        yield f"allow app={exe} to=203.0.113.{i % 256} port=443 proto=tcp"
        yield f"allow app={exe} to=198.51.100.{i % 256} port=53 proto=udp"
        yield f"deny app={exe} to=198.51.100.{(i % 32) * 8}/29"
        yield f"allow app={exe} port=80 proto=tcp"
        yield f"allow app={exe} port={1024 + i % 60000}"
        yield f"deny app={exe} to=203.0.113.0/24 port=8000-8999"
        yield f"allow app={exe} to=api{i}.example.com port=443"
        yield f"allow app={exe} to=*.cdn{i % 100}.example.net"
        yield f"deny app={exe} to=203.0.113.{(i * 7) % 256} proto=icmp"
        yield f"allow app={exe} user={1000 + i % 50} to=198.51.100.128/25 port=5000-5999"


def rule_texts(n, exe):
    """`n` rule texts (n >= 2,771), the client's allow rule first."""
    head = list(itertools.chain(_own(exe), _any_app()))
    if n < len(head):
        raise ValueError(f"at least {len(head)} rules")
    return head + list(itertools.islice(_apps(), n - len(head)))
