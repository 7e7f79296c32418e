"""Monitoring as a person leaves it running, for connbench's configuration m: the Network
Monitor window, offscreen, with its real feed (the Rates signal each second, Apps and
Traffic every few seconds), on the range given, until stdin closes. Prints "ready" once
snitchd's first totals arrived, with the seconds it took (from the interpreter's start, and
from the window's), and at the end one JSON line: the signals and answers it took.
bench/monitoropen.py reads those times.

    python -m bench.monitorload [10m|1h|24h|7d|30d]
"""

import json
import os
import select
import sys
import time

STARTED = time.perf_counter()

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtWidgets import QApplication  # noqa: E402 (after STARTED)

from snitch_notifier.monitor import MonitorWindow  # noqa: E402
from snitch_notifier.traffic import Range  # noqa: E402


def main() -> int:
    app = QApplication(sys.argv[:1])
    made = time.perf_counter()
    window = MonitorWindow()
    window.resize(1180, 780)
    window.show()
    window.set_range(Range(sys.argv[1] if len(sys.argv) > 1 else "10m"))
    frames = [0]
    window.feed.rates.connect(lambda _: frames.__setitem__(0, frames[0] + 1))
    ready = False
    deadline = time.monotonic() + 6 * 3600  # bounded, far beyond any bench run
    while time.monotonic() < deadline:
        app.processEvents()
        if not ready and window.totals_read:
            now = time.perf_counter()
            print("ready", f"{now - STARTED:.3f}", f"{now - made:.3f}", flush=True)
            ready = True
        if select.select([sys.stdin], [], [], 0.05)[0] and not sys.stdin.readline():
            break
    window.close()
    print(json.dumps({"rates": frames[0], "totals": window.totals_read}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
