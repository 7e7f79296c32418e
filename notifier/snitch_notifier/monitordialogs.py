"""The Network Monitor's two small windows about a destination: "allow / deny this from now
on" (the popup's choices, and the rule they make shown before it is made) and "why?" (snitchd's
explanation of the verdict the destination gets now).

Neither is modal: the monitor keeps refreshing behind them. The rule dialog only chooses; the
window sends the choice through its feed and tells the dialog how it went (`made`, `refused`),
so a refusal (not an admin, a scope that cannot apply) is read where the choice was made.
Every name shown comes from an app or a DNS answer: it is escaped, or shown as plain text.
"""

from __future__ import annotations

import html
import os
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QStandardItemModel
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from snitch_common.answers import Action, Scope
from snitch_common.errors import SnitchError
from snitch_notifier.bridge import RuleRow
from snitch_notifier.monitoractions import (
    LASTING_DURATIONS,
    RuleChoice,
    monitor_scopes,
    rule_of,
)
from snitch_notifier.traffic import AppKey, HostTraffic, user_name

__all__ = ["RuleDialog", "WhyDialog", "describe"]

_ERROR_STYLE = "color: #b03a2e"


def describe(app: AppKey, host: HostTraffic) -> str:
    """`backup-sync → api.example.org (203.0.113.7), port 9000/tcp`, escaped for rich text."""
    name = os.path.basename(app.app) or app.app
    where = host.host if host.host == host.address else f"{host.host} ({host.address})"
    port = f"port {host.port}/{host.proto}" if host.port is not None else host.proto
    return html.escape(f"{name} → {where}, {port}")


