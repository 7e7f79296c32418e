"""The top of the popup: who asks (the app's icon, name and path) and every detail snitchd sent
about the connection, one row each, with the rows a prompt has no value for hidden.

A view only: `show_prompt` fills it from a `PromptView`; long values are cut in the middle and
the tooltip keeps the full text.
"""

from __future__ import annotations

import html
import os

from PySide6.QtCore import Qt
from PySide6.QtGui import QFont, QIcon, QPalette
from PySide6.QtWidgets import QFormLayout, QFrame, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from snitch_common.bus import PromptView
from snitch_notifier.icons import app_icon
from snitch_notifier.identity import AppIdentity

__all__ = ["DETAILS", "PromptDetails"]

DETAILS = ("Warning", "To", "Port", "Process", "Script", "Parent", "Command", "SHA-256")
_ICON = 48
_VALUE_WIDTH = 370  # room for a detail's value next to its label, for eliding


class PromptDetails(QWidget):
    def __init__(self, width: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._width = width
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.setSpacing(10)
        box.addLayout(self._build_header())
        box.addWidget(_line())
        box.addLayout(self._build_details())
        box.addWidget(_line())

    def _build_header(self) -> QHBoxLayout:
        header = QHBoxLayout()
        header.setSpacing(12)
        self.icon = QLabel()
        self.icon.setFixedSize(_ICON, _ICON)
        header.addWidget(self.icon, 0, Qt.AlignmentFlag.AlignTop)
        titles = QVBoxLayout()
        titles.setSpacing(2)
        self.title = QLabel()
        self.title.setTextFormat(Qt.TextFormat.RichText)
        title_font = self.title.font()
        title_font.setPointSizeF(title_font.pointSizeF() * 1.3)
        self.title.setFont(title_font)
        self.path = QLabel()
        _dim(self.path)
        titles.addWidget(self.title)
        titles.addWidget(self.path)
        header.addLayout(titles, 1)
        return header

    def _build_details(self) -> QFormLayout:
        self.details = QFormLayout()
        self.details.setHorizontalSpacing(14)
        self.details.setVerticalSpacing(4)
        self.rows: dict[str, QLabel] = {}
        for key in DETAILS:
            value = QLabel()
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            name = QLabel(key)
            _dim(name)
            self.details.addRow(name, value)
            self.rows[key] = value
        bold = self.rows["To"].font()
        bold.setWeight(QFont.Weight.Bold)
        self.rows["To"].setFont(bold)
        self.rows["Warning"].setStyleSheet("color: #c0392b; font-weight: bold")
        return self.details

    def show_prompt(self, prompt: PromptView, identity: AppIdentity, fallback: QIcon) -> None:
        self.icon.setPixmap(app_icon(identity, fallback).pixmap(_ICON, _ICON))
        self.title.setText(f"<b>{html.escape(identity.name)}</b> wants to connect")
        _set_elided(self.path, prompt.who, self._width - _ICON - 44)
        where = f"{prompt.host}  ({prompt.dst})" if prompt.host else prompt.dst
        ported = prompt.proto in ("tcp", "udp")
        port = f"{prompt.port} / {prompt.proto.upper()}" if ported else prompt.proto.upper()
        via = f"  ·  via {prompt.iface}" if prompt.iface else ""
        user = prompt.user or (f"uid {prompt.uid}" if prompt.uid is not None else "unknown")
        pid = f"pid {prompt.pid}" if prompt.pid is not None else "no process"
        parents = "  ←  ".join(f"{os.path.basename(e)} ({p})" for p, e in prompt.parents[:3])
        warnings = list(prompt.warnings)
        if not prompt.verified:
            warnings.append("its rules do not apply: the path names another file here")
        elif prompt.tampered:
            warnings.append("its allow rules do not apply")
        values = {
            "Warning": "; ".join(warnings),
            "To": where,
            "Port": port + via,
            "Process": f"{pid}  ·  user {user}",
            "Parent": parents,
            "Script": prompt.script or "",
            "Command": " ".join(prompt.cmdline),
            "SHA-256": prompt.sha256 or "",
        }
        for key, text in values.items():
            _set_elided(self.rows[key], text, _VALUE_WIDTH)
            self.details.setRowVisible(self.rows[key], bool(text))
        if prompt.parents:
            self.rows["Parent"].setToolTip("\n".join(f"{p}  {e}" for p, e in prompt.parents))


def _line() -> QFrame:
    line = QFrame()
    line.setFrameShape(QFrame.Shape.HLine)
    line.setFrameShadow(QFrame.Shadow.Sunken)
    return line


def _dim(label: QLabel) -> None:
    """Secondary text (labels, the path) in the palette's placeholder colour."""
    label.setForegroundRole(QPalette.ColorRole.PlaceholderText)


def _set_elided(label: QLabel, text: str, width: int) -> None:
    """Long paths and command lines are cut in the middle; the tooltip keeps the full text."""
    shown = label.fontMetrics().elidedText(text, Qt.TextElideMode.ElideMiddle, width)
    label.setText(shown)
    label.setToolTip(text if shown != text else "")
