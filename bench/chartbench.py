"""pyqtgraph or QtCharts for the Network Monitor's charts (issue 19): what each costs.

For each library, in a fresh interpreter (so nothing is shared): the import time; the RSS after
importing it with a QApplication up, and after drawing the monitor's chart; the time to draw a
30-day chart (2 series of 180 points: up and down, what `Traffic` returns at most) from new
data and render it (`grab()`: the paint a window does); and the time of one live tick (a
10-minute window at 1 s: 600 points, one new point appended, rendered again). Offscreen Qt, the
same widget size for both. Prints figures, asserts nothing:

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m bench.chartbench

Needs both pyqtgraph and PySide6-Addons (QtCharts) in the venv; the project ships only the one
it chose.
"""

import importlib.metadata as md
import json
import os
import random
import statistics
import subprocess
import sys
import time

WIDTH, HEIGHT = 900, 260
REDRAWS = 30
TICKS = 60
POINTS = 180  # what Traffic returns at most per series


def child(lib: str, width: int, height: int, redraws: int, ticks: int) -> None:
    """One library in this fresh interpreter: prints its figures as one JSON line."""
    t0 = time.perf_counter()
    if lib.startswith("pyqtgraph"):
        import pyqtgraph as pg  # noqa: PLC0415
    else:
        from PySide6 import QtCharts  # noqa: PLC0415
    from PySide6.QtWidgets import QApplication  # noqa: PLC0415

    t_import = time.perf_counter() - t0
    app = QApplication([])
    rss_import = _rss()
    rng = random.Random(1)
    xs = [1_700_000_000 + i * 14_400 for i in range(POINTS)]

    def data():
        return (
            [rng.randint(0, 50_000_000) for _ in range(POINTS)],
            [rng.randint(0, 9_000_000) for _ in range(POINTS)],
        )

    if lib.startswith("pyqtgraph"):
        pg.setConfigOptions(antialias=lib == "pyqtgraph", background="w", foreground="k")
        w = pg.PlotWidget(axisItems={"bottom": pg.DateAxisItem()})
        up = w.plot(pen=pg.mkPen("#c0392b", width=2))
        down = w.plot(pen=pg.mkPen("#2471a3", width=2))

        def draw(o, i, x=xs):
            up.setData(x, o)
            down.setData(x, i)

    else:
        from PySide6.QtCore import QDateTime, QPointF, Qt  # noqa: PLC0415
        from PySide6.QtGui import QColor, QPainter  # noqa: PLC0415

        chart = QtCharts.QChart()
        up, down = QtCharts.QLineSeries(), QtCharts.QLineSeries()
        ax, ay = QtCharts.QDateTimeAxis(), QtCharts.QValueAxis()
        chart.addAxis(ax, Qt.AlignmentFlag.AlignBottom)
        chart.addAxis(ay, Qt.AlignmentFlag.AlignLeft)
        for series, colour in ((up, "#c0392b"), (down, "#2471a3")):
            chart.addSeries(series)
            series.attachAxis(ax)
            series.attachAxis(ay)
            pen = series.pen()
            pen.setWidth(2)
            pen.setColor(QColor(colour))
            series.setPen(pen)
        w = QtCharts.QChartView(chart)
        w.setRenderHint(QPainter.RenderHint.Antialiasing)

        def draw(o, i, x=xs):
            up.replace([QPointF(a * 1000.0, b) for a, b in zip(x, o, strict=True)])
            down.replace([QPointF(a * 1000.0, b) for a, b in zip(x, i, strict=True)])
            first, last = QDateTime.fromSecsSinceEpoch(x[0]), QDateTime.fromSecsSinceEpoch(x[-1])
            ax.setRange(first, last)
            ay.setRange(0, max(*o, *i) * 1.1)

    w.resize(width, height)
    w.show()
    app.processEvents()
    first = time.perf_counter()
    draw(*data())
    w.grab()
    first = time.perf_counter() - first
    redraw = []
    for _ in range(redraws):
        o, i = data()
        t = time.perf_counter()
        draw(o, i)
        w.grab()
        redraw.append(time.perf_counter() - t)
    rss_drawn = _rss()
    # Live: 600 points at 1 s, one appended per tick.
    lx = list(range(600))
    lo = [rng.randint(0, 10**6) for _ in lx]
    li = [rng.randint(0, 10**6) for _ in lx]
    draw(lo, li, lx)
    w.grab()
    tick = []
    for _ in range(ticks):
        lx = [*lx[1:], lx[-1] + 1]
        lo = [*lo[1:], rng.randint(0, 10**6)]
        li = [*li[1:], rng.randint(0, 10**6)]
        t = time.perf_counter()
        draw(lo, li, lx)
        w.grab()
        tick.append(time.perf_counter() - t)
    figures = {
        "import_s": t_import,
        "rss_import_mb": rss_import,
        "rss_drawn_mb": rss_drawn,
        "first_draw_ms": first * 1000,
        "redraw_30d_ms": statistics.median(redraw) * 1000,
        "live_tick_ms": statistics.median(tick) * 1000,
    }
    print(json.dumps(figures), flush=True)


def _rss() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measure(lib: str) -> dict[str, float]:
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    done = subprocess.run(
        [sys.executable, "-m", "bench.chartbench", "--child", lib],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def installed_mb(prefixes: tuple[str, ...]) -> float:
    """Bytes on disk of the files a distribution installed (from pip's RECORD)."""
    seen: set[str] = set()
    for dist in md.distributions():
        if dist.metadata["Name"] and dist.metadata["Name"].lower() in prefixes:
            for f in dist.files or []:
                path = os.path.realpath(str(f.locate()))
                if os.path.isfile(path):
                    seen.add(path)
    return sum(os.path.getsize(p) for p in seen) / 1e6


def main() -> int:
    runs = 3
    rows = {}
    for lib in ("pyqtgraph", "pyqtgraph-noaa", "qtcharts"):
        samples = [measure(lib) for _ in range(runs)]
        rows[lib] = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
    disk = {
        "pyqtgraph": installed_mb(("pyqtgraph", "numpy")),
        "pyqtgraph-noaa": installed_mb(("pyqtgraph", "numpy")),
        "qtcharts": installed_mb(("pyside6-addons", "pyside6_addons")),
    }
    print(f"chart libraries, {WIDTH}x{HEIGHT} offscreen, median of {runs} fresh interpreters")
    print(
        f"{'library':14s} {'disk MB':>8s} {'import s':>9s} {'RSS MB':>7s} {'+chart':>7s} "
        f"{'1st draw':>9s} {'30d redraw':>11s} {'live tick':>10s}"
    )
    for lib, r in rows.items():
        print(
            f"{lib:14s} {disk[lib]:8.0f} {r['import_s']:9.3f} {r['rss_import_mb']:7.1f} "
            f"{r['rss_drawn_mb'] - r['rss_import_mb']:7.1f} {r['first_draw_ms']:7.1f}ms "
            f"{r['redraw_30d_ms']:9.2f}ms {r['live_tick_ms']:8.2f}ms"
        )
    print("(disk: pyqtgraph with numpy; qtcharts: the whole PySide6-Addons wheel it comes in;")
    print(" pyqtgraph-noaa: without antialiasing; the others draw antialiased 2 px lines)")
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    child(sys.argv[2], WIDTH, HEIGHT, REDRAWS, TICKS)
elif __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - started:.0f} s)")
    sys.exit(code)
