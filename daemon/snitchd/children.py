"""Ending a helper child snitchd started itself (the hasher, the exec watcher), by its handle.

Standard library only: the children import the module they are defined in by path, and that
module imports this one; nothing here may pull in the daemon's heavier modules.
"""

from __future__ import annotations

import subprocess

__all__ = ["end_child"]


def end_child(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM, 2 s to go, then SIGKILL; its stdout pipe closed if it has one. A child that
    already exited is only reaped."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(2)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    if child.stdout is not None:
        child.stdout.close()
