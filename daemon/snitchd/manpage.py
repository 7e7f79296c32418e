"""snitchd(8), made from its parser: `python -m snitchd.manpage DIR` (install.sh runs it).

The options come from `build_parser()`; signals, files, the journal fields and the metrics
are written here, next to the code that defines them (`journal.MESSAGE_IDS`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from snitch_common.manpage import Page, config_to_roff, markdown_to_roff, text_page, write_page
from snitchd.config import DEFAULT_PATH
from snitchd.journal import Event
from snitchd.main import build_parser

__all__ = ["config_page", "main", "rules_page", "snitchd_page"]


def _items(pairs: tuple[tuple[str, str], ...], style: str = ".B") -> str:
    return "\n".join(f".TP\n{style} {head}\n{text}" for head, text in pairs)


def snitchd_page() -> Page:
    description = (
        "snitchd holds the first packet of each new outbound flow in the kernel (an NFQUEUE "
        "rule on the OUTPUT hook) until its rules, or the person at the desk through an agent, "
        "decide: allow, deny or reject. Every decision goes to the connection log "
        "(\\fBsnitchctl log\\fR). It runs as root, normally as the systemd service "
        "\\fBsnitchd.service\\fR; \\fBsnitchctl\\fR(1) talks to it over the system bus."
    )
    signals = _items(
        (
            ("SIGHUP", "reload the config (fixed keys such as queue and database need a restart)"),
            ("SIGTERM, SIGINT", "stop: remove the kernel rules (unless fail_mode = \"closed\" "
             "and stay_closed_when_stopped) and flush the log"),
        )
    )  # fmt: skip
    events = ", ".join(e.value for e in Event)
    journal = (
        "Under systemd (\\fBJOURNAL_STREAM\\fR set to snitchd's stderr) lines go to the journal "
        "with their priority and these fields: \\fBSNITCH_EVENT\\fR (" + events + "), "
        "\\fBMESSAGE_ID\\fR (one per event kind, see /usr/lib/systemd/catalog/snitch.catalog), "
        "\\fBSNITCH_EXE\\fR, \\fBSNITCH_DST\\fR, \\fBSNITCH_VERDICT\\fR, \\fBSNITCH_RULE_ID\\fR, "
        "\\fBSNITCH_UID\\fR, \\fBSNITCH_ALERT\\fR. For example:\n"
        ".nf\njournalctl \\-u snitchd \\-p warning\njournalctl SNITCH_EVENT=alert \\-o verbose\n"
        ".fi\nElsewhere lines are plain text on stderr."
    )
    metrics = (
        "With \\fBmetrics_file\\fR set in the config, snitchd writes its counters in the "
        "Prometheus text format to that file every \\fBmetrics_interval\\fR seconds (atomically, "
        "for node_exporter's textfile collector); \\fBsnitchctl metrics\\fR prints the same text. "
        "snitchd never opens an IP socket."
    )
    files = _items(
        (
            (str(DEFAULT_PATH), "the config (TOML)"),
            ("/var/lib/snitch/snitch.db", "rules and the connection log (SQLite)"),
            ("/run/snitch/metrics.prom", "the metrics, when metrics_file names it"),
        ),
        ".I",
    )
    exit_status = _items(
        (("0", "stopped cleanly"), ("1", "a start-up error: the message says what to do"))
    )
    see_also = ".BR snitchctl (1),\n.BR systemd.exec (5),\n.BR journalctl (1),\n.BR iptables (8)"
    return Page(
        build_parser(),
        8,
        "the snitch per-application outbound firewall daemon",
        (
            ("description", description),
            ("signals", signals),
            ("logging", journal),
            ("metrics", metrics),
            ("exit status", exit_status),
            ("files", files),
            ("see also", see_also),
        ),
    )


def config_page(shipped: str) -> str:
    """snitchd.toml(5) from the shipped, commented config (systemd/snitchd.toml)."""
    intro = (
        "snitchd reads /etc/snitch/snitchd.toml (TOML) at start and on SIGHUP (\\fBsystemctl "
        "reload snitchd\\fR). Every key is optional; an unknown key or a bad value stops "
        "snitchd (or refuses the reload) with an error naming the key. Check a file with "
        "\\fBsnitchd \\-\\-config PATH \\-\\-check\\-config\\fR. The keys, as the "
        "installed file shows them with their defaults:"
    )
    return text_page(
        "snitchd.toml",
        5,
        "configuration of the snitch firewall daemon",
        (
            ("description", intro),
            ("options", config_to_roff(shipped)),
            ("see also", ".BR snitchd (8),\n.BR snitch\\-rules (5)"),
        ),
    )


def rules_page(doc: str) -> str:
    """snitch-rules(5) from docs/rules.md: the grammar, precedence, examples."""
    return text_page(
        "snitch-rules",
        5,
        "the rule language of the snitch firewall",
        (
            ("description", markdown_to_roff(doc)),
            ("see also", ".BR snitchctl (1),\n.BR snitchd (8)"),
        ),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m snitchd.manpage", description="write snitchd's man pages"
    )
    parser.add_argument("man8", type=Path, help="directory for snitchd.8")
    parser.add_argument("--man5", type=Path, help="directory for snitchd.toml.5, snitch-rules.5")
    parser.add_argument("--config", type=Path, help="the shipped config (systemd/snitchd.toml)")
    parser.add_argument("--rules", type=Path, help="the rule language's doc (docs/rules.md)")
    args = parser.parse_args(argv)
    print(write_page(snitchd_page(), args.man8))
    if args.man5:
        args.man5.mkdir(parents=True, exist_ok=True)
        if args.config:
            (args.man5 / "snitchd.toml.5").write_text(config_page(args.config.read_text()))
        if args.rules:
            (args.man5 / "snitch-rules.5").write_text(rules_page(args.rules.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
