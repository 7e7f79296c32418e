"""Ctrl-C and systemd's SIGTERM end the popup and the monitor whenever they come: also in the
moment between the first window showing and the event loop starting, which a loaded CI
machine hit (the monitor's feed had already asked snitchd; Ctrl-C was then lost and the
window ran on)."""

from __future__ import annotations

import os
import signal

import pytest
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from snitch_notifier.quitting import quitting_on_signals

_NEVER = 7  # the code the fail-safe timer exits with: the signal was lost


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_before_the_loop_runs_still_ends_it(
    qapp: QApplication, sig: signal.Signals
) -> None:
    failsafe = QTimer()
    failsafe.setSingleShot(True)
    failsafe.timeout.connect(lambda: qapp.exit(_NEVER))
    failsafe.start(5000)
    with quitting_on_signals(qapp):
        os.kill(os.getpid(), sig)  # its Python handler runs here, before exec
        assert qapp.exec() == 0
    failsafe.stop()


def test_leaving_gives_the_signals_back(qapp: QApplication) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with quitting_on_signals(qapp):
        assert signal.getsignal(signal.SIGINT) is not before[signal.SIGINT]
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert signal.set_wakeup_fd(-1) == -1  # no wake-up fd left behind
