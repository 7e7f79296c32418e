"""Names in answers and in `explain` (issue 15), with real programs resolving through the lab's
DNS server and a real snitchd.

A host answer names only a name the asking process itself resolved: a name another program looked
up (root's names are everyone's, as a system service's) is shown, but "forever, this host" stores
the address. `snitchctl explain --dst NAME` answers with the names and the decision code the
packet path uses, so it says what the live flow got.
"""

from __future__ import annotations

import asyncio

from conftest import Lab, python_exe, run_netclient
from snitch_common.choices import scope_options
from tests.integration.scriptagent import ScriptedAgent

DNS_RULE = "allow port=53 proto=udp"


def rule_text(lab: Lab, rule_id: int) -> str:
    return next(r["text"] for r in lab.ctl_json("list-rules") if r["id"] == rule_id)


async def test_host_answer_names_the_address_another_program_resolved(
    running: Lab, agent: ScriptedAgent
) -> None:
    """`ssh 203.0.113.8` after wget resolved www.example.org to it: the prompt shows the name
    (it is everyone's: root resolved it) but offers only the address, and "forever, this
    host" stores to=203.0.113.8, which does not stop matching when the name expires."""
    running.add_rule(DNS_RULE)
    running.add_rule("allow to=203.0.113.8 port=80")
    assert await run_netclient(running, "resolve", "www.example.org", "80") == "connected"
    ssh = asyncio.ensure_future(
        run_netclient(running, "tcp", "203.0.113.8", "22", "--timeout", "10")
    )
    prompt = await asyncio.wait_for(agent.prompts.get(), 10)
    assert prompt.dst == "203.0.113.8" and prompt.host == "www.example.org"
    assert prompt.rule_host is None
    labels = " ".join(o.label for o in scope_options(prompt, "ssh"))
    assert "example.org" not in labels and "203.0.113.8" in labels
    rule_id = await agent.answer(prompt, "allow", "forever", "host")
    assert await ssh == "connected"
    assert rule_text(running, rule_id).endswith(" to=203.0.113.8")


async def test_host_answer_names_what_the_process_itself_resolved(
    running: Lab, agent: ScriptedAgent
) -> None:
    running.add_rule(DNS_RULE)
    client = asyncio.ensure_future(
        run_netclient(running, "resolve", "api.example.org", "22", "--timeout", "10")
    )
    prompt = await asyncio.wait_for(agent.prompts.get(), 10)
    assert (prompt.dst, prompt.host, prompt.rule_host) == (
        "203.0.113.7",
        "api.example.org",
        "api.example.org",
    )
    rule_id = await agent.answer(prompt, "allow", "forever", "host")
    assert await client == "connected"
    assert rule_text(running, rule_id).endswith(" to=api.example.org")


def test_explain_equals_the_live_verdict_for_host_and_domain_rules(running: Lab) -> None:
    """The log shows a flow allowed by a host rule and one denied by a domain rule; explain,
    given the name or the address, names the same rule and verdict (it said "no matching
    rule" before, and refused --dst NAME)."""
    running.add_rule(DNS_RULE)
    host_rule = running.add_rule(f"allow app={python_exe()} to=api.example.org port=80")
    domain_rule = running.add_rule("deny to=*.example.org")
    assert running.py("resolve", "api.example.org", 80) == "connected"
    assert running.py("resolve", "www.example.org", 80, "--timeout", "1") == "timeout"
    rows = {r["dst"]: r for r in running.log_rows() if r["dport"] == 80}
    assert (rows["203.0.113.7"]["rule_id"], rows["203.0.113.7"]["action"]) == (host_rule, "allow")
    assert (rows["203.0.113.8"]["rule_id"], rows["203.0.113.8"]["action"]) == (domain_rule, "deny")
    who = ["--exe", python_exe(), "--uid", "0", "--port", "80"]
    for dst, address in [
        ("api.example.org", "203.0.113.7"),
        ("203.0.113.7", "203.0.113.7"),
        ("www.example.org", "203.0.113.8"),
        ("203.0.113.8", "203.0.113.8"),
    ]:
        explained = running.ctl_json("explain", "--dst", dst, *who)
        row = rows[address]
        assert (explained["winner"], explained["verdict"]) == (row["rule_id"], row["action"]), dst
        assert explained["dst"] == address
    text = running.ctl("explain", "--dst", "www.example.org", *who).stdout
    assert f"verdict: deny (rule {domain_rule} wins)" in text
    assert "names: cdn.example.net, www.example.org" in text
    unknown = running.ctl("explain", "--dst", "nowhere.example.org", *who)
    assert unknown.returncode != 0 and "no address is known" in unknown.stderr
