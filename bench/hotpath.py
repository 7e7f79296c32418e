"""The hot path's profile: py-spy samples snitchd while the load runs, and we rank its frames.

`record(pid, seconds, out)` runs `py-spy record --format raw` (folded stacks, one
"frame;frame;... count" line per distinct stack, what flamegraph.pl reads) and `top(path)` ranks
functions by self samples (the leaf frame: where the time goes) and by inclusive samples (on the
stack at all). Idle samples (the loop waiting in epoll) are left out by py-spy, so the shares
are of the busy time; `busy` says how much of the wall time that was.
"""

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

RATE = 250
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def find_py_spy():
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def record(py_spy, pid, seconds, out, lines=False):
    """Start sampling `pid` for `seconds`; the caller runs the load meanwhile and waits.
    `lines`: rank source lines rather than functions."""
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            str(RATE),
            "--format",
            "raw",
            "--output",
            str(out),
            "--subprocesses",
            *([] if lines else ["--function"]),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _short(frame, lines=False):
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    file = m.group("file")
    for marker in ("/snitchd/", "/site-packages/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    line = f":{m.group('line')}" if lines and m.group("line") else ""
    return f"{m.group('func')} ({file}{line})"


def top(path, seconds, limit=15, lines=False, process=None):
    """Ranked frames of a raw py-spy file: {"samples", "busy", "self": [...], "total": [...]}.
    `process`: only the stacks of that one ("main": snitchd, "logwriter": its log writer child;
    the file holds both, py-spy samples subprocesses too)."""
    self_count: Counter[str] = Counter()
    total_count: Counter[str] = Counter()
    samples = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        if process is not None and _process_of(stack) != process:
            continue
        count = int(count_s)
        frames = [_short(f, lines) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        self_count[frames[-1]] += count
        for f in set(frames):
            total_count[f] += count

    def ranked(counter):
        return [
            {"frame": f, "samples": n, "share": round(n / samples, 4)}
            for f, n in counter.most_common(limit)
        ]

    busy = samples / (RATE * seconds) if seconds else 0.0
    return {
        "samples": samples,
        "busy": round(busy, 3),
        "self": ranked(self_count),
        "total": ranked(total_count),
    }


def _process_of(stack):
    """Which of snitchd's processes a folded stack is from: "main" (snitchd), "logwriter" (its
    forked log writer, with snitchd's command line) or "execwatch" (the proc connector child).
    py-spy starts a child's stack with its parent's "process N:..." frame, then its own."""
    if "Recorder._fork" in stack:
        return "logwriter"
    if "procs/execs.py" in stack.split(";<module>", 1)[0]:
        return "execwatch"
    return "main"


def print_top(summary, label):
    print(
        f"\nprofile: {label}: {summary['samples']} busy samples of all threads at {RATE} Hz "
        f"({summary['busy']:.0%} of the wall time; over 100%: threads ran in parallel)"
    )
    for kind, title in (("self", "self time (leaf frame)"), ("total", "inclusive")):
        print(f"  top frames by {title}:")
        for row in summary[kind]:
            print(f"    {row['share']:6.1%}  {row['frame']}")
