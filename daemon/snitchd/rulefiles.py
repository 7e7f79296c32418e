"""Reading `rules_dir` (`/etc/snitch/rules.d/*.rules`): which files hold which rules.

A side path, run in a worker thread at start and on reload, never on the packet loop. A file
is taken whole or refused whole (`snitch_common.rulefile`); a refused file keeps the rules it
had in the store. Only root may write the folder and its files: a rules file another user can
change would let that user allow anything (threat model), so such a file is refused too.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from snitch_common.rulefile import RuleFileError, RuleLine, parse_rules_text

__all__ = ["FileRead", "read_rules_dir"]

MAX_FILE_BYTES = 16 << 20  # a rules file larger than this is refused (100k rules: ~6 MB)
MAX_FILES = 1000


@dataclass(frozen=True, slots=True)
class FileRead:
    """One file of the folder: its rules, or why it was refused (`error`)."""

    name: str
    rules: tuple[RuleLine, ...] = ()
    error: str = ""


def _unsafe(st: os.stat_result, what: str) -> str:
    if st.st_uid != 0:
        return f"{what} is owned by uid {st.st_uid}, not root"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{what} is writable by others than root (mode {stat.S_IMODE(st.st_mode):o})"
    return ""


def read_rules_dir(folder: str) -> tuple[list[FileRead], bool]:
    """The `*.rules` files of `folder`, by name; and whether the folder exists (a missing
    folder holds no rules)."""
    path = Path(folder)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return [], False
    except OSError as exc:
        return [FileRead("*", error=f"cannot read {folder}: {exc.strerror}")], True
    problem = _unsafe(st, folder)
    if problem:
        return [FileRead("*", error=f"{problem} (chown root {folder}; chmod go-w {folder})")], True
    out: list[FileRead] = []
    names = sorted(p.name for p in path.glob("*.rules"))
    for name in names[:MAX_FILES]:
        out.append(_read_one(path / name))
    return out, True


def _read_one(path: Path) -> FileRead:
    name = path.name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return FileRead(name, error=f"cannot open {path}: {exc.strerror}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return FileRead(name, error=f"{path} is not a regular file")
        problem = _unsafe(st, str(path))
        if problem:
            return FileRead(name, error=f"{problem} (chown root {path}; chmod go-w {path})")
        if st.st_size > MAX_FILE_BYTES:
            return FileRead(name, error=f"{path} is larger than {MAX_FILE_BYTES} bytes")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return FileRead(name, error=f"{path}: not UTF-8 at byte {exc.start}")
    try:
        lines = parse_rules_text(text, str(path))
    except RuleFileError as exc:
        return FileRead(name, error=exc.message)
    return FileRead(name, tuple(lines))
