"""Which processes snitchd accepts as agents: the installed agent programs, run as installed.

An agent answers prompts, and an answer can make a rule: malware of the desktop user that could
register as that user's agent would answer `allow … forever` for itself (issue 13). So an agent
is accepted only when the process behind its bus connection runs one of `agent_programs` (the
notifier, `snitchctl agent`), as the kernel started it from a root-owned file, with nothing of
the user's in it. Both are Python console scripts, so `/proc/PID/exe` is the interpreter and the
program is the script the kernel handed it (`argv[1]`). `inspect_agent` checks, for the pid the
bus reports for the connection:

- argv is exactly what the kernel makes of the script's `#!` line: `[interpreter, script, ...]`,
  the script one of `agent_programs`; `-c`, `-m`, `-i` or any other interpreter option would put
  something else in argv[1]. argv[0] must be the `#!` interpreter itself: Python finds its venv
  (and so whether the user's site-packages count) from argv[0], not from /proc/PID/exe.
- every file and directory on the way to the script and the interpreter, symlinks followed, is
  owned by root and writable by no one else (the script's venv must be too: install.sh puts
  it under /opt/snitch, root-owned);
- `/proc/PID/exe` is that interpreter; the files are checked as the process sees them
  (through /proc/PID/root: its mount namespace, its root directory), and it must be in
  snitchd's user namespace (inside one of its own, a user can mount anything anywhere);
- its environment holds no variable that loads code: LD_*, PYTHON* beyond a short list of
  harmless ones, Qt/GTK/GIO/glibc module paths (`INJECTING`, `SAFE_PYTHON_VARIABLES`);
- it is not traced (`TracerPid: 0`) and not dumpable: the agents call `prctl(PR_SET_DUMPABLE,
  0)` first thing (`snitch_common.agent.make_undumpable`), after which a process of the same
  user can neither ptrace it nor read or write its memory; the kernel then shows its /proc
  files as root's, which is how snitchd tells.

The pid is tied to the connection by a proof (`snitchd.api`): snitchd calls the agent's
`Prove(nonce)` on that very connection and the process at the pid must then carry the nonce as
a thread name, which only code inside that process can set. A connection made by malware that
then exec'd the real agent, or kept the socket in a child, fails it.

What this does not stop: a user who can write the agent's files (the venv, the interpreter, a
directory above them) makes them theirs; root and the kernel are trusted (a kernel exploit, or
root malware, is out of scope); a process traced from its exec until before its prctl, then
released, carries whatever its tracer left in it (Yama's ptrace_scope=1, the default on most
distributions, allows that only to its parent); and a genuine agent that the user drives (a
person typing into `snitchctl agent`, or malware synthesising key presses into the desktop
session) answers as the user tells it: `answers_need_auth` (polkit) covers the answers that
matter most. Root's own agents are not checked: root can change every file named here.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from snitch_common.errors import NotAuthorized

__all__ = [
    "INJECTING",
    "SAFE_PYTHON_VARIABLES",
    "AgentProcess",
    "inspect_agent",
    "session_active",
    "session_of",
    "thread_names",
    "trusted_path",
]

# Environment variables that make a program load code of the caller's choosing.
INJECTING = frozenset(
    {
        "GCONV_PATH",
        "GIO_EXTRA_MODULES",
        "GIO_MODULE_DIR",
        "GST_PLUGIN_PATH",
        "GTK_MODULES",
        "GTK3_MODULES",
        "GTK_PATH",
        "LIBGL_DRIVERS_PATH",
        "QML2_IMPORT_PATH",
        "QML_IMPORT_PATH",
        "QT_PLUGIN_PATH",
        "QT_QPA_PLATFORM_PLUGIN_PATH",
        "VK_ICD_FILENAMES",
        "VK_LAYER_PATH",
        "__EGL_VENDOR_LIBRARY_DIRS",
        "__EGL_VENDOR_LIBRARY_FILENAMES",
    }
)
# Every other PYTHON* variable is refused: PYTHONPATH, PYTHONHOME, PYTHONSTARTUP, PYTHONINSPECT,
# PYTHONUSERBASE, PYTHONWARNINGS (imports the category's module), PYTHONPYCACHEPREFIX (reads
# bytecode from there), PYTHONBREAKPOINT, and whatever a later Python adds.
SAFE_PYTHON_VARIABLES = frozenset(
    {
        "PYTHONCOERCECLOCALE",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONFAULTHANDLER",
        "PYTHONHASHSEED",
        "PYTHONIOENCODING",
        "PYTHONNOUSERSITE",
        "PYTHONSAFEPATH",
        "PYTHONUNBUFFERED",
        "PYTHONUTF8",
    }
)
_MAX_HOPS = 40  # symlinks followed at most (the kernel's own limit)
_MAX_PROC_FILE = 1 << 20  # cmdline and environ are read up to this much


@dataclass(frozen=True, slots=True)
class AgentProcess:
    """A process found to run an agent program: what ran, and which start of that pid."""

    pid: int
    uid: int
    program: str  # the script, as in agent_programs
    start: int  # /proc/PID/stat starttime: a pid reused later is another process


def _refuse(pid: int, why: str) -> NotAuthorized:
    return NotAuthorized(
        f"cannot register as an agent: pid {pid} {why} (only an installed agent program may "
        "answer prompts: snitch-notifier or snitchctl agent, see agent_programs in "
        "/etc/snitch/snitchd.toml)"
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


def _shebang(script: str) -> list[str]:
    """The interpreter (and its one optional argument) of a `#!` script."""
    with open(script, "rb") as f:
        first = f.readline(256)
    if not first.startswith(b"#!"):
        raise ValueError(f"{script} has no #! line")
    words = first[2:].decode("utf-8", "replace").strip().split(None, 1)
    if not words:
        raise ValueError(f"{script} has an empty #! line")
    return words


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


def inspect_agent(pid: int, uid: int, programs: tuple[str, ...]) -> AgentProcess:
    """What `pid` runs, if it is one of `programs` run as installed (see the module's
    docstring); raises NotAuthorized saying why not. Reads a few small /proc files: for a
    worker thread."""
    try:
        return _inspect(pid, uid, programs)
    except FileNotFoundError:
        raise _refuse(pid, "is gone") from None
    except (OSError, ValueError) as exc:
        raise _refuse(pid, f"cannot be checked: {exc}") from None


def _inspect(pid: int, uid: int, programs: tuple[str, ...]) -> AgentProcess:
    start = _start(pid)
    status = _status(pid)
    real_uid = int(status.get("Uid", "-1").split()[0])
    if real_uid != uid:
        raise _refuse(pid, f"runs as uid {real_uid}, not as the connection's uid {uid}")
    argv = [
        a.decode("utf-8", "surrogateescape") for a in _read(f"/proc/{pid}/cmdline").split(b"\0")
    ]
    argv = argv[:-1] if argv and argv[-1] == "" else argv
    shown = " ".join(argv)[:200]
    script = next((a for a in argv[1:3] if a in programs), None)
    if script is None:
        raise _refuse(pid, f"runs {shown!r}, not an agent program")
    # In a user namespace of its own, a user may mount anything anywhere (and seem root).
    if os.stat(f"/proc/{pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino:
        raise _refuse(pid, "runs in a user namespace of its own")
    seen = f"/proc/{pid}/root"  # its files as it sees them: its mounts, its root directory
    try:
        real = trusted_path(script, seen)
        expected = [*_shebang(seen + real), script]
    except (OSError, ValueError) as exc:
        raise _refuse(pid, f"runs {script}, which is not installed safely: {exc}") from None
    if argv[: len(expected)] != expected:
        raise _refuse(
            pid, f"runs {shown!r}, not {script} as its #! line starts it ({' '.join(expected)})"
        )
    try:
        interpreter = trusted_path(expected[0], seen)
    except (OSError, ValueError) as exc:
        raise _refuse(pid, f"runs an interpreter that is not installed safely: {exc}") from None
    exe = os.readlink(f"/proc/{pid}/exe")
    if exe != interpreter:
        raise _refuse(pid, f"runs {exe}, not {interpreter} (the #! interpreter of {script})")
    bad = sorted(_injecting(_read(f"/proc/{pid}/environ")))
    if bad:
        raise _refuse(pid, f"has {', '.join(bad)} in its environment (they load other code)")
    if status.get("TracerPid", "0") != "0":
        raise _refuse(pid, f"is traced by pid {status['TracerPid']}")
    if uid != 0 and os.stat(f"/proc/{pid}/status").st_uid != 0:
        raise _refuse(pid, "is dumpable: the user's other processes could change it")
    if _start(pid) != start:
        raise _refuse(pid, "changed while it was checked")
    return AgentProcess(pid, uid, script, start)


def _injecting(environ: bytes) -> set[str]:
    names = {entry.partition(b"=")[0].decode("utf-8", "replace") for entry in environ.split(b"\0")}
    return {
        n
        for n in names
        if n in INJECTING
        or n.startswith("LD_")
        or (n.startswith("PYTHON") and n not in SAFE_PYTHON_VARIABLES)
    }


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
