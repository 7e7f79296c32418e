"""Names and monitoring: DNS snooping, host and domain rules, the log by host, alerts, monitor.

The lab's DNS server (dnsserver.py, in the server namespace) answers an example.org zone with
documentation addresses; clients resolve, then connect, as real programs do.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PYTHON, VENV_BIN, Lab, Terminal, python_exe
from snitch_common.agent import AgentService, register
from snitch_common.client import Client

DNS_RULE = "allow port=53 proto=udp"


def resolve(lab: Lab, name: str, port: int = 80, timeout: str = "2") -> str:
    return lab.py("resolve", name, port, "--timeout", timeout)


def test_host_rule_matches_the_resolved_address(running: Lab) -> None:
    running.add_rule(DNS_RULE)
    running.add_rule("allow to=api.example.org port=80")
    assert resolve(running, "api.example.org") == "connected"
    assert running.py("tcp", "203.0.113.8", 80, "--timeout", "1") == "timeout"
    rows = [r for r in running.log_rows() if r["dport"] == 80]
    assert rows[0]["host"] == "api.example.org" and rows[0]["dst"] == "203.0.113.7"
    assert rows[0]["action"] == "allow"
    assert "host" not in rows[-1] and rows[-1]["action"] == "deny"
    by_host = running.log_rows(host="api.example.org")
    assert [r["dst"] for r in by_host] == ["203.0.113.7"]


def test_domain_rule_and_cname_chain(running: Lab) -> None:
    """www.example.org is a CNAME of cdn.example.net: a rule for *.example.org matches the
    address cdn.example.net resolved to, because the chain started at www.example.org."""
    running.add_rule(DNS_RULE)
    running.add_rule("allow to=*.example.org port=80")
    assert resolve(running, "www.example.org") == "connected"
    rows = [r for r in running.log_rows() if r["dport"] == 80]
    assert rows[-1]["dst"] == "203.0.113.8" and rows[-1]["action"] == "allow"
    assert rows[-1]["host"] == "www.example.org"
    assert [r["dst"] for r in running.log_rows(host="*.example.org")] == ["203.0.113.8"]


def test_expired_name_no_longer_labels_the_address(lab: Lab) -> None:
    """brief.example.org has a TTL of 1 s; with no grace, 2 s later its address is anonymous
    again and the host rule no longer matches."""
    lab.start_daemon(dns_grace=0)
    lab.add_rule(DNS_RULE)
    lab.add_rule("allow to=brief.example.org port=80")
    assert resolve(lab, "brief.example.org") == "connected"
    time.sleep(2.2)
    assert lab.py("tcp", "203.0.113.9", 80, "--timeout", "1") == "timeout"
    rows = [r for r in lab.log_rows() if r["dport"] == 80]
    assert rows[0]["host"] == "brief.example.org"
    assert "host" not in rows[-1] and rows[-1]["action"] == "deny"


def test_explain_and_prompt_speak_in_host_names(running: Lab) -> None:
    running.add_rule(DNS_RULE)
    running.add_rule("deny to=*.example.org")
    winner = running.add_rule(f"allow app={python_exe()} to=api.example.org port=80")
    assert resolve(running, "api.example.org") == "connected"
    rows = running.log_rows(host="api.example.org")
    assert rows[-1]["rule_id"] == winner


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payloads=st.lists(st.binary(min_size=0, max_size=600), min_size=40, max_size=40))
def test_malformed_dns_answers_do_not_hurt_snitchd(running: Lab, payloads: list[bytes]) -> None:
    """Garbage "answers" from port 53 reach the DNS queue; each is skipped and counted, the
    answers still arrive, and snitchd keeps deciding."""
    sender = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('192.0.2.2', 53))\n"
        "for line in sys.stdin:\n"
        "    s.sendto(bytes.fromhex(line.strip()), ('192.0.2.1', 5353))\n"
        "print('sent')\n"
    )
    before = running.ctl_json("status")["dns_skipped"]
    done = subprocess.run(
        ["ip", "netns", "exec", running.server, PYTHON, "-c", sender],
        input="\n".join(p.hex() for p in payloads) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.stdout.strip() == "sent", done.stderr
    deadline = time.monotonic() + 10
    while running.ctl_json("status")["dns_skipped"] < before + len(payloads):
        assert time.monotonic() < deadline, "the garbage answers were not all seen and skipped"
        time.sleep(0.1)
    running.add_rule(DNS_RULE)
    running.add_rule("allow to=api.example.org port=80")
    assert resolve(running, "api.example.org") == "connected"
    assert running.daemon is not None and running.daemon.poll() is None


async def test_alerts_reach_the_agent(running: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """An app's first connection, and an executable that no longer has the sha256 its rule
    pins, each raise an alert at the user's agent."""
    running.expect_log(r"alert exe-changed: ")
    assert running.bus is not None
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", running.bus.address)
    alerts: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    client = await Client.connect()
    try:
        await register(client, AgentService(lambda p: None, lambda i, r: None, alerts.put_nowait))
        running.add_rule(f"allow app={python_exe()} sha256={'0' * 64} port=80")
        running.add_rule("allow port=80")
        # Blocking here is fine: the alerts wait in the bus socket until the loop reads them.
        assert running.py("tcp", "192.0.2.2", 80) == "connected"
        got = [await asyncio.wait_for(alerts.get(), 10) for _ in range(2)]
        kinds = {a["kind"]: a for a in got}
        assert set(kinds) == {"new-app", "exe-changed"}
        assert kinds["new-app"]["exe"] == python_exe()
        assert "connects for the first time, to 192.0.2.2" in kinds["new-app"]["message"]
        assert "0" * 64 in kinds["exe-changed"]["message"]
    finally:
        client.close()


