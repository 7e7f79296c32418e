"""The Network Monitor's chart: traffic up and down over time, blocked attempts marked.

QtCharts (PySide6-Addons), chosen by measurement (bench/chartbench.py: half pyqtgraph's
memory, a 30-day redraw in ~2 ms antialiased). Where Addons is not installed the window still
works: it imports this module only if it can (`monitor.make_chart`), and shows a label that
says what is missing instead of a chart.

Sizes span bytes to gigabytes, and QValueAxis formats numbers only: the values are scaled to
one unit picked from the largest point, and the axis title names it ("MB per 10 min").
"""

from __future__ import annotations

import html

from PySide6.QtCharts import (
    QChart,
    QChartView,
    QDateTimeAxis,
    QLineSeries,
    QScatterSeries,
    QValueAxis,
)
from PySide6.QtCore import QDateTime, QMargins, QPointF, Qt
from PySide6.QtGui import QColor, QPainter, QPen

from snitch_notifier.traffic import TrafficChart

__all__ = ["BLOCKED_COLOUR", "DOWN_COLOUR", "UP_COLOUR", "ChartView", "scale_for"]

UP_COLOUR = "#c0392b"
DOWN_COLOUR = "#2471a3"
BLOCKED_COLOUR = "#7d3c98"


def scale_for(largest: float) -> tuple[float, str]:
    """The divisor and unit name that show `largest` with at most three digits."""
    for divisor, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if largest >= divisor:
            return divisor, unit
    return 1.0, "B"


def _per(bucket: int) -> str:
    if bucket == 1:
        return "per second"
    if bucket % 3600 == 0:
        hours = bucket // 3600
        return "per hour" if hours == 1 else f"per {hours} h"
    minutes = bucket // 60
    return "per minute" if minutes == 1 else f"per {minutes} min"


class ChartView(QChartView):
    """Up, down and blocked over a chart's time span; `show_chart` replaces the data."""

    def __init__(self) -> None:
        chart = QChart()
        chart.legend().setAlignment(Qt.AlignmentFlag.AlignTop)
        chart.setMargins(QMargins(4, 4, 4, 4))
        chart.setBackgroundRoundness(0)
        super().__init__(chart)
        self.setRenderHint(QPainter.RenderHint.Antialiasing)
        self.up, self.down = QLineSeries(), QLineSeries()
        self.up.setName("sent")
        self.down.setName("received")
        self.blocked = QScatterSeries()
        self.blocked.setName("blocked attempts")
        self.blocked.setMarkerSize(10)
        self.blocked.setColor(QColor(BLOCKED_COLOUR))
        self.blocked.setBorderColor(QColor(BLOCKED_COLOUR))
        self.x_axis, self.y_axis = QDateTimeAxis(), QValueAxis()
        self.y_axis.setLabelFormat("%.4g")
        self.y_axis.setMin(0)
        chart.addAxis(self.x_axis, Qt.AlignmentFlag.AlignBottom)
        chart.addAxis(self.y_axis, Qt.AlignmentFlag.AlignLeft)
        for series, colour in ((self.up, UP_COLOUR), (self.down, DOWN_COLOUR)):
            series.setPen(QPen(QColor(colour), 2))
        for each in (self.up, self.down, self.blocked):
            chart.addSeries(each)
            each.attachAxis(self.x_axis)
            each.attachAxis(self.y_axis)
        self.points = 0  # points shown, for tests

    def clear(self, title: str) -> None:
        """No data until the next answer (a range or app just chosen): nothing stale shown."""
        for each in (self.up, self.down, self.blocked):
            each.clear()
        self.points = 0
        self.chart().setTitle(title)  # escaped by the caller

    def show_chart(self, data: TrafficChart, span: str) -> None:
        largest = max((max(p.bytes_out, p.bytes_in) for p in data.points), default=0.0)
        divisor, unit = scale_for(largest)
        per = _per(data.bucket)
        up: list[QPointF] = []
        down: list[QPointF] = []
        blocked: list[QPointF] = []
        # A bucket with no traffic has no row: draw it as zero, so a line does not
        # bridge an idle stretch. Live points are seconds; gaps there are zero too.
        by_time = {int(p.time): p for p in data.points}
        first = int(max(data.start, data.known_from) // data.bucket * data.bucket)
        steps = int((data.end - first) // data.bucket) + 1
        for k in range(max(0, min(steps, 2000))):
            t = first + k * data.bucket
            p = by_time.get(t)
            ms = t * 1000.0
            up.append(QPointF(ms, p.bytes_out / divisor if p else 0.0))
            down.append(QPointF(ms, p.bytes_in / divisor if p else 0.0))
            if p and p.blocked:
                blocked.append(QPointF(ms, 0.0))
        self.up.replace(up)
        self.down.replace(down)
        self.blocked.replace(blocked)
        self.points = len(data.points)
        self.x_axis.setRange(
            QDateTime.fromSecsSinceEpoch(int(data.start)),
            QDateTime.fromSecsSinceEpoch(int(data.end)),
        )
        self.x_axis.setFormat("HH:mm:ss" if data.bucket < 60 else _date_format(data))
        self.y_axis.setRange(0, max(1.0, largest / divisor * 1.1))
        self.y_axis.applyNiceNumbers()
        self.y_axis.setTitleText(f"{unit} {per}" if data.bucket > 1 else f"{unit}/s")
        # QChart renders its title as rich text: an app's name must not restyle it.
        self.chart().setTitle(html.escape(f"{data.title}: {span}"))


def _date_format(data: TrafficChart) -> str:
    return "HH:mm" if data.end - data.start <= 86400 else "dd MMM HH:mm"
