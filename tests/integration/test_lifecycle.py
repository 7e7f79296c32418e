"""Starting, stopping, crashing and reloading: a firewall must fail the way the admin chose.

kill -9 stands for a crash. Fail mode "open" lets new flows pass while snitchd is gone (the
queue bypass), "closed" holds them; a restart takes over the stale kernel rules of the dead
process, keeps rules and log, and does not duplicate anything.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PYTHON, VENV_BIN, Lab
from tests.integration.readerparams import READERS
from tests.support.lab import ROOT

JUMPS = "-A OUTPUT -m comment --comment snitch"


def test_service_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze verify on the real unit (ExecStart pointed at this venv's snitchd)."""
    unit = tmp_path / "snitchd.service"
    text = (ROOT / "systemd" / "snitchd.service").read_text()
    unit.write_text(text.replace("/usr/local/bin/snitchd", str(VENV_BIN / "snitchd")))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


def test_ready_and_watchdog_reach_the_notify_socket(lab: Lab, tmp_path: Path) -> None:
    """Type=notify and WatchdogSec without systemd: READY=1 once the rules are in and the name
    is owned, then WATCHDOG=1 pings from the event loop."""
    lab.write_config()
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(15)
    env = lab.env | {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"}
    with open(tmp_path / "log", "w") as err:
        daemon = subprocess.Popen(
            lab.snitchd_argv(),
            stderr=err,
            env=env,
        )
    try:
        messages = []
        while len([m for m in messages if m == "WATCHDOG=1"]) < 3:
            messages.append(sock.recv(256).decode())
        ready = next(i for i, m in enumerate(messages) if m.startswith("READY=1"))
        assert "NFQUEUE" in lab.iptables_save()
        assert messages.index("WATCHDOG=1") > ready
        assert lab.ctl("status").returncode == 0
    finally:
        daemon.terminate()
        daemon.wait(15)
        sock.close()


@pytest.mark.parametrize("readers", READERS)
@pytest.mark.parametrize("mode", ["open", "closed"])
def test_crash_in_each_fail_mode_then_restart(lab: Lab, mode: str, readers: int) -> None:
    """snitchd killed: the kernel rules stay and do what fail_mode says; with queue reader
    processes (issue 21) those end with it (end-of-file on their socket pair), so no queue is
    left read by a process that decides nothing."""
    lab.start_daemon(fail_mode=mode, queue_readers=readers)
    rule = lab.add_rule("allow port=80")
    assert lab.py("tcp", "192.0.2.2", 80) == "connected"
    assert lab.py("tcp", "192.0.2.2", 9000, "--timeout", "1") == "timeout"
    logged = len(lab.log_rows())
    writer = lab.ctl_json("status")["log_writer_pid"]
    assert lab.stop_daemon(signal.SIGKILL) == -signal.SIGKILL
    wait_gone(writer)  # the log writer goes with snitchd: it reads end-of-file
    assert lab.iptables_save().count(JUMPS) == 4, "the kernel rules went with the process"
    if mode == "open":
        assert lab.py("tcp", "192.0.2.2", 9000, "--timeout", "2") == "connected"
    else:
        assert lab.py("tcp", "192.0.2.2", 80, "--timeout", "1.5") == "timeout"
    lab.start_daemon(fail_mode=mode, queue_readers=readers)
    assert lab.iptables_save().count(JUMPS) == 4, "stale rules duplicated on restart"
    assert [r["id"] for r in lab.ctl_json("list-rules")] == [rule]
    assert len(lab.log_rows()) >= logged
    assert lab.py("tcp", "192.0.2.2", 80) == "connected"
    assert lab.py("tcp", "192.0.2.2", 9000, "--timeout", "1") == "timeout"


def wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rpartition(b")")[2].split()[0] == b"Z":
                    return
        except FileNotFoundError:
            return
        assert time.monotonic() < deadline, f"process {pid} still there"
        time.sleep(0.05)


def test_killed_log_writer_is_replaced_and_no_decision_is_lost(running: Lab) -> None:
    """The connection log is written by a child process; if it dies, snitchd keeps deciding,
    keeps the rows it could not hand over, and starts a new writer."""
    running.expect_log(r"ERROR snitchd.events: connection log write failed")
    running.add_rule("allow port=80")
    assert running.py("tcp", "192.0.2.2", 80) == "connected"
    status = running.ctl_json("status")
    first = status["log_writer_pid"]
    assert first > 0 and running.daemon is not None and first != running.daemon.pid
    assert status["log_writer_starts"] == 1
    os.kill(first, signal.SIGKILL)
    wait_gone(first)
    for _ in range(3):
        assert running.py("tcp", "192.0.2.2", 80) == "connected"
    assert running.py("tcp", "192.0.2.2", 9000, "--timeout", "1") == "timeout"
    rows = [(r["dport"], r["action"]) for r in running.log_rows()]
    assert rows[:4] == [(80, "allow")] * 4
    assert rows[4:] and set(rows[4:]) == {(9000, "deny")}  # the SYN may be sent twice
    status = running.ctl_json("status")
    assert status["log_writer_starts"] == 2 and status["log_writer_pid"] not in (0, first)
    assert status["log_rows_written"] == len(rows) and status["log_rows_dropped"] == 0
    log = running.log_text()
    assert "connection log writer lost" in log
    assert "rules were changed outside snitch" not in log


@pytest.mark.parametrize("readers", READERS)
def test_reload_takes_a_good_config_and_refuses_a_bad_one(lab: Lab, readers: int) -> None:
    """SIGHUP: a good config is taken (by the queue readers too, issue 21), a bad one refused."""
    lab.start_daemon(queue_readers=readers)
    running = lab
    assert running.daemon is not None
    assert running.py("tcp", "192.0.2.2", 9000, "--timeout", "1") == "timeout"
    running.write_config(default_action="allow", fail_mode="closed", queue_readers=readers)
    running.daemon.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while running.ctl_json("status")["default_action"] != "allow":
        assert time.monotonic() < deadline, running.log_text()
        time.sleep(0.1)
    assert running.py("tcp", "192.0.2.2", 9000) == "connected"
    queue_rules = [ln for ln in running.iptables_save().splitlines() if "4242" in ln]
    assert queue_rules and not any("--queue-bypass" in ln for ln in queue_rules)
    running.config_path.write_text('default_action = "deny"\nfail_mode = "ajar"\n')
    running.daemon.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload refused" not in running.log_text():
        assert time.monotonic() < deadline, running.log_text()
        time.sleep(0.1)
    assert "fail_mode = 'ajar': use open or closed" in running.log_text()
    assert running.ctl_json("status")["default_action"] == "allow"
    assert running.py("tcp", "192.0.2.2", 9000) == "connected"
    running.expect_log(r"ERROR snitchd: reload refused")


@pytest.mark.parametrize("readers", READERS)
def test_sigterm_with_packets_held_gives_them_the_default(lab: Lab, readers: int) -> None:
    """A flow held for a prompt when snitchd stops gets the default verdict at once, and the
    kernel rules are gone after the stop; with queue readers (issue 21), the reader holding
    it gives the verdict before it stops."""
    running = lab
    running.start_daemon(default_action="reject", prompt_timeout=60, queue_readers=readers)
    code = (
        "import asyncio\n"
        "from snitch_common.agent import AgentService, register\n"
        "from snitch_common.client import Client\n"
        "async def main():\n"
        "    c = await Client.connect()\n"
        "    await register(c, AgentService(lambda p: print('prompt', flush=True),"
        " lambda i, r: print('cancel', r, flush=True)))\n"
        "    print('ready', flush=True)\n"
        "    await asyncio.sleep(30)\n"
        "asyncio.run(main())\n"
    )
    with subprocess.Popen(
        [PYTHON, "-c", code], stdout=subprocess.PIPE, text=True, env=running.env
    ) as agent:
        assert agent.stdout is not None
        try:
            assert agent.stdout.readline().strip() == "ready"
            with running.spawn_client("tcp", "192.0.2.2", "80", "--timeout", "20") as client:
                assert agent.stdout.readline().strip() == "prompt"
                start = time.monotonic()
                assert running.stop_daemon() == 0
                out, _ = client.communicate(timeout=20)
                assert out.strip() == "refused"
                assert time.monotonic() - start < 5
        finally:
            agent.kill()
    assert "snitch" not in running.iptables_save().lower()


def test_stay_closed_when_stopped_keeps_the_rules(lab: Lab) -> None:
    lab.expect_log(r"WARNING snitchd: kernel rules left in place: fail-closed")
    lab.start_daemon(fail_mode="closed", stay_closed_when_stopped=True)
    lab.add_rule("allow port=80")
    assert lab.stop_daemon() == 0
    assert lab.iptables_save().count(JUMPS) == 4
    assert lab.py("tcp", "192.0.2.2", 80, "--timeout", "1") == "timeout"
    lab.start_daemon(fail_mode="open")
    assert lab.py("tcp", "192.0.2.2", 80) == "connected"
    assert lab.stop_daemon() == 0
    assert "snitch" not in lab.iptables_save().lower()


def test_status_reports_the_running_daemon(running: Lab) -> None:
    running.add_rule("allow port=80")
    assert running.py("tcp", "192.0.2.2", 80) == "connected"
    status = running.ctl_json("status")
    assert status["running"] is True and status["backend"] == "iptables"
    assert status["fail_mode"] == "open" and status["rules"] == 1
    assert status["accepted"] >= 1 and status["agents"] == 0
    assert status["kernel_held"] == 0 and status["kernel_queue_dropped"] == 0
    text = running.ctl("status").stdout
    assert "(fail_mode open)" in text and "version 0.1.0" in text
    verbose = running.ctl("status", "--verbose").stdout
    assert "fail_mode: open" in verbose and "running: True" in verbose


@pytest.mark.slow
def test_install_then_uninstall_into_a_staging_root(tmp_path: Path) -> None:
    """install.sh --root places every file; --uninstall --purge removes every one of them."""
    stage = tmp_path / "root"
    done = subprocess.run(
        [str(ROOT / "install.sh"), "--root", str(stage)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for path in (
        "usr/share/dbus-1/system.d/org.snitch.Firewall1.conf",
        "etc/systemd/system/snitchd.service",
        "etc/snitch/snitchd.toml",
        "opt/snitch/venv/bin/snitchd",
        "opt/snitch/venv/libexec/snitch-agent",  # the agent launcher, compiled
        # made from the parsers and docs at install time (issue 20)
        "usr/local/share/man/man1/snitchctl.1",
        "usr/local/share/man/man1/snitch-notifier.1",
        "usr/local/share/man/man8/snitchd.8",
        "usr/local/share/man/man5/snitchd.toml.5",
        "usr/local/share/man/man5/snitch-rules.5",
        "usr/share/bash-completion/completions/snitchctl",
        "usr/share/zsh/vendor-completions/_snitchctl",
        "usr/share/fish/vendor_completions.d/snitchctl.fish",
        "usr/lib/systemd/catalog/snitch.catalog",
        "usr/local/share/applications/snitch-monitor.desktop",
    ):
        assert (stage / path).exists(), path
    bash = (stage / "usr/share/bash-completion/completions/snitchctl").read_text()
    assert "complete " in bash and "snitchctl" in bash
    assert os.readlink(stage / "usr/local/bin/snitchctl") == "/opt/snitch/venv/bin/snitchctl"
    # A call must never start snitchd: no activation file (issue 13).
    assert not (stage / "usr/share/dbus-1/system-services").exists()
    done = subprocess.run(
        [str(ROOT / "install.sh"), "--uninstall", "--purge", "--root", str(stage)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    left = [p for p in stage.rglob("*") if not p.is_dir() or p.is_symlink()]
    assert left == []
    assert shutil.which("snitchd", path=str(stage / "usr/local/bin")) is None
