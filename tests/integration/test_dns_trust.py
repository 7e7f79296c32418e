"""Names only from real answers (issue 13): an answer names an address only if it comes from one
of the system's resolvers and replies to a query this machine sent, and only for the program
that asked.

The client namespace's resolv.conf (as snitchd reads it: `resolv_conf`) names the lab's DNS
server 192.0.2.2. The same server also answers on 198.51.100.2, which stands for a resolver of
a program's own choosing. Clients run as unprivileged users, as an attacker would.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import dns.message
import dns.rrset
import pytest

from conftest import AS_NOBODY, HERE, PYTHON, Lab
from tests.integration.readerparams import READERS
from tests.support.lab import wait_for

# Each test with one queue reader and with two (issue 21).
pytestmark = pytest.mark.parametrize("lab", READERS, indirect=True)

DNS_RULE = "allow port=53 proto=udp"


def as_user(uid: int) -> tuple[str, ...]:
    return ("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups")


def status(lab: Lab) -> dict[str, Any]:
    found: dict[str, Any] = lab.ctl_json("status")
    return found


def forged_answer(name: str, address: str) -> bytes:
    query = dns.message.make_query(name, "A")
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text(name + ".", 300, "IN", "A", address))
    return response.to_wire()


def test_an_unsolicited_answer_is_not_learnt_and_raises_an_alert(running: Lab) -> None:
    """A host on the network sends, from port 53 of the very resolver the client uses, an answer
    nobody asked for: evil.example.org is 203.0.113.8. Before issue 13 snitch learnt it, and
    `allow to=*.example.org` let a connection to 203.0.113.8 through, logged as
    evil.example.org."""
    running.expect_log(r"alert dns-spoofed: a DNS answer nobody on this machine asked for")
    running.add_rule(DNS_RULE)
    running.add_rule("allow to=*.example.org port=80")
    sender = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('192.0.2.2', 53))\n"
        "for port in (33000, 41000, 53000):\n"
        "    s.sendto(bytes.fromhex(sys.argv[1]), ('192.0.2.1', port))\n"
        "print('sent')\n"
    )
    wire = forged_answer("evil.example.org", "203.0.113.8").hex()
    done = running.ns(running.server, PYTHON, "-c", sender, wire)
    assert done.stdout.strip() == "sent", done.stderr
    # A real query and its answer come through the same queue after the forged ones: once it is
    # answered, the forged answers have been read.
    assert running.py("resolve", "api.example.org", 80) == "connected"
    assert running.client_run(*AS_NOBODY, PYTHON, str(HERE / "netclient.py"), "tcp",
                              "203.0.113.8", "80", "--timeout", "1") == "timeout"  # fmt: skip
    rows = [r for r in running.log_rows() if r["dport"] == 80]
    assert rows[-1]["dst"] == "203.0.113.8" and rows[-1]["action"] == "deny"
    assert "host" not in rows[-1]
    counted = status(running)
    assert counted["dns_unasked"] == 3 and counted["dns_answers"] == 1
    log = running.log_text()
    # Its records are not even read (hostile records held the loop): only what it answers.
    assert "an answer for evil.example.org claimed by 192.0.2.2" in log
    assert log.count("alert dns-spoofed") == 1, "three forged answers, one alert (rate-limited)"


def test_a_rogue_resolvers_answer_does_not_make_a_domain_rule_match(running: Lab) -> None:
    """A program asks a server of its own choosing (198.51.100.2, not in resolv.conf): the answer
    reaches the program, but names nothing for snitch, so `allow to=*.example.org` does not
    cover the connection; asked of the system's resolver, the same name does."""
    running.add_rule(DNS_RULE)
    running.add_rule("allow to=*.example.org port=80")
    client = (*AS_NOBODY, PYTHON, str(HERE / "netclient.py"), "resolve", "api.example.org", "80")
    # Under the SYN's first retransmission (1 s): with two readers, a retransmission leaving
    # from the other CPU as its socket closes is that reader's flow of a gone socket, another row.
    rogue = running.client_run(*client, "--server", "198.51.100.2", "--timeout", "0.6")
    assert rogue == "timeout", "the answer arrived, the connection was not allowed"
    assert status(running)["dns_untrusted"] >= 1
    assert running.client_run(*client, "--timeout", "2") == "connected"
    rows = [r for r in running.log_rows() if r["dport"] == 80]
    assert [r["action"] for r in rows] == ["deny", "allow"]
    assert "host" not in rows[0] and rows[1]["host"] == "api.example.org"
    assert "claimed by 198.51.100.2 (not one of the system's resolvers)" in running.log_text()


