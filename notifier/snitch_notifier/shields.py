"""snitch's own icon, a shield in four states, shipped in the package (`art/snitch-*.svg`).

Qt-free, so that the notifications mode (no Qt at all) names the same files: Qt's `hicolor`
fallback has no shield and its `SP_VistaShield` is a null icon on Linux, so a tray outside
GNOME/KDE/XFCE showed an empty square (issue 15), and one icon for every state hid that snitchd
had stopped.
"""

from __future__ import annotations

import enum
from importlib import resources

__all__ = ["Shield", "shield_path"]


class Shield(enum.Enum):
    """What the notifier's icon says."""

    WATCHING = "watching"  # snitchd runs, nothing waits for you
    ASKING = "asking"  # prompts wait for an answer
    PAUSED = "paused"  # prompting is paused
    DAEMON_DOWN = "daemon-down"  # snitchd is not on the bus (or we are not its agent)


def shield_path(state: Shield) -> str:
    """The SVG file of `state`, inside the installed package."""
    return str(resources.files("snitch_notifier") / "art" / f"snitch-{state.value}.svg")
