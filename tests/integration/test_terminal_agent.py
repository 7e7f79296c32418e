"""The terminal agent (`snitchctl agent` on a pseudo-terminal) against a real snitchd: what it
offers for a prompt, and that a prompt whose answer snitchd refused stays to be answered again
(snitchd still holds it: before, the agent dropped it and the flow waited for the default)."""

from __future__ import annotations

import threading

from conftest import JOIN_GROUPS, PYTHON, VENV_BIN, Lab, Terminal, bare_reason


def test_an_answer_snitchd_refuses_leaves_the_prompt_to_answer_again(lab: Lab) -> None:
    """ "Until the app quits" for "any app" names no app for the rule to end with (a refusal
    of the pair, which the agent does not foresee): snitchd refuses it and holds the prompt,
    the agent shows it again, and `a once` lets the same connection out."""
    lab.start_daemon(prompt_timeout=20)
    terminal = Terminal([str(VENV_BIN / "snitchctl"), "agent"], lab.env)
    try:
        terminal.read_until(b"waiting for prompts")
        with lab.spawn_client("tcp", "192.0.2.2", "443", "--timeout", "20") as proc:
            terminal.read_until(b"answer> ")
            terminal.type("a process anyapp\n")
            text = terminal.read_until(b"answer it again")
            assert "not answered: 'until the app quits' needs a rule naming the app" in text, text
            terminal.read_until(b"answer> ", timeout=5)
            terminal.type("a once\n")
            terminal.read_until(b"once, no rule")
            out, _ = proc.communicate(timeout=20)
        assert out.strip() == "connected"
        assert lab.ctl_json("list-rules") == []
        rows = [r for r in lab.log_rows() if r["dport"] == 443]
        assert [(r["action"], bare_reason(r)) for r in rows] == [("allow", "answered once")]
    finally:
        terminal.close()


def test_a_prompt_of_no_known_app_offers_its_destination_only(lab: Lab) -> None:
    """The kernel's IGMP report (a program joined a group) comes to the admin's terminal: the
    help lists no scope that widens from the app, and typing one is refused there and then,
    as the popup greys them (snitchd refuses them too: test_prompts.py)."""
    lab.start_daemon(prompt_timeout=20)
    terminal = Terminal([str(VENV_BIN / "snitchctl"), "agent"], lab.env)
    joiner = threading.Thread(target=lab.client_run, args=(PYTHON, "-c", JOIN_GROUPS))
    try:
        terminal.read_until(b"waiting for prompts")
        joiner.start()
        text = terminal.read_until(b"answer> ")
        assert "app       kernel" in text and "224.0.0.22" in text, text
        assert "[exact|anyapp]" in text, text
        assert "no app is known for this connection" in text, text
        terminal.type("a forever app\n")
        terminal.read_until(b"scope 'app': no app is known for this connection")
        terminal.type("a forever\n")
        terminal.read_until(b"rule ")
    finally:
        joiner.join(timeout=10)
        terminal.close()
    rules = lab.ctl_json("list-rules")
    assert [r["text"] for r in rules] == ["allow to=224.0.0.22 proto=other"]
