"""The agent launcher (agentlauncher.c): where it lives, how it is built, how agents start.

snitchd takes a user's agent only from a process the kernel started from the root-owned,
set-group-id launcher (snitchd/agents.py): that is something no program of the user can fake,
unlike the argv of a Python script. So `snitch-notifier` and `snitchctl agent` re-exec
themselves through it first thing (`start_agent`), and install.sh builds it here with the
interpreter of the venv it serves compiled in.

    python -m snitch_common.launcher build TARGET [--python PATH] [--group NAME]
"""

from __future__ import annotations

import argparse
import ctypes
import grp
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from snitch_common.agent import make_undumpable

__all__ = ["AT_SECURE", "GROUP", "build", "launcher_path", "main", "start_agent"]

GROUP = "snitch-agent"
_SOURCE = "agentlauncher.c"
AT_SECURE = 23  # <elf.h>
_getauxval = ctypes.CDLL(None).getauxval
_getauxval.restype = ctypes.c_ulong
_getauxval.argtypes = [ctypes.c_ulong]


def launcher_path(prefix: str = sys.prefix) -> Path:
    """Where the launcher of the venv at `prefix` is (install.sh: /opt/snitch/venv)."""
    return Path(prefix) / "libexec" / "snitch-agent"


def start_agent(program: str, args: Sequence[str]) -> None:
    """Become the agent `program` ("notifier" or "terminal") as snitchd takes it: exec the
    launcher unless a launcher started this process, then make this process non-dumpable.
    Where no launcher was built (a development checkout) the program runs as it is: snitchd
    then takes it only as root's agent."""
    launcher = launcher_path()
    if launcher.exists() and not _secure_exec():
        os.execv(launcher, [str(launcher), program, *args])
    make_undumpable()


def _secure_exec() -> bool:
    """Whether the kernel started this process's program in secure mode (AT_SECURE): set-id,
    and neither traced nor under no_new_privs then. The Python interpreter never is; only
    the launcher. (Its /proc/self/auxv is root's then, as the process is not dumpable.)"""
    return bool(_getauxval(AT_SECURE))


def build(target: Path, python: str, group: str | None) -> None:
    """Compile the launcher to `target` for the venv whose interpreter is `python` (the path
    it will have when it runs); then root-owned and, with `group`, set-group-id to it (mode
    2755), else 0755. Raises RuntimeError saying what is missing."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler: install the Debian package gcc")
    include = sysconfig.get_config_var("INCLUDEPY")
    if not include or not Path(include, "Python.h").exists():
        raise RuntimeError(f"no Python.h in {include}: install the Debian package python3-dev")
    libdir = str(sysconfig.get_config_var("LIBDIR"))
    libs = shlex.split(sysconfig.get_config_var("LIBS") or "")
    libpython = f"-lpython{sysconfig.get_config_var('LDVERSION')}"
    gid = _group_id(group) if group is not None else 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with (
        resources.as_file(resources.files("snitch_common") / _SOURCE) as source,
        tempfile.TemporaryDirectory(dir=target.parent) as tmp,
    ):
        out = Path(tmp) / target.name
        argv = [
            cc, "-O2", "-Wall", "-Werror", f"-I{include}", f"-DSNITCH_PYTHON={_c_string(python)}",
            str(source), "-o", str(out),
            f"-L{libdir}", f"-Wl,-rpath,{libdir}", libpython, *libs,
        ]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed: {done.stderr.strip()[-2000:]}")
        os.chown(out, 0, gid)
        os.chmod(out, 0o2755 if group is not None else 0o755)
        os.replace(out, target)


def _group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise RuntimeError(f"no group {name}: create it first (groupadd --system {name})") from None


def _c_string(text: str) -> str:
    if not text.startswith("/") or any(c in text for c in '"\\\n\0'):
        raise RuntimeError(f"{text!r}: the interpreter must be a plain absolute path")
    return f'"{text}"'


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m snitch_common.launcher")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile the agent launcher")
    b.add_argument("target", type=Path)
    b.add_argument(
        "--python",
        default=str(Path(sys.prefix) / "bin" / "python3"),
        help="the venv's interpreter as the launcher will find it (default: this venv's)",
    )
    b.add_argument("--group", help=f"make it set-group-id to this group (install.sh: {GROUP})")
    args = p.parse_args(argv)
    try:
        build(args.target, args.python, args.group)
    except (RuntimeError, OSError) as exc:
        print(f"snitch-agent launcher not built: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
