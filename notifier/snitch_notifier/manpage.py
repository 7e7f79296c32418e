"""snitch-notifier(1), made from its parser: `python -m snitch_notifier.manpage DIR`
(install.sh runs it). Imports no Qt: only the parser."""

from __future__ import annotations

import sys
from pathlib import Path

from snitch_common.manpage import Page, write_page
from snitch_notifier.app import _parser

__all__ = ["notifier_page"]


def notifier_page() -> Page:
    description = (
        "The desktop agent of snitch: it registers with snitchd on the system bus as the "
        "agent of the user logged in, and shows a popup when an app connects somewhere no "
        "rule covers (allow or deny, once, for a while or forever; for this app, script or "
        "host), a tray icon, and alerts. Without a display it falls back to desktop "
        "notifications. It is started with the graphical session (the systemd user unit "
        "\\fBsnitch\\-notifier.service\\fR, or the XDG autostart entry)."
    )
    return Page(
        _parser(),
        1,
        "the snitch popup: asks before apps connect somewhere new",
        (
            ("description", description),
            ("see also", ".BR snitchctl (1),\n.BR snitchd (8),\n.BR snitch\\-rules (5)"),
        ),
    )


if __name__ == "__main__":
    print(write_page(notifier_page(), Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
