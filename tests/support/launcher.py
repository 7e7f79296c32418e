"""The agent launcher of this venv, built once for the tests that need one.

`snitch-notifier` and `snitchctl agent` re-exec through `launcher_path()` when it exists
(snitch_common.launcher), so once it is built every agent the tests start runs as installed:
root-owned, set-group-id to `snitch-agent`, as install.sh makes it.
"""

from __future__ import annotations

import grp
import subprocess
import sys
from pathlib import Path

import snitch_common
from snitch_common.launcher import GROUP, build, launcher_path

__all__ = ["built_launcher"]


def built_launcher() -> Path:
    """This venv's launcher, (re)built unless it is newer than its C source."""
    target = launcher_path()
    source = Path(snitch_common.__file__).parent / "agentlauncher.c"
    if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
        return target
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", "--system", GROUP], check=True)
    build(target, str(Path(sys.prefix) / "bin" / "python3"), GROUP)
    return target
