"""What Linux lets snitchd check of who a process is, beyond the path it shows (issue 14).

Little Snitch and LuLu check code signatures; Linux has none to check, so we check what it does
let us see, and say what we cannot. A path is verified when a file at that path in snitchd's own
mount namespace is the very file (device and inode) the process runs: in its own user and mount
namespace an unprivileged program can bind-mount anything over `/usr/bin/curl`. A library named
by LD_PRELOAD or LD_AUDIT that its memory maps, and a tracer (ptrace), mean code that is not its
executable's may run in it. Each read is of one file of /proc; the environment and the maps are
as large as the process makes them (a few MB at most), so all of this runs in the attribution
worker, never on the packet loop.

What we cannot see: a process may rewrite its own environment block after start (the preloaded
library is still in its maps, but we find it by the name the environment gave); code loaded by
`dlopen`, or written into its memory through a tracer that has since detached; and whatever the
user's own start-up files make an interpreter load (README, "what snitch cannot see").
"""

from __future__ import annotations

import contextlib
import os
import stat

__all__ = [
    "preloaded",
    "read_environ",
    "tracer_of",
    "user_writable",
    "verify_path",
    "verify_script",
]

_ENV_MAX = 4 << 20  # bytes of /proc/<pid>/environ read (the kernel caps argv + envp near 2 MB)


def verify_path(pid: int, path: str, target: os.stat_result | None = None) -> tuple[str, bool]:
    """`path` as seen from the process (its mount namespace), as rules name it here, and whether
    it was verified: a file at the returned path here is the process's executable (`target`, by
    default /proc/<pid>/exe). A process in another mount namespace (`ip netns exec` makes one,
    so do containers) may show its binary with a prefix outside our own root (seen in a chroot:
    /var/tmp/x/usr/bin/curl): the tail that names the same file here is the path. When no tail
    does, the path is returned as the process shows it, unverified. One stat when it is right."""
    if target is None:
        try:
            target = os.stat(f"/proc/{pid}/exe")
        except OSError:
            return path, False
    parts = path.split("/")
    for i in range(1, len(parts)):
        candidate = "/" + "/".join(parts[i:])
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            return candidate, True
    return path, False


def verify_script(pid: int, script: str) -> tuple[str, bool]:
    """The script's path (made absolute against the process's cwd, as the process sees it) and
    whether the file there, here, is the one the process sees at that path (/proc/<pid>/root
    walks the process's own mounts)."""
    if not script.startswith("/"):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return script, False
        script = os.path.join(cwd, script)
    script = os.path.normpath(script)
    if script.startswith("//"):
        script = script[1:]  # normpath keeps a leading "//" (POSIX leaves it to the system)
    try:
        theirs = os.stat(f"/proc/{pid}/root{script}")
    except OSError:
        return script, False
    return verify_path(pid, script, theirs)


def read_environ(pid: int, names: frozenset[str]) -> dict[str, str]:
    """The variables of `names` that are set, non-empty, in the process's environment block."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read(_ENV_MAX)
    except OSError:
        return {}
    found: dict[str, str] = {}
    for entry in data.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep and value:
            name = key.decode(errors="replace")
            if name in names:
                found[name] = value.decode(errors="replace")
    return found


def preloaded(pid: int, env: dict[str, str]) -> tuple[str, ...]:
    """The files mapped in the process's memory that LD_PRELOAD or LD_AUDIT named (by name:
    ld.so searches a name without a slash in the library path), in map order."""
    wanted: set[str] = set()
    for var in ("LD_PRELOAD", "LD_AUDIT"):
        for entry in env.get(var, "").replace(":", " ").split():
            wanted.add(os.path.basename(entry))
    if not wanted:
        return ()
    found: list[str] = []
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                if len(fields) < 6:
                    continue
                path = fields[5].rstrip(b"\n").decode(errors="replace")
                if os.path.basename(path) in wanted and path not in found:
                    found.append(path)
    except OSError:
        pass
    return tuple(found)


def tracer_of(pid: int) -> int | None:
    """The pid of the process tracing this one (ptrace), or None."""
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"TracerPid:"):
                tracer = int(line.split()[1])
                return tracer or None
    return None


def user_writable(path: str, st: os.stat_result) -> bool:
    """Whether someone other than root may change the file (`st`) at `path`: its owner, its
    group or everyone can write it, or can replace it in its directory."""
    if _writable(st):
        return True
    try:
        parent = os.stat(os.path.dirname(path) or "/")
    except OSError:
        return True
    return _writable(parent) and not (parent.st_mode & stat.S_ISVTX and parent.st_uid == 0)


def _writable(st: os.stat_result) -> bool:
    return (
        st.st_uid != 0
        or bool(st.st_mode & stat.S_IWOTH)
        or bool(st.st_mode & stat.S_IWGRP and st.st_gid != 0)
    )
