"""The packet path end to end: real kernel, real clients, a real snitchd in a namespace.

Each test asserts what the client saw (connected, refused, timed out) and what snitch recorded
(the connection log row with the right exe and verdict).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from conftest import JOIN_GROUPS, PYTHON, Lab, curl_exe, python_exe, rows_like
from tests.integration.readerparams import READERS
from tests.integration.test_socket_match import PINNED


@pytest.fixture(params=READERS)
def on_readers(lab: Lab, request: pytest.FixtureRequest) -> Lab:
    """snitchd reading its one queue itself, or two queue reader processes (issue 21)."""
    lab.start_daemon(queue_readers=request.param)
    return lab


def _rows_for(lab: Lab, dport: int, dst: str) -> list[dict[str, object]]:
    return [r for r in lab.log_rows() if r["dport"] == dport and r["dst"] == dst]


def test_tcp_allowed_connects_and_is_logged(on_readers: Lab) -> None:
    """An allow rule for the program lets its connection through, and the log names it."""
    running = on_readers
    rule_id = running.add_rule(f"allow app={python_exe()} to=192.0.2.2 port=80 proto=tcp")
    assert running.py("tcp", "192.0.2.2", 80) == "connected"
    rows = _rows_for(running, 80, "192.0.2.2")
    assert rows, "no log row for the connection"
    assert rows[-1]["exe"] == python_exe()
    assert rows[-1]["action"] == "allow"
    assert rows[-1]["rule_id"] == rule_id
    assert rows[-1]["proto"] == "tcp"
    assert rows[-1]["iface"] == "veth0"


def test_tcp_denied_by_default_times_out(running: Lab) -> None:
    """With default_action deny and no rule, the SYN is dropped: the client times out."""
    start = time.monotonic()
    assert running.py("tcp", "192.0.2.2", 9000, "--timeout", "1.5") == "timeout"
    assert time.monotonic() - start >= 1.4
    rows = _rows_for(running, 9000, "192.0.2.2")
    assert rows and all(r["action"] == "deny" for r in rows)
    assert rows[0]["exe"] == python_exe()
    assert "rule_id" not in rows[0]


def test_tcp_rejected_is_refused_fast(running: Lab) -> None:
    """Reject answers with a TCP RST: the program fails at once instead of timing out."""
    running.add_rule(f"reject app={python_exe()} port=9000")
    word, seconds = running.py("tcp", "192.0.2.2", 9000, "--timeout", "5", "--time").split()
    assert word == "refused"
    assert float(seconds) < 0.5
    assert _rows_for(running, 9000, "192.0.2.2")[-1]["action"] == "reject"


def test_udp_allowed_denied_and_rejected(running: Lab) -> None:
    running.add_rule("allow port=53 proto=udp")
    running.add_rule("reject to=192.0.2.2 port=9000 proto=udp")
    assert running.py("udp", "192.0.2.2", 53) == "reply"
    assert running.py("udp", "198.51.100.2", 9000, "--timeout", "1") == "timeout"
    assert running.py("udp", "192.0.2.2", 9000) == "refused"
    assert _rows_for(running, 53, "192.0.2.2")[-1]["action"] == "allow"
    assert _rows_for(running, 9000, "198.51.100.2")[-1]["action"] == "deny"


def test_ipv6_tcp_and_udp(running: Lab) -> None:
    running.add_rule("allow to=2001:db8:1::/64 port=80")
    assert running.py("tcp", "2001:db8:1::2", 80) == "connected"
    assert running.py("udp", "2001:db8:1::2", 9000, "--timeout", "1") == "timeout"
    running.add_rule("allow to=2001:db8:1::2 port=9000 proto=udp")
    assert running.py("udp", "2001:db8:1::2", 9000) == "reply"
    assert running.py("tcp", "2001:db8:1::2", 443, "--timeout", "1") == "timeout"
    running.add_rule("reject to=2001:db8:1::2 port=443")
    assert running.py("tcp", "2001:db8:1::2", 443) == "refused"
    rows = _rows_for(running, 80, "2001:db8:1::2")
    assert {r["action"] for r in rows if r["proto"] == "tcp"} == {"allow"}
    assert rows[0]["exe"] == python_exe()


def test_icmp_ping_denied_then_allowed(running: Lab) -> None:
    ping4 = ("ping", "-c", "1", "-W", "1", "192.0.2.2")
    ping6 = ("ping", "-6", "-c", "1", "-W", "1", "2001:db8:1::2")
    assert "1 received" not in running.client_run(*ping4)
    running.add_rule("allow to=192.0.2.2 proto=icmp")
    assert "1 received" in running.client_run(*ping4)
    assert "1 received" not in running.client_run(*ping6)
    rows = [r for r in running.log_rows() if r["proto"] == "icmp"]
    assert [r["action"] for r in rows if r["dst"] == "192.0.2.2"] == ["deny", "allow"]
    assert [r["action"] for r in rows if r["dst"] == "2001:db8:1::2"] == ["deny"]


def test_two_programs_same_destination_get_their_own_verdicts(running: Lab) -> None:
    """Attribution: curl is denied and Python allowed to the same place, by exe rules."""
    running.add_rule(f"allow app={python_exe()} to=192.0.2.2 port=80")
    running.add_rule(f"reject app={curl_exe()} to=192.0.2.2 port=80")
    assert running.curl("http://192.0.2.2:80/") == "refused"
    assert running.py("tcp", "192.0.2.2", 80) == "connected"
    rows = _rows_for(running, 80, "192.0.2.2")
    by_exe = {r.get("exe", r["attribution"]): r["action"] for r in rows}
    assert by_exe == {curl_exe(): "reject", python_exe(): "allow"}


def test_rule_added_while_running_applies_and_open_connection_survives(running: Lab) -> None:
    """A new rule applies to the next new flow; an established connection is not cut when the
    deny rule says keep-open=yes (without it, it is: tests/integration/test_rule_files.py)."""
    running.add_rule("allow port=80")
    with running.spawn_client("tcp", "192.0.2.2", "80", "--hold", "2.5") as holder:
        assert holder.stdout is not None
        try:
            assert holder.stdout.readline().strip() == "connected"
            running.add_rule("deny port=80 proto=tcp keep-open=yes")
            assert running.py("tcp", "192.0.2.2", 80, "--timeout", "1") == "timeout"
            assert holder.stdout.readline().strip() == "held"
        finally:
            holder.kill()


def test_ufw_policy_expressed_as_rules(running: Lab) -> None:
    """The SEED article's ufw policy: deny by default, allow out 53/udp, 80, 443/tcp."""
    for text in ("allow port=53 proto=udp", "allow port=80", "allow port=443 proto=tcp"):
        running.add_rule(text)
    assert running.py("udp", "192.0.2.2", 53) == "reply"
    assert running.py("tcp", "192.0.2.2", 53, "--timeout", "1") == "timeout"
    assert running.curl("http://192.0.2.2:80/") == "connected"
    assert running.py("tcp", "192.0.2.2", 80) == "connected"
    assert running.curl("http://192.0.2.2:443/") == "connected"
    assert running.py("tcp", "192.0.2.2", 8080, "--timeout", "1") == "timeout"