def test_rules_changed_outside_snitch_raise_an_alert(running: Lab) -> None:
    running.expect_log(r"alert rules-changed: ")
    running.add_rule("allow port=80")
    running.insert_rule_by_hand("allow port=4444")
    deadline = time.monotonic() + 10
    while "rules were changed outside snitch: 1 added" not in running.log_text():
        assert time.monotonic() < deadline, running.log_text()
        time.sleep(0.1)
    assert "allow port=4444" in [r["text"] for r in running.ctl_json("list-rules")]


def test_monitor_in_a_terminal_shows_live_connections(running: Lab) -> None:
    running.add_rule("allow port=80")
    terminal = Terminal([str(VENV_BIN / "snitchctl"), "monitor"], running.env)
    try:
        terminal.read_until(b"monitoring new connections")
        assert running.py("tcp", "192.0.2.2", 80) == "connected"
        text = terminal.read_until(b"192.0.2.2:80")
        line = next(ln for ln in text.splitlines() if "192.0.2.2:80" in ln)
        assert "allow" in line and python_exe() in line and "[rule " in line
    finally:
        terminal.close()


def test_top_shows_the_bytes_a_client_really_moved(running: Lab) -> None:
    """conntrack counts IP-layer bytes: the payload plus 40-80 header bytes per packet (IPv4
    and TCP with options). veth hands large GSO segments to conntrack, so the packet count is
    small and unknown: at least SYN, ACK and FIN, at most one per 536-byte segment. The reply
    is the 41-byte HTTP answer plus ACKs. The flow is ended with `conntrack -D` rather than by
    waiting out TIME_WAIT."""
    running.add_rule("allow port=8080")
    assert running.py("tcp", "192.0.2.2", 8080, "--send", "100000") == "sent 100000 received 41"
    running.ns(running.client, "conntrack", "-D", "-p", "tcp", "--dport", "8080")
    deadline = time.monotonic() + 10
    while True:
        top = {r["app"]: r for r in running.ctl_json("top")}
        row = top.get(python_exe())
        if row and row["bytes_out"]:
            break
        assert time.monotonic() < deadline, top
        time.sleep(0.2)
    assert 100_000 + 40 * 3 <= row["bytes_out"] <= 100_000 + 80 * 200
    assert 41 + 40 * 3 <= row["bytes_in"] <= 41 + 80 * 200
    assert row["connections"] == 1 and row["blocked"] == 0
    logged = [r for r in running.log_rows() if r["dport"] == 8080]
    assert logged[-1]["bytes_out"] == row["bytes_out"]
    assert "out," in running.ctl("log").stdout
