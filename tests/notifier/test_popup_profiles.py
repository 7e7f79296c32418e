"""The popup's "In" list (issue 17): while a profile is active, an answer's rule holds in every
profile or only in that one; with no profile active, the list is not there at all."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from snitch_common.answers import Action, Answer, Reach, Scope
from snitch_common.choices import reach_options


def _activate(qtbot: Any, window: Any) -> None:
    """As if the person clicked the popup: only then does it get the keyboard."""
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=2000)


def test_no_profile_no_list_and_the_rule_holds_everywhere(popup, prompt_factory) -> None:
    popup.window.add_prompt(prompt_factory(3))
    popup.arm()
    assert not popup.window._reach.isVisible()
    popup.window._allow.click()
    assert popup.answers == [Answer(3, Action.ALLOW, "forever", Scope.EXACT, Reach.EVERYWHERE)]


def test_a_profile_offers_every_profile_or_this_one_only(popup, prompt_factory) -> None:
    """Every profile first, as the default: an answer means what it meant before profiles."""
    popup.window.add_prompt(prompt_factory(4, profile="home"))
    popup.arm()
    popup.shot("profile-choice")
    reach = popup.window._reach
    assert reach.isVisible()
    assert [reach.itemText(i) for i in range(reach.count())] == [
        "every profile",
        "profile home only",
    ]
    assert reach.currentData() == "everywhere"
    reach.setCurrentIndex(reach.findData("profile"))
    popup.window._allow.click()
    assert popup.answers == [Answer(4, Action.ALLOW, "forever", Scope.EXACT, Reach.PROFILE)]


def test_alt_i_reaches_the_list_and_enter_answers_with_it(popup, prompt_factory, qtbot) -> None:
    popup.window.add_prompt(prompt_factory(5, profile="work"))
    popup.arm()
    _activate(qtbot, popup.window)
    qtbot.keyClick(popup.window, "i", Qt.KeyboardModifier.AltModifier)
    assert popup.window._reach.hasFocus()
    qtbot.keyClick(popup.window._reach, Qt.Key.Key_Down)
    popup.shot("profile-keyboard")
    qtbot.keyClick(popup.window, Qt.Key.Key_Return)
    assert popup.answers == [Answer(5, Action.ALLOW, "forever", Scope.EXACT, Reach.PROFILE)]


def test_the_next_prompt_starts_again_from_every_profile(popup, prompt_factory) -> None:
    """A choice is never carried over to another prompt, nor the list to one asked in no
    profile (the profile was switched off in between)."""
    popup.window.add_prompt(prompt_factory(6, profile="home"))
    popup.window.add_prompt(prompt_factory(7, profile="home", dst="203.0.113.9"))
    popup.window.add_prompt(prompt_factory(8, dst="203.0.113.10"))
    popup.arm()
    popup.window._reach.setCurrentIndex(popup.window._reach.findData("profile"))
    popup.window._deny.click()
    popup.arm()
    assert popup.window.current is not None and popup.window.current.id == 7
    assert popup.window._reach.currentData() == "everywhere"
    popup.window._deny.click()
    popup.arm()
    assert popup.window.current is not None and popup.window.current.id == 8
    assert not popup.window._reach.isVisible()
    popup.window._deny.click()
    assert [a.reach for a in popup.answers] == [Reach.PROFILE, Reach.EVERYWHERE, Reach.EVERYWHERE]


def test_reach_options_are_none_without_a_profile(prompt_factory) -> None:
    assert reach_options(prompt_factory()) == []
    labels = [o.label for o in reach_options(prompt_factory(profile="cafe-2"))]
    assert labels == ["every profile", "profile cafe-2 only"]