def test_ufw_policy_limited_to_one_interface(running: Lab) -> None:
    """`allow out on IFACE ...`: the same ports leaving by another interface are denied."""
    for text in ("allow port=80 iface=veth0", "allow port=443 proto=tcp iface=veth0"):
        running.add_rule(text)
    assert running.py("tcp", "192.0.2.2", 80) == "connected"
    assert running.py("tcp", "198.51.100.2", 80, "--timeout", "1") == "timeout"
    assert running.py("tcp", "203.0.113.7", 443, "--timeout", "1") == "timeout"
    rows = _rows_for(running, 80, "198.51.100.2")
    assert rows[-1]["action"] == "deny" and rows[-1]["iface"] == "veth1"


def test_unconnected_udp_sendto_is_attributed(running: Lab) -> None:
    """A plain sendto() socket shows in sock_diag with a wildcard peer; still the right exe."""
    running.add_rule(f"allow app={python_exe()} port=9000 proto=udp")
    assert running.py("sendto", "192.0.2.2", 9000) == "reply"
    rows = _rows_for(running, 9000, "192.0.2.2")
    assert rows[-1]["exe"] == python_exe() and rows[-1]["action"] == "allow"


def test_list_rules_pastes_back_into_add_rule(running: Lab) -> None:
    running.ctl(
        "add-rule",
        "--exe",
        "/usr/bin/curl",
        "--dst",
        "203.0.113.0/24",
        "--port",
        "8000-8999",
        "--proto",
        "tcp",
        "--action",
        "reject",
    )
    listed = running.ctl("list-rules")
    assert listed.returncode == 0
    rule_id, text = listed.stdout.strip().split(": ", 1)
    assert text == "reject app=/usr/bin/curl to=203.0.113.0/24 port=8000-8999 proto=tcp"
    assert running.ctl("delete-rule", rule_id).returncode == 0
    again = running.ctl("add-rule", text)
    assert again.returncode == 0 and again.stdout.strip().endswith(text)


