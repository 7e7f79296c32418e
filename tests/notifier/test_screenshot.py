"""The picture in the docs is the real window, rendered offscreen by this test.

It always saves the picture in its tmp dir; with SNITCH_WRITE_DOCS=1 it also replaces
docs/popup.png (`SNITCH_WRITE_DOCS=1 pytest tests/notifier -k docs_picture`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from PySide6.QtGui import QImage

from snitch_notifier.identity import desktop_identity
from snitch_notifier.popup import PromptWindow

DOCS_PICTURE = Path(__file__).resolve().parents[2] / "docs" / "popup.png"


def test_docs_picture(popup, prompt_factory, qtbot, tmp_path: Path) -> None:
    window = PromptWindow(clock=popup.clock, identify=desktop_identity)
    qtbot.addWidget(window)
    now = popup.clock.now
    window.add_prompt(prompt_factory(1, deadline=now + 30))
    for i, host in ((2, "telemetry.example.net"), (3, "cdn.example.com")):
        window.add_prompt(prompt_factory(i, host=host, deadline=now + 30))
    popup.clock.now += 7
    window.tick()
    picture = tmp_path / "popup.png"
    assert window.grab().save(str(picture))
    popup.taken += 1
    image = QImage(str(picture))
    assert (image.width(), image.height()) == (window.width(), window.height())
    if os.environ.get("SNITCH_WRITE_DOCS") == "1":
        shutil.copyfile(picture, DOCS_PICTURE)
