"""`snitch-notifier`: the popup when Qt can show one, desktop notifications when it cannot.

Qt cannot be asked politely whether it will start: when its platform plugin fails (no display,
an X server that went away, a missing libxcb-*) it aborts the whole process. So we look for a
display first, then start a throw-away `QApplication` in a child process (~0.1 s, once) and read
its complaint; only then does this process import Qt. The fallback never imports Qt, so it also
runs where PySide6 is not installed. The choice and its reason go to the log.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import subprocess
import sys
from collections.abc import Mapping

from snitch_common.launcher import start_agent
from snitch_notifier.fallback import run_notifications

__all__ = ["main", "qt_unavailable"]

log = logging.getLogger(__name__)

_PROBE = "from PySide6.QtWidgets import QApplication; QApplication([])"


def qt_unavailable(environ: Mapping[str, str]) -> str | None:
    """Why Qt cannot show a window with this environment, or None when it can."""
    if importlib.util.find_spec("PySide6") is None:
        return "PySide6 is not installed (install snitch with the [gui] extra)"
    if not (
        environ.get("QT_QPA_PLATFORM") or environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY")
    ):
        return "no display: neither DISPLAY nor WAYLAND_DISPLAY is set"
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE],
            env=dict(environ),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "Qt did not start within 30 s"
    if probe.returncode == 0:
        return None
    lines = [line for line in probe.stderr.splitlines() if line.strip()]
    causes = [line for line in lines if line.startswith("qt.")] or lines[-1:]
    return "Qt cannot start: " + (" ".join(causes) or f"exit status {probe.returncode}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="snitch-notifier",
        description="Ask about new outbound connections: the desktop agent of snitchd.",
    )
    p.add_argument(
        "--notifications",
        action="store_true",
        help="use desktop notifications even when a window could be shown",
    )
    p.add_argument(
        "--show",
        action="store_true",
        help="open the waiting list window (the launcher does; a running copy is asked to)",
    )
    p.add_argument(
        "--monitor",
        action="store_true",
        help="open the Network Monitor window (traffic per app) instead of the agent",
    )
    p.add_argument("--debug", action="store_true", help="log at debug level (bus traffic too)")
    return p


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    # First thing: run as the set-group-id launcher started it, which no process of this user
    # can trace or change; snitchd accepts the notifier as an agent only so (snitchd/agents.py).
    start_agent("notifier", words)
    args = _parser().parse_args(words)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    reason = "--notifications given" if args.notifications else qt_unavailable(os.environ)
    if args.monitor:
        if reason is not None:
            log.error("cannot open the Network Monitor: %s (try: snitchctl top --live)", reason)
            return 1
        from snitch_notifier.monitor import run_monitor  # noqa: PLC0415 (Qt, as below)

        return run_monitor()
    try:
        if reason is None:
            # Imported here: Qt is loaded only once we know it can start.
            from snitch_notifier.gui import run_popup  # noqa: PLC0415

            return run_popup(show=args.show)
        log.warning("no popup (%s): prompts go to desktop notifications instead", reason)
        return asyncio.run(run_notifications())
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
