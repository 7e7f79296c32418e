"""An answer "in this profile only" (issue 17), end to end: a real snitchd with a profile
active, the real terminal agent (`snitchctl agent` on a pseudo-terminal) typing "allow,
forever, this profile only"; the rule it makes holds in that profile and not in another."""

from __future__ import annotations

from conftest import VENV_BIN, Lab, Terminal, netclient_who

PROMPT = b"a new connection waits for you"


def home_and_work(lab: Lab) -> Terminal:
    """snitchd with profiles home (active) and work, and a terminal agent answering."""
    lab.expect_log(r"WARNING snitchd\.firewall: alert profile-changed: ")
    lab.start_daemon()
    lab.ctl_json("profile", "create", "home")
    lab.ctl_json("profile", "create", "work")
    lab.ctl_json("profile", "activate", "home")
    terminal = Terminal([str(VENV_BIN / "snitchctl"), "agent"], lab.env)
    return terminal


def test_forever_in_this_profile_only_holds_there_and_not_after_switching(lab: Lab) -> None:
    terminal = home_and_work(lab)
    try:
        terminal.read_until(b"waiting for prompts")
        with lab.spawn_client("tcp", "192.0.2.2", "443", "--timeout", "10") as proc:
            text = terminal.read_until(b"answer> ")
            assert "profile   home (active when asked)" in text, text
            assert "only in profile home" in text, text  # the help line offers it
            terminal.type("a forever exact profile\n")
            terminal.read_until(b"rule ")
            out, _ = proc.communicate(timeout=20)
        assert out.strip() == "connected"
        (rule,) = lab.ctl_json("list-rules")
        assert rule["text"] == (
            f"allow {netclient_who()} to=192.0.2.2 port=443 proto=tcp profile=home"
        )
        assert lab.py("tcp", "192.0.2.2", 443) == "connected"  # held by the rule: no prompt
        assert terminal.screen.count(PROMPT) == 1

        lab.ctl_json("profile", "activate", "work")
        with lab.spawn_client("tcp", "192.0.2.2", "443", "--timeout", "10") as proc:
            text = terminal.read_until(b"profile   work (active when asked)")
            assert text.count(PROMPT.decode()) == 2  # the home rule is dormant: asked again
            terminal.type("r once\n")
            out, _ = proc.communicate(timeout=20)
        assert out.strip() == "refused"

        lab.ctl_json("profile", "activate", "home")
        assert lab.py("tcp", "192.0.2.2", 443) == "connected"  # and holds again at home
        assert terminal.screen.count(PROMPT) == 2
    finally:
        terminal.close()


def test_this_profile_only_is_refused_when_no_profile_was_active(lab: Lab) -> None:
    """The terminal agent says why and keeps the prompt to be answered otherwise (snitchd
    refuses it too: tests/unit/test_answer_reach.py)."""
    lab.start_daemon()
    terminal = Terminal([str(VENV_BIN / "snitchctl"), "agent"], lab.env)
    try:
        terminal.read_until(b"waiting for prompts")
        with lab.spawn_client("tcp", "192.0.2.2", "443", "--timeout", "10") as proc:
            text = terminal.read_until(b"answer> ")
            assert "profile " not in text.split("answer:")[0]
            terminal.type("a forever profile\n")
            terminal.read_until(b"no profile was active when this was asked")
            terminal.type("a once\n")
            out, _ = proc.communicate(timeout=20)
        assert out.strip() == "connected"
        assert lab.ctl_json("list-rules") == []
    finally:
        terminal.close()


def test_an_answer_for_a_profile_deleted_since_is_refused(lab: Lab) -> None:
    """The profile shown was switched away from and deleted before the answer: a rule naming
    it would hold nowhere, so snitchd refuses it and makes none; the prompt stays open for
    another answer."""
    terminal = home_and_work(lab)
    try:
        terminal.read_until(b"waiting for prompts")
        with lab.spawn_client("tcp", "192.0.2.2", "443", "--timeout", "10") as proc:
            terminal.read_until(b"profile   home (active when asked)")
            lab.ctl_json("profile", "activate", "work")
            lab.ctl_json("profile", "delete", "home")
            terminal.type("a forever profile\n")
            terminal.read_until(b"not answered: no profile 'home'")
            terminal.read_until(b"answer it again")  # snitchd still holds it
            terminal.type("r once\n")
            out, _ = proc.communicate(timeout=20)
        assert out.strip() == "refused"
        assert lab.ctl_json("list-rules") == []
    finally:
        terminal.close()
