"""How snitchctl prints a result: JSON with stable keys under --json, else the text for people."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

__all__ = ["out"]


def out(args: argparse.Namespace, data: Any, text: Callable[[], str]) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else text())
