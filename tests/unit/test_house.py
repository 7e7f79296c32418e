"""The house: four programs and one shared library, with no import circle between our modules.

`snitch_common` is what the CLI and the notifier import: if it pulled in NetfilterQueue, psutil
or SQLite, `snitchctl status` would pay for the daemon's packet path and a desktop session would
need the daemon's native libraries. An import circle means two modules that cannot be read, or
tested, one without the other (the log writer and its parent were one).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {
    "snitch_common": ROOT / "daemon" / "snitch_common",
    "snitchd": ROOT / "daemon" / "snitchd",
    "snitchctl": ROOT / "daemon" / "snitchctl",
    "snitch_notifier": ROOT / "notifier" / "snitch_notifier",
    "snitch_lists": ROOT / "daemon" / "snitch_lists",
}
HEAVY = ("netfilterqueue", "psutil", "sqlite3", "sqlite_utils", "pyroute2", "snitchd")


def _module_name(package: str, path: Path) -> str:
    parts = path.relative_to(SOURCES[package]).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((package, *parts))


def _imports() -> dict[str, set[str]]:
    """Our module → the modules of ours it imports at its top level (what runs on import)."""
    graph: dict[str, set[str]] = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            name = _module_name(package, path)
            found: set[str] = set()
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.ImportFrom) and node.module:
                    found.add(node.module)
                    found.update(f"{node.module}.{a.name}" for a in node.names)
                elif isinstance(node, ast.Import):
                    found.update(a.name for a in node.names)
            graph[name] = found
    return {name: {m for m in found if m in graph and m != name} for name, found in graph.items()}


def test_no_import_circle() -> None:
    graph = _imports()
    assert len(graph) > 30, "found too few modules: is SOURCES right?"
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            pytest.fail("import circle: " + " -> ".join((*path[path.index(name) :], name)))
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, (*path, name))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())


@pytest.mark.parametrize(
    "package", ["snitch_common", "snitchctl", "snitch_notifier", "snitch_lists"]
)
def test_light_programs_never_import_the_daemon(package: str) -> None:
    graph = _imports()
    reached = {m for name in graph if name.startswith(package) for m in graph[name]}
    assert {m for m in reached if m.startswith("snitchd")} == set()


@pytest.mark.parametrize("package", ["snitch_common", "snitchctl", "snitch_lists"])
def test_light_programs_load_no_heavy_module(package: str) -> None:
    """Checked in a fresh interpreter: what importing every module of `package` loads."""
    code = (
        "import importlib, pkgutil, sys\n"
        f"import {package} as p\n"
        "for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.'):\n"
        "    importlib.import_module(m.name)\n"
        f"print(' '.join(sorted(n for n in sys.modules if n.split('.')[0] in {HEAVY!r})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == []


def test_test_modules_have_unique_names() -> None:
    """pytest (rootdir, prepend import mode) cannot collect two test modules of one basename:
    the whole run stops at collection. Two branches merged unit and integration tests of one
    name three times."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert len(names) > 50
    assert sorted({n for n in names if names.count(n) > 1}) == []
