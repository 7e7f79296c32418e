"""The metrics file: snitchd's status in Prometheus text, for node_exporter's textfile collector.

snitchd never speaks IP (its unit has `IPAddressDeny=any`, and a root daemon with a listening
port is one more thing to attack), so there is no /metrics endpoint: every `metrics_interval`
seconds the status record is rendered (snitch_common.metrics, the same text as `snitchctl
metrics`) and written atomically (a temp file in the same directory, then rename), so the
collector never reads half a file. The render is a few dozen numbers already in memory; the
write goes to a worker thread, off the packet loop. On a clean stop the file is removed, so
stale numbers do not look live; after a crash, node_exporter's `node_textfile_mtime_seconds`
shows its age. Default path /run/snitch/metrics.prom (the unit's RuntimeDirectory, 0755).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from snitch_common.metrics import render_metrics
from snitchd.status import Status

__all__ = ["run_metrics_file", "status_fields", "write_atomic"]

log = logging.getLogger(__name__)


def status_fields(status: Status) -> dict[str, Any]:
    """The record by field name, the kernel's counters as kernel_* (as `Status` over D-Bus)."""
    fields = {f.name: getattr(status, f.name) for f in dataclasses.fields(status)}
    kernel = fields.pop("kernel")
    return fields | {f"kernel_{key}": value for key, value in kernel}


def write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` through a temp file and a rename; readable by all (0644: the
    collector runs as its own user), whatever snitchd's umask."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


async def run_metrics_file(
    path: str, interval: float, status: Callable[[], Awaitable[Status]]
) -> None:
    """Until cancelled: render and write every `interval` seconds; remove the file at the end.
    A failed write is said once (then once more when it works again), never raised."""
    failing = False
    try:
        while True:
            text = render_metrics(status_fields(await status()))
            try:
                await asyncio.to_thread(write_atomic, path, text)
            except OSError as exc:
                if not failing:
                    log.warning("cannot write metrics file %s: %s (check metrics_file)", path, exc)
                failing = True
            else:
                if failing:
                    log.info("metrics file written again path=%s", path)
                failing = False
            await asyncio.sleep(interval)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
