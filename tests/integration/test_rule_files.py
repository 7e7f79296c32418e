"""Rules at scale, against the real daemon (issue 18): rules.d files, check-rules, import and
export, edit/disable/enable, and open flows cut when a deny rule arrives.

Every verdict is read from what a real client in the client namespace saw, and from what
snitchd recorded (list-rules, the connection log, its own log)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import HERE, PYTHON, Lab
from tests.integration.readerparams import READERS
from tests.support.lab import end_child, wait_for

SERVER = "192.0.2.2"


def _rules_dir(lab: Lab) -> Path:
    folder = lab.tmp / "rules.d"
    folder.mkdir(mode=0o755, exist_ok=True)
    return folder


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    os.chmod(path, 0o644)


def _reload(lab: Lab, log_line: str) -> None:
    """SIGHUP to snitchd (the `ip netns exec` child is snitchd itself after exec), then wait for
    its log to say the files were read."""
    assert lab.daemon is not None
    before = lab.log_text().count(log_line)
    lab.daemon.send_signal(signal.SIGHUP)
    wait_for(lambda: lab.log_text().count(log_line) > before, 15, f"log line {log_line!r}")


def test_rules_file_is_loaded_marked_and_protected_and_a_bad_one_is_refused_whole(
    lab: Lab,
) -> None:
    """A rules.d file's rules are loaded at start, listed with origin=file:NAME and cannot be
    deleted, edited or disabled through snitchctl (the error names the file). A new version
    with one bad line fails check-rules with that line's number, and on reload it is refused as
    a whole: the old rules stay in force and the log names the file and the line."""
    folder = _rules_dir(lab)
    office = folder / "office.rules"
    _write(office, "# office\nallow port=80   # web\nreject port=443\n")
    lab.start_daemon()
    rules = lab.ctl_json("list-rules")
    assert [(r["text"], r["origin"]) for r in rules] == [
        ("allow port=80", "file:office.rules"),
        ("reject port=443", "file:office.rules"),
    ]
    assert lab.py("tcp", SERVER, 80) == "connected"
    assert lab.py("tcp", SERVER, 443) == "refused"
    for argv in (
        ("delete-rule", str(rules[0]["id"])),
        ("edit-rule", str(rules[0]["id"]), "deny port=80"),
        ("disable-rule", str(rules[0]["id"])),
    ):
        done = lab.ctl(*argv)
        assert done.returncode == 1, done
        assert "comes from the rules file office.rules" in done.stderr

    bad = "# office\nallow port=80\nallow port=8080\nreject to=300.1.2.3\nreject port=443\n"
    candidate = lab.tmp / "candidate.rules"
    _write(candidate, bad)
    checked = lab.ctl("check-rules", str(candidate))
    assert checked.returncode == 1
    assert f"{candidate}:4: invalid destination '300.1.2.3'" in checked.stderr
    assert "3 rules, 1 bad line" in checked.stdout
    assert lab.ctl("check-rules", str(office)).returncode == 0

    lab.expect_log(r"ERROR snitchd.firewall: rules file refused, its old rules stay: .*line 4")
    _write(office, bad)
    _reload(lab, "rules file refused")
    assert f"{office}: line 4: invalid destination" in lab.log_text()
    assert "line 4" in lab.ctl_json("status")["rules_files_error"]
    assert [r["text"] for r in lab.ctl_json("list-rules")] == ["allow port=80", "reject port=443"]
    assert lab.py("tcp", SERVER, 8080) == "timeout"  # the file's new rule was not taken
    assert lab.py("tcp", SERVER, 443) == "refused"  # the old rules are still in force

    # Fixed, the file is taken, and rules that stayed keep their id.
    _write(office, "allow port=80\nallow port=8080\n")
    _reload(lab, "rules file loaded name=office.rules")
    now = lab.ctl_json("list-rules")
    assert [r["text"] for r in now] == ["allow port=80", "allow port=8080"]
    assert now[0]["id"] == rules[0]["id"]
    assert lab.py("tcp", SERVER, 8080) == "connected"
    assert lab.py("tcp", SERVER, 443) == "timeout"  # reject port=443 left with its line


def test_export_then_import_round_trips_and_import_is_all_or_nothing(running: Lab) -> None:
    """export writes the rules (notes, disabled ones commented); importing that file into a
    daemon that lost them brings back the same texts and notes; importing it again adds
    nothing (all duplicates); a file with one invalid line adds nothing at all."""
    first = running.ctl_json("add-rule", "--note", "web, for Sam", "allow port=80")
    assert first["note"] == "web, for Sam"
    again = running.ctl_json("add-rule", "allow port=80")
    assert again["id"] == first["id"] and again["existing"] is True
    running.add_rule("reject to=203.0.113.7 port=443 during=00:00-24:00 days=mon-sun")
    gone = running.add_rule("allow port=8080")
    assert running.ctl("disable-rule", str(gone)).returncode == 0
    exported = running.ctl("export")
    assert exported.returncode == 0, exported.stderr
    lines = [line for line in exported.stdout.splitlines() if not line.startswith("# snitch")]
    assert lines == [
        "allow port=80  # web, for Sam",
        "reject to=203.0.113.7 port=443 during=00:00-24:00 days=mon-sun",
        "# disabled: allow port=8080",
    ]
    saved = running.tmp / "export.rules"
    saved.write_text(exported.stdout)
    for rule in running.ctl_json("list-rules"):
        assert running.ctl("delete-rule", str(rule["id"])).returncode == 0

    dry = running.ctl_json("import", "--dry-run", str(saved))
    assert [r["text"] for r in dry["added"]] == [
        "allow port=80",
        "reject to=203.0.113.7 port=443 during=00:00-24:00 days=mon-sun",
    ]
    assert dry["applied"] is False and running.ctl_json("list-rules") == []

    done = running.ctl_json("import", str(saved))
    assert done["applied"] is True and done["invalid"] == [] and done["duplicates"] == []
    assert [r["text"] for r in running.ctl_json("list-rules")] == [r["text"] for r in dry["added"]]
    assert running.py("tcp", SERVER, 80) == "connected"
    assert running.py("tcp", "203.0.113.7", 443) == "refused"

    twice = running.ctl_json("import", str(saved))
    assert twice["added"] == [] and len(twice["duplicates"]) == 2

    broken = running.tmp / "broken.rules"
    broken.write_text("allow port=9000\nallow port=99999\n")
    refused = running.ctl("--json", "import", str(broken))
    assert refused.returncode == 1
    assert '"line": 2' in refused.stdout
    assert "port=9000" not in {r["text"] for r in running.ctl_json("list-rules")}


def test_edit_disable_and_enable_change_the_next_flows_verdict(running: Lab) -> None:
    """The next new flow sees each change: a more specific reject wins, disabled it never
    matches, enabled it wins again, edited to another port it no longer covers this one."""
    running.add_rule("allow port=80")
    strict = running.add_rule(f"reject to={SERVER} port=80")
    assert running.py("tcp", SERVER, 80) == "refused"
    assert running.ctl("disable-rule", str(strict)).returncode == 0
    listed = {r["id"]: r for r in running.ctl_json("list-rules")}
    assert listed[strict]["enabled"] is False
    assert running.py("tcp", SERVER, 80) == "connected"
    assert running.ctl("enable-rule", str(strict)).returncode == 0
    assert running.py("tcp", SERVER, 80) == "refused"
    edited = running.ctl_json(
        "edit-rule", str(strict), f"reject to={SERVER} port=443", "--note", "not web"
    )
    assert edited["id"] == strict and edited["note"] == "not web"
    assert running.py("tcp", SERVER, 80) == "connected"
    assert running.py("tcp", SERVER, 443) == "refused"


@pytest.mark.parametrize("readers", READERS)
def test_a_deny_rule_added_while_a_connection_is_open_cuts_it(lab: Lab, readers: int) -> None:
    """Issue 18: an allowed TCP connection lived on after a deny rule for it was added (the
    kernel kept its verdict). Now the rule cuts it: the client's socket is reset (its next
    exchange fails) and the connection log records the cut. With queue readers (issue 21) the
    main process cuts a flow a reader let out."""
    lab.start_daemon(queue_readers=readers)
    running = lab
    running.add_rule("allow port=80")
    client = running.spawn_client("tcp", SERVER, "80", "--hold", "8")
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "connected"
        started = time.monotonic()
        deny = running.add_rule(f"deny to={SERVER} port=80")
        outcome = client.stdout.readline().strip()
        assert outcome != "held", "the open connection survived the deny rule"
        assert outcome == "cut" or outcome.startswith("error:"), outcome
        assert time.monotonic() - started < 7.5
    finally:
        end_child(client)
    wait_for(
        lambda: any(
            r["reason"].startswith(f"cut: rule {deny} ") for r in running.log_rows(verdict="deny")
        ),
        10,
        "the cut in the connection log",
    )
    assert f"open flow cut rule={deny}" in running.log_text()
    assert running.ctl_json("status")["flows_cut"] == 1
    assert running.py("tcp", SERVER, 80) == "timeout"  # and new ones are denied, as before


def test_keep_open_leaves_the_open_connection_alone(running: Lab) -> None:
    """keep-open=yes (`add-rule --keep-open`): the rule denies new flows only."""
    running.add_rule("allow port=80")
    client = running.spawn_client("tcp", SERVER, "80", "--hold", "4")
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "connected"
        rule = running.ctl_json("add-rule", "--keep-open", f"deny to={SERVER} port=80")
        assert rule["text"] == f"deny to={SERVER} port=80 keep-open=yes"
        assert client.stdout.readline().strip() == "held"
    finally:
        end_child(client)
    assert running.py("tcp", SERVER, 80) == "timeout"
    assert "open flow cut" not in running.log_text()


def test_a_deny_rule_leaves_inbound_connections_to_local_servers_alone(running: Lab) -> None:
    """A local server's connections are no flows snitch let out: `deny port=9100` must not cut
    an SSH-like session someone opened *to* this machine (only flows carrying snitch's allow
    mark are candidates, checked by the kernel's dump filter and again when read)."""
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            running.client,
            PYTHON,
            str(HERE / "netserver.py"),
            "--tcp",
            "9100",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    visitor: subprocess.Popen[str] | None = None
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        visitor = subprocess.Popen(
            ["ip", "netns", "exec", running.server, PYTHON, str(HERE / "netclient.py"), "tcp",
             "192.0.2.1", "9100", "--hold", "4"],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert visitor.stdout is not None
        assert visitor.stdout.readline().strip() == "connected"
        running.add_rule("allow port=80")
        client = running.spawn_client("tcp", SERVER, "80", "--hold", "4")
        assert client.stdout is not None and client.stdout.readline().strip() == "connected"
        inbound = running.add_rule("deny port=9100")
        outbound = running.add_rule("deny port=80")  # cuts the outbound one: the cut did run
        assert client.stdout.readline().strip() != "held"
        end_child(client)
        assert visitor.stdout.readline().strip() == "held"
    finally:
        for child in (visitor, server):
            if child is not None:
                child.kill()
                child.communicate()
    # (The session would survive a wrong cut here: the visitor's next packet makes a new
    # conntrack entry; the log says whether snitch tried.)
    log = running.log_text()
    assert f"open flow cut rule={outbound} " in log
    assert f"open flow cut rule={inbound} " not in log
    assert running.ctl_json("status")["flows_cut"] == 1
