"""Which app is asking: a name and an icon for an executable, from the desktop's own files.

A person recognises "Firefox" and its icon faster than `/usr/lib/firefox-esr/firefox-esr`.
Desktop entries (`applications/*.desktop` under the XDG data dirs) name the program they start
in `Exec=` and `TryExec=`; we match those against the executable's real path first, then its
basename, looking through `env VAR=value program`. An entry that runs a script through a shell
or an interpreter (`sh -c …`, `python3 app.py`) names the script, not the interpreter, so it is
never used to name every `sh` or `python3` on the machine. The first entry with a given
desktop-file id wins, in XDG order, so a user's `~/.local/share` entry overrides the system's
(Desktop Entry spec). This module reads files only and never imports Qt: the icon is returned
as a theme name or a path for the view.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GENERIC_ICON", "AppIdentity", "data_dirs", "desktop_identity", "find_identity"]

GENERIC_ICON = "application-x-executable"

# Programs that run something else: with arguments, their entry names the something else.
_LAUNCHERS = frozenset(
    {"sh", "bash", "dash", "zsh", "flatpak", "snap", "java", "node", "perl", "ruby", "gjs"}
)
_PYTHON = re.compile(r"python[0-9.]*")
_FIELD_CODE = re.compile(r"%[a-zA-Z]")
_EXACT, _BASENAME = 2, 1


@dataclass(frozen=True, slots=True)
class AppIdentity:
    """How the popup names an app: `icon` is an icon-theme name or an absolute image path."""

    name: str
    icon: str
    desktop_file: Path | None = None


def data_dirs(environ: Mapping[str, str]) -> list[Path]:
    """XDG_DATA_HOME then XDG_DATA_DIRS, with the spec's defaults, most important first."""
    home = environ.get("XDG_DATA_HOME") or os.path.join(
        environ.get("HOME", os.path.expanduser("~")), ".local", "share"
    )
    system = environ.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share"
    return [Path(home), *(Path(d) for d in system.split(":") if d)]


def find_identity(exe: str | None, dirs: Sequence[Path], lang: str = "") -> AppIdentity:
    """The best desktop entry for `exe`, or its basename and a theme icon of that name.

    Args:
        lang: a POSIX locale such as `de_DE.UTF-8`, for the entry's translated `Name[de]`.
    """
    if exe is None:
        return AppIdentity("unknown program", GENERIC_ICON)
    real = os.path.realpath(exe)
    base = os.path.basename(exe)
    best: tuple[int, AppIdentity] | None = None
    seen: set[str] = set()
    for top in dirs:
        apps = top / "applications"
        for path in _desktop_files(apps):
            file_id = path.relative_to(apps).as_posix().replace("/", "-")
            if file_id in seen:
                continue
            seen.add(file_id)
            entry = _read_entry(path)
            if entry is None:
                continue
            score = max(_score(prog, exe, real, base) for prog in _programs(entry))
            if score and (best is None or score > best[0]):
                name = _localized(entry, "Name", lang) or base
                best = (score, AppIdentity(name, entry.get("Icon") or GENERIC_ICON, path))
                if score == _EXACT:
                    return best[1]
    return best[1] if best else AppIdentity(base, base)


def desktop_identity(exe: str | None) -> AppIdentity:
    """`find_identity` over this session's XDG data dirs and language."""
    return find_identity(exe, data_dirs(os.environ), os.environ.get("LANG", ""))


def _desktop_files(apps: Path) -> list[Path]:
    """Every `*.desktop` below `apps`, sorted; unreadable or missing dirs give none (the
    notifier may run as a user who cannot read another's `XDG_DATA_HOME`)."""
    found = [
        Path(root, name)
        for root, _, names in os.walk(apps)  # os.walk skips what it cannot read
        for name in names
        if name.endswith(".desktop")
    ]
    return sorted(found)


def _read_entry(path: Path) -> dict[str, str] | None:
    """The `[Desktop Entry]` group of an application entry; None for anything else or hidden."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    entry: dict[str, str] = {}
    group = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            group = line.strip("[]")
        elif group == "Desktop Entry" and "=" in line:
            key, value = line.split("=", 1)
            entry[key.strip()] = value.strip()
    if entry.get("Type", "Application") != "Application" or entry.get("Hidden") == "true":
        return None
    return entry


def _programs(entry: dict[str, str]) -> list[str]:
    """The programs an entry starts, as written: TryExec, and Exec's program when it is not
    a launcher running something else."""
    found = [entry["TryExec"]] if entry.get("TryExec") else []
    try:
        argv = shlex.split(entry.get("Exec", ""))
    except ValueError:
        argv = entry.get("Exec", "").split()
    argv = [a for a in argv if not _FIELD_CODE.fullmatch(a)]
    if argv and os.path.basename(argv[0]) == "env":
        argv = [a for a in argv[1:] if "=" not in a and not a.startswith("-")]
    if argv:
        name = os.path.basename(argv[0])
        launcher = name in _LAUNCHERS or _PYTHON.fullmatch(name) is not None
        if not (launcher and len(argv) > 1):
            found.append(argv[0])
    return found or [""]


def _score(program: str, exe: str, real: str, base: str) -> int:
    if not program:
        return 0
    if program.startswith("/") and program in (exe, real):
        return _EXACT
    if program.startswith("/") and os.path.realpath(program) == real:
        return _EXACT
    return _BASENAME if os.path.basename(program) == base else 0


def _localized(entry: dict[str, str], key: str, lang: str) -> str | None:
    """`Name[de_DE]`, then `Name[de]`, then `Name` (the spec's lookup, without modifiers)."""
    locale = lang.split(".", 1)[0].split("@", 1)[0]
    for candidate in (locale, locale.split("_", 1)[0]):
        if candidate and f"{key}[{candidate}]" in entry:
            return entry[f"{key}[{candidate}]"]
    return entry.get(key)
