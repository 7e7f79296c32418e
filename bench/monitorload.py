"""Monitoring as a person leaves it running, for connbench's configuration m: the Network
Monitor window, offscreen, with its real feed (the Rates signal each second, Apps and
Traffic every few seconds), on the range given, until stdin closes. Prints "ready" once
snitchd's first totals arrived, with the seconds it took (from the interpreter's start, and
from the window's), and at the end one JSON line: the signals and answers it took (Rates
frames, Apps answers, RulesChanged signals). The first app listed is selected, so its rules
follow RulesChanged as a person's would.

    python -m bench.monitorload [10m|1h|24h|7d|30d]

`Monitor` starts one and reads it, for bench/monitoropen.py (open times) and bench/connbench.py
(configuration m: the packet path with monitors open).
"""

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()


ROOT = Path(__file__).resolve().parent.parent


class Monitor:
    """One `python -m bench.monitorload RANGE` child, offscreen, on the bus `env` names."""

    def __init__(self, env: dict[str, str], shown: str) -> None:
        self.shown = shown
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.monitorload", shown],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env | {"QT_QPA_PLATFORM": "offscreen"},
        )

    def ready(self, timeout: float = 60) -> tuple[float, float]:
        """Wait (at most `timeout` s) until its window showed snitchd's first totals: the
        seconds that took from the interpreter's start and from the window's creation."""
        out = self.proc.stdout
        assert out is not None
        waited, _, _ = select.select([out], [], [], timeout)
        line = out.readline().split() if waited else []
        if line[:1] != ["ready"]:
            self.finish()
            raise RuntimeError(f"bench.monitorload {self.shown} did not open: {line}")
        return float(line[1]), float(line[2])

    def finish(self) -> dict[str, int] | None:
        """Close it (its stdin); what it took (None if it said nothing, or hung: killed)."""
        try:
            out, _ = self.proc.communicate("", timeout=20)
            took: dict[str, int] = json.loads(out.strip().splitlines()[-1])
            return took
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            self.proc.kill()
            self.proc.communicate()
            return None


def main() -> int:
    # Qt here, not at the top: connbench and monitoropen import `Monitor` without it (the
    # times still count from STARTED, the interpreter's start).
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication  # noqa: PLC0415

    from snitch_notifier.monitor import MonitorWindow  # noqa: PLC0415
    from snitch_notifier.traffic import Range  # noqa: PLC0415

    app = QApplication(sys.argv[:1])
    made = time.perf_counter()
    window = MonitorWindow()
    window.resize(1180, 780)
    window.show()
    window.set_range(Range(sys.argv[1] if len(sys.argv) > 1 else "10m"))
    frames, rule_news = [0], [0]
    window.feed.rates.connect(lambda _: frames.__setitem__(0, frames[0] + 1))
    window.feed.rules_changed.connect(lambda _: rule_news.__setitem__(0, rule_news[0] + 1))
    ready = False
    deadline = time.monotonic() + 6 * 3600  # bounded, far beyond any bench run
    while time.monotonic() < deadline:
        app.processEvents()
        if not ready and window.totals_read:
            now = time.perf_counter()
            print("ready", f"{now - STARTED:.3f}", f"{now - made:.3f}", flush=True)
            ready = True
            first = window.apps.key_at(0)
            if first is not None:
                window.select_app(first)
        if select.select([sys.stdin], [], [], 0.05)[0] and not sys.stdin.readline():
            break
    window.close()
    took = {"rates": frames[0], "totals": window.totals_read, "rules_changed": rule_news[0]}
    print(json.dumps(took), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