def test_explain_names_the_winner(running: Lab) -> None:
    running.add_rule("allow port=443")
    winner = running.add_rule("deny app=/usr/bin/curl to=203.0.113.7")
    result = running.ctl_json(
        "explain", "--exe", "/usr/bin/curl", "--dst", "203.0.113.7", "--port", "443"
    )
    assert result["winner"] == winner and result["verdict"] == "deny"
    assert len(result["matches"]) == 2
    text = running.ctl(
        "explain", "--exe", "/usr/bin/curl", "--dst", "203.0.113.7", "--port", "443"
    ).stdout
    assert f"rule {winner} wins" in text and "most specific" in text


def test_kernel_rules_only_new_flows_and_removed_on_stop(running: Lab) -> None:
    """Our rules go at stop. The socket match's programs are pinned for them per network
    namespace (here in the BPF file system snitchd mounted in its own mount namespace, which
    `ip netns exec` made)."""
    saved = running.iptables_save()
    assert "--ctstate NEW -j NFQUEUE --queue-num 4242 --queue-bypass" in saved
    assert saved.count("-A OUTPUT -m comment --comment snitch") == 4  # mangle+filter, v4+v6
    pins = Path("/sys/fs/bpf/snitch") / str(os.stat(f"/run/netns/{running.client}").st_ino)
    assert f"--object-pinned {pins}/undecided" in saved
    assert running.daemon is not None
    seen = Path(f"/proc/{running.daemon.pid}/root") / pins.relative_to("/")
    assert sorted(p.name for p in seen.iterdir()) == sorted(PINNED)
    assert running.stop_daemon() == 0
    assert "snitch" not in running.iptables_save().lower()


def test_the_kernel_s_multicast_report_is_named_to_nobody(running: Lab) -> None:
    """A program that joins a multicast group makes the kernel send an IGMP report (IGMPv3:
    to 224.0.0.22), and an MLD report for an IPv6 group: packets of no socket, so of no
    process. The IGMP report is decided as the kernel's (`attribution` kernel, `proto` other),
    never as the program's, and a rule naming no app and proto=other answers it, as the README
    says (a bridge or VPN coming up sends the same reports). The MLD report is not queued."""
    rule_id = running.add_rule("allow to=224.0.0.22 proto=other")
    running.client_run(PYTHON, "-c", JOIN_GROUPS)
    rows = rows_like(running, 1, dst="224.0.0.22")
    assert rows, running.log_rows()
    assert {(r["attribution"], r["proto"], r["action"], r.get("rule_id")) for r in rows} == {
        ("kernel", "other", "allow", rule_id)
    }, rows
    assert all("exe" not in r for r in rows), rows
    # IPv6's MLD report (to ff02::16) left in the same second: conntrack leaves it untracked,
    # so it never reaches the queue.
    assert not [r for r in running.log_rows() if r["dst"].startswith("ff02:")]