class RuleDialog(QDialog):
    """Choose the rule for a destination "from now on"; `chosen` carries the choice."""

    chosen = Signal(object)  # RuleChoice

    def __init__(
        self, app: AppKey, host: HostTraffic, action: Action, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.app, self.host = app, host
        self.result_text = ""  # what snitchd did, once it did
        self.setWindowTitle(f"{action.value.capitalize()} from now on — snitch")
        self.heading = QLabel()
        self.heading.setTextFormat(Qt.TextFormat.RichText)
        self.heading.setWordWrap(True)
        self._make_choices(action)
        self.only_user = QCheckBox(f"Only when it runs as {user_name(app.uid)}")
        self.only_user.setVisible(app.uid >= 0)
        self.preview = QLabel()
        self.preview.setTextFormat(Qt.TextFormat.PlainText)
        self.preview.setWordWrap(True)
        self.preview.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status = QLabel()
        self.status.setTextFormat(Qt.TextFormat.PlainText)
        self.status.setWordWrap(True)
        buttons = QDialogButtonBox()
        self.make = QPushButton("&Make rule")
        self.make.setDefault(True)
        buttons.addButton(self.make, QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.submit)
        buttons.rejected.connect(self.reject)
        form = QFormLayout()
        form.addRow("&Action", self.action)
        form.addRow("&For", self.duration)
        form.addRow("&Scope", self.scope)
        form.addRow("", self.only_user)
        layout = QVBoxLayout(self)
        layout.addWidget(self.heading)
        layout.addLayout(form)
        layout.addWidget(self.preview)
        layout.addWidget(self.status)
        layout.addWidget(buttons)
        for box in (self.action, self.duration, self.scope):
            box.currentIndexChanged.connect(self._changed)
        self.only_user.toggled.connect(self._changed)
        self.resize(560, self.sizeHint().height())
        self._changed()

    def _make_choices(self, action: Action) -> None:
        """The popup's three choices: action, for how long (lasting ones only), scope."""
        self.action = QComboBox()
        for a in (Action.ALLOW, Action.DENY, Action.REJECT):
            self.action.addItem(a.value.capitalize(), a)
        self.action.setCurrentIndex(self.action.findData(action))
        self.duration = QComboBox()
        for value, text in LASTING_DURATIONS:
            self.duration.addItem(text, value)
        self.duration.setCurrentIndex(self.duration.findData("forever"))
        self.scope = QComboBox()
        model = self.scope.model()
        assert isinstance(model, QStandardItemModel)
        for i, option in enumerate(monitor_scopes(self.app, self.host)):
            self.scope.addItem(option.label, option.scope)
            if option.why_not is not None:
                item = model.item(i)
                item.setEnabled(False)
                item.setToolTip(option.why_not)
        self.scope.setCurrentIndex(0)

    def choice(self) -> RuleChoice:
        return RuleChoice(
            self.app,
            self.host,
            self.action.currentData(),
            self.scope.currentData(),
            self.duration.currentData(),
            self.only_user.isChecked() and self.app.uid >= 0,
        )

    def set_scope(self, scope: Scope) -> None:
        self.scope.setCurrentIndex(self.scope.findData(scope))

    def _changed(self, *_: Any) -> None:
        choice = self.choice()
        verb = choice.action.value.capitalize()
        self.heading.setText(f"<b>{verb}</b> {describe(self.app, self.host)}, from now on")
        self.status.setText("")
        self.status.setStyleSheet("")
        try:
            rule = rule_of(choice, None)
        except SnitchError as exc:
            self.preview.setText(exc.message)
            self.make.setEnabled(False)
            return
        text = f"The rule: {rule}"
        if rule.exe is not None:
            if os.access(rule.exe, os.R_OK):
                text += f"\napp= pinned to the sha256 of {rule.exe} as it is now"
            else:
                text += f"\n{rule.exe} cannot be read here: the rule names its path alone"
        self.preview.setText(text)
        self.make.setEnabled(True)

    def submit(self) -> None:
        self.make.setEnabled(False)
        self.status.setStyleSheet("")
        self.status.setText("asking snitchd…")
        self.chosen.emit(self.choice())

    def made(self, row: RuleRow, existing: bool) -> None:
        """snitchd made the rule (or had it already): the dialog's work is done."""
        self.result_text = f"rule {row.id} {'was there already' if existing else 'added'}"
        self.accept()

    def refused(self, message: str) -> None:
        self.status.setStyleSheet(_ERROR_STYLE)
        self.status.setText(message)
        self.make.setEnabled(True)


class WhyDialog(QDialog):
    """snitchd's explanation of a destination's verdict (`Explain`), as a person reads it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Why? — snitch")
        self.text = QLabel()
        self.text.setTextFormat(Qt.TextFormat.RichText)
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.text.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.text, 1)
        layout.addWidget(close)
        self.winner = -1
        self.setMinimumWidth(640)

    def asking(self, app: AppKey, host: HostTraffic) -> None:
        self.winner = -1
        self.text.setText(f"<b>{describe(app, host)}</b><br>asking snitchd…")

    def failed(self, message: str) -> None:
        self.text.setText(f"<span style='{_ERROR_STYLE}'>{html.escape(message)}</span>")

    def show_answer(self, app: AppKey, host: HostTraffic, answer: dict[str, Any]) -> None:
        e = html.escape
        self.winner = int(answer.get("winner", -1))
        verdict = str(answer.get("verdict", "?"))
        lines = [f"<b>{describe(app, host)}</b>"]
        if host.last_action:
            why = f" ({e(host.last_reason)})" if host.last_reason else ""
            lines.append(f"Its last attempt: <b>{e(host.last_action)}</b>{why}.")
        matches = [(int(i), str(t)) for i, t in answer.get("matches", [])]
        if self.winner >= 0:
            lines.append(f"Now: <b>{e(verdict)}</b> — rule {self.winner} wins.")
        else:
            lines.append(
                f"Now: <b>{e(verdict)}</b> — no rule matches: the default action, or a prompt."
            )
        names = ", ".join(str(n) for n in answer.get("names", ())) or "none"
        lines.append(f"Judged as: to {e(str(answer.get('dst', host.address)))}, names: {e(names)}")
        if answer.get("note"):
            lines.append(f"Note: {e(str(answer['note']))}")
        if matches:
            shown = [
                f"<b>{i}: {e(t)}</b>" if i == self.winner else f"{i}: {e(t)}" for i, t in matches
            ]
            lines.append(
                "Matching rules, best first:<br>&nbsp;&nbsp;" + "<br>&nbsp;&nbsp;".join(shown)
            )
        else:
            lines.append("Matching rules: none")
        lines.append(f"<small>Precedence: {e(str(answer.get('precedence', '')))}</small>")
        self.text.setText("<br><br>".join(lines))
        self.adjustSize()  # the whole explanation, however many rules match
