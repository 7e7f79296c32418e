"""Shell completion as a person meets it: bash on a terminal, the script install.sh writes
(`register-python-argcomplete`), <TAB> after `snitchctl dele` and after `delete-rule `, the
rule ids coming from a running snitchd (issue 20)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from conftest import VENV_BIN, Lab, Terminal


@contextlib.contextmanager
def bash_with_completion(lab: Lab, tmp: Path) -> Iterator[Terminal]:
    script = tmp / "snitchctl.bash"
    done = subprocess.run(
        [str(VENV_BIN / "register-python-argcomplete"), "--shell", "bash", "snitchctl"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    script.write_text(done.stdout)
    rc = tmp / "bashrc"
    rc.write_text(f"PS1='$ '\nbind 'set show-all-if-ambiguous on'\nsource {script}\n")
    env = lab.env | {"PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "TERM": "dumb"}
    term = Terminal(["bash", "--noprofile", "--rcfile", str(rc), "-i"], env)
    try:
        term.read_until(b"$ ")
        yield term
    finally:
        term.type("\x15exit\r")
        try:
            term.proc.wait(5)
        except subprocess.TimeoutExpired:
            term.proc.kill()  # an interactive bash ignores the SIGTERM of close()
        term.close()


def test_tab_completes_a_subcommand_and_rule_ids(running: Lab, tmp_path: Path) -> None:
    first = running.add_rule("allow port=80")
    second = running.add_rule("deny port=9000")
    with bash_with_completion(running, tmp_path) as term:
        term.type("snitchctl dele\t")
        term.read_until(b"snitchctl delete-rule ")
        term.type("\t")  # two ids: show-all-if-ambiguous lists them at once, then the line again
        deadline = time.monotonic() + 15
        while term.screen.count(b"snitchctl delete-rule ") < 2 and time.monotonic() < deadline:
            term.shows(b"")
            time.sleep(0.05)
        screen = term.screen.decode(errors="replace")
        listed = screen.split("snitchctl delete-rule ")[1].split()
        assert str(first) in listed and str(second) in listed, screen


def test_tab_completes_a_profile_name_from_snitchd(running: Lab, tmp_path: Path) -> None:
    """`profile activate <TAB>` offers the profiles snitchd knows (one: completed in place)."""
    made = running.ctl("profile", "create", "office-net")
    assert made.returncode == 0, made.stderr
    with bash_with_completion(running, tmp_path) as term:
        term.type("snitchctl profile activate off\t")
        term.read_until(b"snitchctl profile activate office-net ")
