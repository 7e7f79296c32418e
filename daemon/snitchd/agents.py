"""Which processes snitchd accepts as agents: those the kernel started from the agent launcher.

An agent answers prompts, and an answer can make a rule: malware of the desktop user that could
register as that user's agent would answer `allow … forever` for itself (issue 13). The agent
programs are Python, so the interpreter's argv, which lives in the process's own writable
memory, was all that named them: a `python3 evil.py` could write the agent's argv over its own,
and a library preloaded into the real agent could wipe itself from its environment. So every
agent runs through `agent_launcher` (snitch_common/agentlauncher.c: compiled, root-owned,
set-group-id, embedding Python and running one of a fixed set of programs), and
`inspect_agent` checks, for the pid the bus reports for the connection, what only the kernel
says:

- `/proc/PID/exe` is the launcher's inode, and every file and directory on the way to it,
  symlinks followed, is owned by root and writable by no one else, as the process sees them
  (through /proc/PID/root: its mount namespace, its root directory); the launcher is
  set-group-id, and the process is in snitchd's user namespace (inside one of its own, a user
  can mount anything anywhere);
- AT_SECURE is 1 in `/proc/PID/auxv` (the kernel's copy of the auxiliary vector, which the
  process cannot change): the kernel applied the set-group-id bit at this exec, so the dynamic
  loader ignored LD_PRELOAD and its kin, the process was non-dumpable from its first
  instruction, and no tracer was attached then (a traced exec does not change ids). The
  launcher clears the variables that make Qt, GTK or Mesa load code and runs Python isolated;
- it is not traced now (`TracerPid: 0`) and not dumpable (the kernel then shows its /proc
  files as root's, which is how snitchd tells).

The pid is tied to the connection by a proof (`snitchd.api`): snitchd calls the agent's
`Prove(nonce)` on that very connection and the process at the pid must then carry the nonce as
a thread name, which only code inside that process can set. A connection made by malware that
then exec'd the real agent, or kept the socket in a child, fails it.

What this does not stop: a user who can write the launcher or the venv (install.sh makes
/opt/snitch root's); root and the kernel (a kernel exploit, or root malware, is out of scope);
a process whose real and effective ids already differed when it exec'd the launcher (the
kernel then starts it in secure mode under a tracer too: only a set-id program that runs the
user's code without giving its ids back makes one); and a genuine agent that the user
drives (a person typing into `snitchctl agent`, or malware synthesising key presses into the
desktop session): `answers_need_auth` (polkit) covers the answers that matter most. Root's own
agents are not checked: root can change every file named here.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from dataclasses import dataclass

from snitch_common.errors import NotAuthorized
from snitch_common.launcher import AT_SECURE

__all__ = [
    "AgentProcess",
    "inspect_agent",
    "session_active",
    "session_of",
    "thread_names",
    "trusted_path",
]

_MAX_HOPS = 40  # symlinks followed at most (the kernel's own limit)
_MAX_PROC_FILE = 1 << 20  # /proc files are read up to this much
_AUXV_ENTRY = struct.calcsize("@LL")
# What the launcher runs (snitch_common/agentlauncher.c) → the program it stands for.
_PROGRAMS = {"notifier": "snitch-notifier", "terminal": "snitchctl"}


@dataclass(frozen=True, slots=True)
class AgentProcess:
    """A process found to run an agent program: what ran, and which start of that pid."""

    pid: int
    uid: int
    program: str  # snitch-notifier or snitchctl
    start: int  # /proc/PID/stat starttime: a pid reused later is another process


def _refuse(pid: int, why: str) -> NotAuthorized:
    return NotAuthorized(
        f"cannot register as an agent: pid {pid} {why} (only an installed agent program may "
        "answer prompts: snitch-notifier or snitchctl agent, started through agent_launcher, "
        "see /etc/snitch/snitchd.toml)"
    )


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(_MAX_PROC_FILE)


def trusted_path(path: str, root: str = "") -> str:
    """The real path of `path` if every file, directory and symlink on the way (and at the
    end) is owned by root and writable by no one else; raises ValueError naming the first that
    is not. Symlinks are followed by hand, so each hop is checked too. `root`: look as a
    process sees its files (`/proc/PID/root`: its mount namespace and root directory)."""
    if not path.startswith("/"):
        raise ValueError(f"{path}: not an absolute path")
    done = "/"
    todo = [p for p in path.split("/") if p]
    hops = 0
    _check_inode("/", os.lstat(root + "/"))
    while todo:
        part = todo.pop(0)
        if part == ".":
            continue
        if part == "..":
            done = os.path.dirname(done.rstrip("/")) or "/"
            continue
        here = os.path.join(done, part)
        st = os.lstat(root + here)
        _check_inode(here, st)
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > _MAX_HOPS:
                raise ValueError(f"{path}: too many symlinks")
            target = os.readlink(root + here)
            if target.startswith("/"):
                done = "/"
            todo = [p for p in target.split("/") if p] + todo
            continue
        done = here
    return done


def _check_inode(where: str, st: os.stat_result) -> None:
    if st.st_uid != 0:
        raise ValueError(f"{where} is owned by uid {st.st_uid}, not root")
    # A directory writable by root's group only is still root's, and so is a sticky one (like
    # /tmp): others may add entries there but never rename or remove root's. Anything else
    # writable by a group or by everyone is not.
    if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
        return
    roots_group_dir = stat.S_ISDIR(st.st_mode) and st.st_gid == 0
    writable = st.st_mode & (stat.S_IWOTH if roots_group_dir else stat.S_IWGRP | stat.S_IWOTH)
    if not stat.S_ISLNK(st.st_mode) and writable:
        raise ValueError(f"{where} is writable by others (mode {stat.S_IMODE(st.st_mode):o})")


def _secure(pid: int) -> bool:
    """AT_SECURE in the kernel's copy of the process's auxiliary vector."""
    data = _read(f"/proc/{pid}/auxv")
    words = struct.iter_unpack("@LL", data[: len(data) // _AUXV_ENTRY * _AUXV_ENTRY])
    return any(key == AT_SECURE and value == 1 for key, value in words)


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in _read(f"/proc/{pid}/status").decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _start(pid: int) -> int:
    text = _read(f"/proc/{pid}/stat").decode("utf-8", "replace")
    return int(text[text.rindex(")") + 2 :].split()[19])


def thread_names(pid: int) -> set[str]:
    """The names (comm) of every thread of `pid`: only the process itself can set them."""
    names: set[str] = set()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return names
    for tid in tids[:4096]:
        try:
            names.add(_read(f"/proc/{pid}/task/{tid}/comm").decode("utf-8", "replace").strip())
        except OSError:
            continue
    return names


def inspect_agent(pid: int, uid: int, launcher: str) -> AgentProcess:
    """What `pid` runs, if the kernel started it from `launcher` as installed (see the
    module's docstring); raises NotAuthorized saying why not. Reads a few small /proc files:
    for a worker thread."""
    try:
        return _inspect(pid, uid, launcher)
    except FileNotFoundError:
        raise _refuse(pid, "is gone") from None
    except (OSError, ValueError) as exc:
        raise _refuse(pid, f"cannot be checked: {exc}") from None


def _inspect(pid: int, uid: int, launcher: str) -> AgentProcess:
    start = _start(pid)
    status = _status(pid)
    real_uid = int(status.get("Uid", "-1").split()[0])
    if real_uid != uid:
        raise _refuse(pid, f"runs as uid {real_uid}, not as the connection's uid {uid}")
    # In a user namespace of its own, a user may mount anything anywhere (and seem root).
    if os.stat(f"/proc/{pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino:
        raise _refuse(pid, "runs in a user namespace of its own")
    seen = f"/proc/{pid}/root"  # its files as it sees them: its mounts, its root directory
    try:
        real = trusted_path(launcher, seen)
        installed = os.stat(seen + real)
    except (OSError, ValueError) as exc:
        raise _refuse(pid, f"cannot run the agent launcher safely: {exc}") from None
    if not stat.S_ISREG(installed.st_mode) or not installed.st_mode & stat.S_ISGID:
        raise _refuse(
            pid, f"cannot be an agent: {launcher} is not set-group-id (install.sh makes it so)"
        )
    running = os.stat(f"/proc/{pid}/exe")
    if (running.st_dev, running.st_ino) != (installed.st_dev, installed.st_ino):
        shown = os.readlink(f"/proc/{pid}/exe")
        if shown == f"{real} (deleted)":  # install.sh built a new one since: a new inode
            raise _refuse(pid, f"runs a {launcher} replaced since it started: start it again")
        raise _refuse(pid, f"runs {shown}, not the agent launcher {launcher}")
    if not _secure(pid):
        raise _refuse(pid, f"did not start {launcher} set-group-id (traced, or no_new_privs)")
    if status.get("TracerPid", "0") != "0":
        raise _refuse(pid, f"is traced by pid {status['TracerPid']}")
    if uid != 0 and os.stat(f"/proc/{pid}/status").st_uid != 0:
        raise _refuse(pid, "is dumpable: the user's other processes could change it")
    # The launcher's own code chose this and nothing ran before it, so argv is as it was made.
    argv = _read(f"/proc/{pid}/cmdline").split(b"\0")
    program = _PROGRAMS.get(argv[1].decode("ascii", "replace") if len(argv) > 1 else "", "?")
    if _start(pid) != start:
        raise _refuse(pid, "changed while it was checked")
    return AgentProcess(pid, uid, program, start)


# Only logind places a process here: a user's own (delegated) cgroups sit below user@UID.service.
_SESSION_CGROUP = re.compile(
    r"^(?:0:|\d+:name=systemd:)/user\.slice/user-(\d+)\.slice/session-([A-Za-z0-9]+)\.scope$"
)


def session_of(pid: int, uid: int) -> str | None:
    """The logind session `pid` of `uid` runs in, from its cgroup (as sd_pid_get_session
    finds it); None outside one (a user service, no logind)."""
    try:
        text = _read(f"/proc/{pid}/cgroup").decode("utf-8", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        found = _SESSION_CGROUP.match(line)
        if found is not None and int(found.group(1)) == uid:
            return found.group(2)
    return None


def session_active(session: str, run: str = "/run/systemd/sessions") -> bool:
    """Whether logind says `session` is active and graphical (its state file, root's)."""
    if not session.isalnum():
        return False
    try:
        text = _read(os.path.join(run, session)).decode("utf-8", "replace")
    except OSError:
        return False
    state = dict(line.partition("=")[::2] for line in text.splitlines())
    return state.get("ACTIVE") == "1" and state.get("TYPE") in ("x11", "wayland", "mir")
