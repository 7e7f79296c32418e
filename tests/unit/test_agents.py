"""Which processes snitchd takes for agents (issue 13): the checks on files and processes that
need no bus. The registration itself, with the proof over the bus, is in
tests/integration/test_agent_trust.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from snitch_common.errors import NotAuthorized
from snitch_common.launcher import GROUP, build
from snitchd.agents import inspect_agent, session_active, session_of, thread_names, trusted_path
from tests.support.lab import AS_NOBODY
from tests.support.launcher import built_launcher

VENV_BIN = Path(sys.executable).parent


def test_a_system_file_is_trusted_through_its_symlinks() -> None:
    """/usr/bin/python3 is a symlink chain to a root-owned interpreter: each hop is checked and
    the real path comes back."""
    real = trusted_path("/usr/bin/python3")
    assert real == os.path.realpath("/usr/bin/python3")


def test_a_file_below_a_world_writable_directory_is_not(tmp_path: Path) -> None:
    """A directory anyone may write: what is below it could be swapped by any user."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "agent").write_text("#!/bin/sh\n")
    with pytest.raises(ValueError, match="shared is writable by others"):
        trusted_path(str(shared / "agent"))


def test_a_sticky_directory_keeps_roots_files_roots(tmp_path: Path) -> None:
    """Like /tmp (mode 1777): others may add names there, but never rename or remove root's,
    so a root-owned agent below it cannot be swapped (a CI checkout under /tmp is fine)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "agent").write_text("#!/bin/sh\n")
    if os.geteuid() != 0:
        pytest.skip("needs root-owned files")
    assert trusted_path(str(shared / "agent")) == str(shared / "agent")


def test_a_file_in_a_users_directory_is_not(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        os.chown(tmp_path, 65534, 65534)
    with pytest.raises(ValueError, match=r"not root|writable by others"):
        trusted_path(str(tmp_path / "x"))


def test_python_is_not_the_agent_launcher() -> None:
    """What malware would run: the interpreter and the agent library, whatever its argv says
    (a process may write any argv over its own: it names nothing)."""
    launcher = built_launcher()
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", str(VENV_BIN / "snitchctl")]
    )
    try:
        with pytest.raises(NotAuthorized, match=r"runs /\S*python\S*, not the agent launcher"):
            inspect_agent(child.pid, os.getuid(), str(launcher))
    finally:
        child.kill()
        child.wait()


def test_a_launcher_that_is_not_set_group_id_is_refused(tmp_path: Path) -> None:
    """Without the set-group-id bit the kernel starts it like any program: LD_PRELOAD and a
    tracer reach its code, so it proves nothing."""
    plain = tmp_path / "snitch-agent"
    build(plain, str(VENV_BIN / "python3"), None)
    with pytest.raises(NotAuthorized, match="is not set-group-id"):
        inspect_agent(os.getpid(), os.getuid(), str(plain))


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(["--no-new-privs"], id="no_new_privs"),
        pytest.param([], id="not-set-group-id"),
    ],
)
def test_the_launcher_runs_nothing_unless_the_kernel_started_it_set_group_id(
    tmp_path: Path, how: list[str]
) -> None:
    """Under no_new_privs (or a tracer, or a nosuid mount) the set-group-id bit is not applied:
    the launcher then says so and runs nothing, instead of an agent snitchd would refuse."""
    launcher = built_launcher()
    if not how:
        launcher = tmp_path / "snitch-agent"
        build(launcher, str(VENV_BIN / "python3"), None)
    done = subprocess.run(
        [*AS_NOBODY, *how, str(launcher), "terminal", "--help"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done
    assert "snitch-agent: not started set-group-id" in done.stderr, done.stderr
    assert done.stdout == ""


def test_a_process_the_launcher_started_is_an_agent_until_the_launcher_is_replaced() -> None:
    """The accepted case, seen from /proc alone: the launcher's exec as uid 65534 (stopped
    there). Once install.sh has built a new launcher, the running one is a deleted inode:
    refused, with what to do."""
    where = Path(tempfile.mkdtemp(prefix="snitch-launcher-", dir="/tmp"))
    child = None
    try:
        where.chmod(0o755)
        launcher = where / "snitch-agent"
        build(launcher, str(VENV_BIN / "python3"), GROUP)
        child = subprocess.Popen(
            [*AS_NOBODY, str(launcher), "terminal", "--help"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(400):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{child.pid}/exe") == str(launcher):
                    os.kill(child.pid, signal.SIGSTOP)
                    break
            time.sleep(0.005)
        found = inspect_agent(child.pid, 65534, str(launcher))
        assert (found.pid, found.uid, found.program) == (child.pid, 65534, "snitchctl")
        build(launcher, str(VENV_BIN / "python3"), GROUP)
        with pytest.raises(NotAuthorized, match="replaced since it started: start it again"):
            inspect_agent(child.pid, 65534, str(launcher))
    finally:
        if child is not None:
            child.kill()
            child.wait()
        shutil.rmtree(where, ignore_errors=True)


def test_the_launcher_runs_its_program_isolated_from_the_caller_s_python_variables(
    tmp_path: Path,
) -> None:
    """PYTHONPATH, PYTHONSTARTUP and a user site would run the user's code inside the agent:
    the launcher's Python reads none of them (a `sitecustomize` on PYTHONPATH is what the
    interpreter itself would import at start)."""
    launcher = built_launcher()
    evil = Path(tempfile.mkdtemp(prefix="snitch-evil-", dir="/tmp"))
    try:
        evil.chmod(0o755)
        (evil / "sitecustomize.py").write_text("print('EVIL sitecustomize')\n")
        (evil / "startup.py").write_text("print('EVIL startup')\n")
        env = os.environ | {
            "PYTHONPATH": str(evil), "PYTHONSTARTUP": str(evil / "startup.py"),
            "PYTHONINSPECT": "1", "PYTHONUSERBASE": str(evil),
            "PYTHON" + "X" * 300: "a name longer than the launcher once copied",
        }  # fmt: skip
        done = subprocess.run(
            [*AS_NOBODY, str(launcher), "terminal", "--help"],
            capture_output=True, text=True, timeout=30, check=False, env=env,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        shutil.rmtree(evil, ignore_errors=True)
    assert done.returncode == 0, done
    assert done.stdout.startswith("usage: snitchctl agent"), done.stdout
    assert "EVIL" not in done.stdout + done.stderr


# Settings that set no_new_privs for a user unit (systemd.exec(5): seccomp needs it there).
_NO_NEW_PRIVILEGES = (
    "NoNewPrivileges", "SystemCallFilter", "SystemCallArchitectures", "SystemCallLog",
    "LockPersonality", "RestrictRealtime", "RestrictNamespaces", "RestrictAddressFamilies",
    "RestrictSUIDSGID", "MemoryDenyWriteExecute", "ProtectKernelModules", "ProtectKernelTunables",
    "ProtectKernelLogs", "ProtectClock", "ProtectHostname", "PrivateDevices",
)  # fmt: skip


def test_the_notifier_s_user_unit_lets_the_kernel_apply_the_launcher_s_group() -> None:
    """The unit had NoNewPrivileges=yes (and seccomp settings implying it): with the launcher,
    the notifier it starts would never be taken as an agent."""
    unit = Path(__file__).resolve().parents[2] / "systemd" / "snitch-notifier.service"
    keys = {line.partition("=")[0].strip() for line in unit.read_text().splitlines()}
    assert not keys & set(_NO_NEW_PRIVILEGES)


def test_a_gone_process_is_refused() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(NotAuthorized, match="is gone"):
        inspect_agent(child.pid, os.getuid(), "/opt/snitch/venv/libexec/snitch-agent")


def test_thread_names_are_read_per_thread() -> None:
    assert thread_names(os.getpid())


def test_session_comes_only_from_logind_s_place_in_the_cgroup_tree(tmp_path: Path) -> None:
    """A user can make cgroups below user@UID.service, named session-X.scope too: only the
    place logind uses counts, and only a session file saying active and graphical."""
    assert session_of(os.getpid(), os.getuid()) is None  # no logind session here
    (tmp_path / "3").write_text("ACTIVE=1\nTYPE=wayland\nSTATE=active\n")
    (tmp_path / "4").write_text("ACTIVE=0\nTYPE=x11\n")
    (tmp_path / "5").write_text("ACTIVE=1\nTYPE=tty\n")
    assert session_active("3", str(tmp_path))
    assert not session_active("4", str(tmp_path))
    assert not session_active("5", str(tmp_path))
    assert not session_active("../3", str(tmp_path))
