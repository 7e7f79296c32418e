"""`snitchctl doctor` (run as `python -m snitchd.doctor`): is the rule store sound?

snitchctl runs this module in a process of its own rather than importing the daemon (the CLI
stays light, and this needs SQLite and the schema only snitchd knows). It works while snitchd
is stopped, or refuses to start: that is when it is needed. It opens the database read-only,
checks it (PRAGMA quick_check and integrity_check, the schema version, every rule's text) and
says what to do for each problem. Exit status: 0 all well, 1 a problem found, 4 not root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from snitch_common.errors import SnitchError
from snitchd.config import DEFAULT_PATH, load_config
from snitchd.store import Finding, check_store

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="snitchctl doctor", description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=None, help=f"default {DEFAULT_PATH}")
    p.add_argument("--database", help="the database to check (default: the config's)")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("snitchctl: error: doctor reads snitch's database, which only root may read "
              "(try: sudo snitchctl doctor)", file=sys.stderr)  # fmt: skip
        return 4
    findings: list[Finding] = []
    database = args.database
    if database is None:
        try:
            database = load_config(args.config).database
            findings.append(Finding(False, f"config {args.config or DEFAULT_PATH}: valid"))
        except SnitchError as exc:
            print(f"problem: {exc}\n  what to do: fix the config, or give --database")
            return 1
    findings += check_store(database)
    if args.json:
        rows = [{"problem": f.problem, "what": f.what, "advice": f.advice} for f in findings]
        print(json.dumps({"database": database, "findings": rows}, indent=2))
    else:
        print(f"database {database}")
        for f in findings:
            print(f"{'problem' if f.problem else 'ok'}: {f.what}")
            if f.advice:
                print(f"  what to do: {f.advice}")
    return 1 if any(f.problem for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