def test_two_programs_of_two_users_each_get_their_own_names(running: Lab) -> None:
    """api.example.org and other.example.net are both 203.0.113.7. User 1001 resolves the first
    and waits; user 1002 resolves the second and connects; then 1001 connects. Each row carries
    the name its own program asked for (before issue 13 the most recent answer labelled both),
    and user 1003, who resolved nothing, gets the bare address."""
    running.add_rule(DNS_RULE)
    running.add_rule("allow port=80")
    with subprocess.Popen(
        ["ip", "netns", "exec", running.client, *as_user(1001), PYTHON,
         str(HERE / "netclient.py"), "resolve", "api.example.org", "80", "--pause"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as first:  # fmt: skip
        try:
            assert first.stdout is not None and first.stdin is not None
            assert first.stdout.readline().strip() == "resolved"
            second = running.client_run(*as_user(1002), PYTHON, str(HERE / "netclient.py"),
                                        "resolve", "other.example.net", "80")  # fmt: skip
            assert second == "connected"
            first.stdin.write("go\n")
            first.stdin.flush()
            assert first.stdout.readline().strip() == "connected"
        finally:
            first.kill()
    third = running.client_run(*as_user(1003), PYTHON, str(HERE / "netclient.py"), "tcp",
                               "203.0.113.7", "80")  # fmt: skip
    assert third == "connected"
    rows = {r["uid"]: r for r in running.log_rows() if r["dport"] == 80}
    assert rows[1001]["host"] == "api.example.org"
    assert rows[1002]["host"] == "other.example.net"
    assert "host" not in rows[1003]
    assert all(r["dst"] == "203.0.113.7" for r in rows.values())


# A DNS client on a shared port (SO_REUSEADDR). "asker": a connected socket asks the lab's
# server for www.example.org, prints "asked", waits for a line, asks for api.example.org (its
# socket decided by now: the query passes in the kernel), then connects to the answer's address
# on port 80 and prints "connected ADDRESS". "joiner": one query from an unconnected socket.
SHARED_PORT_DNS = """
import socket, sys
import dns.message
port, role = int(sys.argv[1]), sys.argv[2]
server = ("192.0.2.2", 53)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.settimeout(5)
if role == "joiner":
    s.sendto(dns.message.make_query("www.example.org", "A", id=77).to_wire(), server)
    print("sent", flush=True)
    sys.exit()
s.connect(server)
def ask(qid, name):
    s.send(dns.message.make_query(name, "A", id=qid).to_wire())
    while True:  # the joiner's answer comes here too: ours is the better match
        answer = dns.message.from_wire(s.recv(512))
        if answer.id == qid:
            return next(r.address for rrset in answer.answer for r in rrset if r.rdtype == 1)
ask(1, "www.example.org")
print("asked", flush=True)
sys.stdin.readline()
address = ask(2, "api.example.org")
with socket.create_connection((address, 80), timeout=5):
    print("connected", address, flush=True)
"""


def test_a_user_s_query_on_a_resolver_s_port_does_not_take_its_names(running: Lab) -> None:
    """A query copied to the DNS queue is named by its tuple, as a queued flow is, but the
    socket match's note of the flow's last queued datagram (which names a flow-queue packet's
    socket) is not for it: root's decided socket sends its queries without the flow queue.
    Read anyway, uid 65534's one query on root's port took root's next query as its own, and
    root's connect to the name it resolved went out without the name."""
    running.add_rule(DNS_RULE)
    running.add_rule("allow port=80")
    port = 47011
    argv = ["ip", "netns", "exec", running.client, PYTHON, "-c", SHARED_PORT_DNS, str(port)]
    with subprocess.Popen(
        [*argv, "asker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as asker:
        try:
            assert asker.stdout is not None and asker.stdin is not None
            assert asker.stdout.readline().strip() == "asked"
            joined = running.client_run(*AS_NOBODY, *argv[4:], "joiner")
            assert joined == "sent"
            wait_for(
                lambda: any(r["uid"] == 65534 for r in running.log_rows() if r["dport"] == 53),
                10,
                "the joiner's query decided",
            )
            asker.stdin.write("\n")
            asker.stdin.flush()
            assert asker.stdout.readline().split() == ["connected", "203.0.113.7"]
        finally:
            asker.kill()
    rows = [r for r in running.log_rows() if r["dport"] == 80]
    assert [(r["uid"], r.get("host")) for r in rows] == [(0, "api.example.org")]


def test_resolv_conf_is_followed_as_it_changes(running: Lab) -> None:
    """DHCP or a VPN rewrites resolv.conf: a server it now names is believed, without a reload."""
    running.add_rule(DNS_RULE)
    running.add_rule("allow to=*.example.org port=80")
    client = (*AS_NOBODY, PYTHON, str(HERE / "netclient.py"), "resolve", "api.example.org", "80")
    assert running.client_run(*client, "--server", "198.51.100.2", "--timeout", "1") == "timeout"
    before = status(running)["dns_resolvers"]
    running.resolv_conf.write_text("# rewritten by a VPN\nnameserver 198.51.100.2\n")
    deadline = time.monotonic() + 10
    while "dns resolvers from file: 198.51.100.2" not in running.log_text():
        assert time.monotonic() < deadline, running.log_text()
        time.sleep(0.1)
    assert status(running)["dns_resolvers"] == before  # 192.0.2.2 went, 198.51.100.2 came
    assert running.client_run(*client, "--server", "198.51.100.2") == "connected"
