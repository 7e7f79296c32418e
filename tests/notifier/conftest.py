"""Notifier tests run Qt offscreen: no display needed, and `widget.grab()` still renders.

Fixtures build prompts as snitchd sends them and a clock the tests move by hand, so the
countdown is tested without sleeping.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from snitch_common.answers import Answer
from snitch_common.bus import PromptView
from snitch_notifier.icons import use_desktop_icon_theme
from snitch_notifier.identity import AppIdentity
from snitch_notifier.pending import Expired
from snitch_notifier.popup import ARM_DELAY, PromptWindow

# Before pytest-qt makes the QApplication (lazily, in the first test that needs it).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

NOW = 1_700_000_000.0
HOLD_MAX = 600.0  # snitchd's prompt_hold_max default
TIMEOUT = 30.0  # and its prompt_timeout

BASE_PROMPT = PromptView(
    id=1,
    exe="/usr/bin/python3.11",
    pid=4242,
    uid=1000,
    user="alice",
    cmdline=("python3.11", "sync.py", "--all"),
    parents=((4100, "/usr/bin/bash"), (1, "/usr/lib/systemd/systemd")),
    sha256="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    proto="tcp",
    dst="203.0.113.7",
    port=443,
    iface="eth0",
    host="updates.example.org",
    rule_host="updates.example.org",
    deadline=NOW + 30,
    default_action="deny",
)


@dataclass
class Clock:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


def make_prompt(prompt_id: int = 1, **changes: Any) -> PromptView:
    return replace(BASE_PROMPT, id=prompt_id, **changes)


def fixed_identity(exe: str | None) -> AppIdentity:
    """The identity lookup without the machine's desktop files: tests must not depend on
    what is installed (the lookup itself has its own tests)."""
    name = os.path.basename(exe) if exe else "unknown program"
    return AppIdentity(name, "application-x-executable")


@dataclass
class Popup:
    """A prompt window on a hand-moved clock, with every answer and expiry it emitted."""

    window: Any
    clock: Clock
    shots: Path
    answers: list[Answer] = field(default_factory=list)
    expired: list[Expired] = field(default_factory=list)
    deferred: list[int] = field(default_factory=list)
    taken: int = 0

    def hold(self, prompt_id: int) -> None:
        """snitchd's reply to DeferPrompt: the flow is held until prompt_hold_max after it
        was asked (tests/integration/test_prompts_ui.py checks the real one does so)."""
        self.deferred.append(prompt_id)
        prompt = self.window.pending.find(prompt_id)
        if prompt is not None:
            asked = prompt.deadline - TIMEOUT
            self.window.held(prompt_id, asked + HOLD_MAX - self.clock.now)

    def arm(self) -> None:
        """Let the new prompt's guard time pass, as a person would before answering."""
        self.clock.now += ARM_DELAY
        self.window.tick()

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        assert self.window.grab().save(str(path)), f"cannot save {path}"
        self.taken += 1
        return path


@pytest.fixture
def popup(qtbot: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Popup]:
    use_desktop_icon_theme()
    clock = Clock()
    window = PromptWindow(clock=clock, identify=fixed_identity)
    qtbot.addWidget(window)
    p = Popup(window, clock, tmp_path)
    window.answered.connect(p.answers.append)
    window.expired.connect(p.expired.append)
    window.defer_wanted.connect(p.hold)
    yield p
    if p.taken == 0:
        p.shot(request.node.name)


@pytest.fixture
def prompt_factory() -> Callable[..., PromptView]:
    return make_prompt
