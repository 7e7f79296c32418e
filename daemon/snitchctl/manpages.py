"""snitchctl(1), made from its parser: `python -m snitchctl.manpages DIR` (install.sh runs it).

Options and subcommands come from `build_parser()`; the examples from `snitchctl.examples`,
the same ones `--help` shows; the rest (exit status, environment, files) is written here.
"""

from __future__ import annotations

import sys
from pathlib import Path

from snitch_common.manpage import Page, write_page
from snitchctl.examples import EXAMPLES
from snitchctl.main import build_parser

__all__ = ["snitchctl_page"]


def _roff(text: str) -> str:
    return text.replace("\\", "\\e").replace("-", "\\-")


def _examples() -> str:
    out = []
    for name, examples in EXAMPLES.items():
        out.append(f".SS {name}")
        out += [f".nf\n{_roff(e)}\n.fi" for e in examples]
    return "\n".join(out)


def snitchctl_page() -> Page:
    exit_status = "\n".join(
        f".TP\n.B {code}\n{text}"
        for code, text in (
            ("0", "ok"),
            ("1", 'failed, or a query answered "no"'),
            ("2", "usage: a bad option or rule text"),
            ("3", "snitchd unreachable: not running, or no system bus (status still prints "
             "what the kernel does meanwhile)"),
            ("4", "not authorized: an admin-only action, or the D\\-Bus policy refused"),
        )
    )  # fmt: skip
    environment = (
        ".TP\n.B NO_COLOR\nany non\\-empty value turns colour off (it is only used on a "
        "terminal anyway)\n"
        ".TP\n.B DBUS_SYSTEM_BUS_ADDRESS\nthe system bus snitchd is on"
    )
    files = (
        ".TP\n.I /etc/snitch/snitchd.toml\nread by \\fBstatus\\fR for the fail mode when "
        "snitchd is down\n"
        ".TP\n.I /usr/share/bash\\-completion/completions/snitchctl\nbash completion"
    )
    see_also = ".BR snitchd (8),\n.BR journalctl (1),\n.BR iptables (8)"
    return Page(
        build_parser(),
        1,
        "control snitch, the per-application outbound firewall",
        (
            ("examples", _examples()),
            ("exit status", exit_status),
            ("environment", environment),
            ("files", files),
            ("see also", see_also),
        ),
    )


if __name__ == "__main__":
    print(write_page(snitchctl_page(), Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
