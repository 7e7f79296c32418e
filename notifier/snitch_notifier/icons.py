"""Icons: the asking app's, the notifier's own, and an icon theme where Qt brought none.

The popup loads what `identity` found (a theme name or a file) and falls back step by step to
something generic, so a prompt never shows an empty square.

Our own icon is a shield in four states (`shields`).
"""

from __future__ import annotations

import os

from PySide6.QtGui import QIcon

from snitch_notifier.identity import GENERIC_ICON, AppIdentity, data_dirs
from snitch_notifier.shields import Shield, shield_path

__all__ = ["app_icon", "snitch_icon", "use_desktop_icon_theme"]


def use_desktop_icon_theme() -> None:
    """Give Qt an icon theme when its platform plugin brings none.

    Desktop platform themes (GNOME, KDE) set the user's theme; the offscreen and minimal
    plugins leave the name empty and search only `:/icons`, so every `fromTheme` would fail.
    Then: search the XDG icon dirs, take the first installed common theme, and fall back to
    `pixmaps` for entries such as `Icon=python3.11`. Never overrides a theme already set.
    """
    if QIcon.themeName():
        return
    dirs = data_dirs(os.environ)
    # os.path.isdir, not Path.is_dir: an unreadable dir is "no", not PermissionError.
    icons = [str(d / "icons") for d in dirs if os.path.isdir(d / "icons")]
    QIcon.setThemeSearchPaths([*QIcon.themeSearchPaths(), *icons])
    QIcon.setFallbackSearchPaths([str(d / "pixmaps") for d in dirs if os.path.isdir(d / "pixmaps")])
    for theme in ("Adwaita", "breeze", "hicolor"):
        if any(os.path.isdir(os.path.join(i, theme)) for i in icons):
            QIcon.setThemeName(theme)
            return


def app_icon(identity: AppIdentity, fallback: QIcon) -> QIcon:
    """The entry's icon (a path or a theme name), the theme's generic program icon, or
    `fallback` when the theme has neither."""
    if identity.icon.startswith("/"):
        icon = QIcon(identity.icon) if os.path.exists(identity.icon) else QIcon()
    else:
        icon = QIcon.fromTheme(identity.icon)
    if icon.isNull():
        icon = QIcon.fromTheme(GENERIC_ICON)
    return fallback if icon.isNull() else icon


def snitch_icon(state: Shield = Shield.WATCHING) -> QIcon:
    """Our shield in `state`."""
    return QIcon(shield_path(state))
