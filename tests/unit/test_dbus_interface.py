"""The D-Bus interfaces are an API: docs/org.snitch.Firewall1.xml pins them.

A change to a method's name or signature must be a deliberate change of that file (clients,
agents and the notifier depend on it), so this test compares the introspection of the real
service classes with the committed document.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from snitch_common.agent import AgentService
from snitch_common.bus import MAX_LOG_ROWS, MAX_RULES_PAGE, MAX_TOP_APPS
from snitchd.api import FirewallService

DOC = Path(__file__).resolve().parents[2] / "docs" / "org.snitch.Firewall1.xml"
HEADER = (
    "<!-- snitch's D-Bus API, generated from the service classes and pinned by\n"
    "     tests/unit/test_dbus_interface.py. org.snitch.Firewall1 is served by snitchd at\n"
    "     /org/snitch/Firewall1 on the system bus; org.snitch.Agent1 is served by each agent\n"
    "     (snitchctl agent, snitch-notifier) at /org/snitch/Agent1 on its own connection.\n"
    "     Monitor() subscribes the caller to the signal Decision(a{sv}), sent to it alone;\n"
    "     MonitorRates() to Rates(s), per-app rates as JSON about once a second. Traffic and\n"
    "     Apps read the per-app rollups (period 1h, 24h, 7d or 30d; at most 180 points a\n"
    "     series, the 20 busiest apps, 1000 apps) and answer JSON as Log does.\n"
    "     Replies are capped (snitch_common/bus.py): Log gives at most 1000 rows a call (page\n"
    "     back with before=<oldest id>), ListRules at most 1000 rules (page with offset and\n"
    "     limit), Top the 1000 apps with the most traffic. Log, Top, ListRules, Traffic and Apps\n"
    "     run one at a time per caller (connection and uid): a second is refused with\n"
    "     Error.Busy. They answer JSON (one string), not aa{sv}: marshalling 1000 a{sv} rows cost\n"
    "     the packet loop ~7 ms idle and ~100 ms under load.\n"
    "     DeferPrompt(prompt_id) holds one of the caller's prompts (only the agent it was sent\n"
    "     to may) up to prompt_hold_max after it was asked, and returns the seconds left.\n"
    "     AnswerPrompt also takes a prompt of the caller that timed out: it makes the rule\n"
    "     only (not once), the flow got the default already. -->\n"
)


def current_xml() -> str:
    node = ET.Element("node")
    firewall = FirewallService(None, None, "")  # type: ignore[arg-type]
    agent = AgentService(lambda p: None, lambda i, r: None)
    for service in (firewall, agent):
        node.append(service.introspect().to_xml())
    ET.indent(node)
    return HEADER + ET.tostring(node, encoding="unicode") + "\n"


def test_interfaces_match_the_committed_document() -> None:
    assert DOC.read_text() == current_xml(), (
        "the D-Bus API changed; if that is intended, write current_xml() to " + str(DOC)
    )


def test_the_documented_caps_are_the_code_s() -> None:
    """The header above states the caps in words; they must be the ones snitchd applies."""
    assert MAX_LOG_ROWS == MAX_RULES_PAGE == MAX_TOP_APPS == 1000


def test_the_members_clients_use_exist() -> None:
    """snitchctl, the terminal agent and the notifier call these by name."""
    xml = current_xml()
    for member in (
        "Apps",
        "MonitorRates",
        "Traffic",
        "AddRule",
        "DeleteRule",
        "ListRules",
        "Explain",
        "Status",
        "Log",
        "Top",
        "Monitor",
        "RegisterAgent",
        "RegisterAgentWith",
        "AnswerPrompt",
        "DeferPrompt",
        "ListPrompts",
        "Prompt",
        "Cancel",
        "Alert",
    ):
        assert f'name="{member}"' in xml
