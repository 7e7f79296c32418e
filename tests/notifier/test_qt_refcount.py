"""The notifier emits Qt signals for the life of a desktop session (prompts, the monitor's
rates every second): the PySide6 it runs on must not leak or lose references when it does.

PySide6-Essentials 6.12.0 drops one reference to `True` at every `SignalInstance.emit`; on
Python 3.11, where True is not immortal, the process aborts ("bool_dealloc: deallocating True")
after a few thousand emits. pyproject.toml keeps PySide6 below 6.12 for that; this test fails
on 6.12.0 (measured: -100 after 100 emits) and says when the pin may go.
"""

from __future__ import annotations

import sys

from PySide6.QtCore import QObject, Signal


class _Emitter(QObject):
    ping = Signal(object)


def test_emitting_a_signal_keeps_the_refcount_of_true(qtbot) -> None:
    emitter = _Emitter()
    got: list[object] = []
    emitter.ping.connect(got.append)
    before = sys.getrefcount(True)
    for i in range(200):
        emitter.ping.emit(i)
    after = sys.getrefcount(True)
    assert len(got) == 200
    assert after >= before - 10, f"True lost {before - after} references in 200 emits"
