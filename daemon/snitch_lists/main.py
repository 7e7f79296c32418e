"""`snitch-lists [NAME...]`: download, check and parse block lists; hand them to snitchd.

Run by `snitch-lists.service` (DynamicUser, its timer: daily) or by hand as an unprivileged
user. For each list snitchd registers (`Lists` over D-Bus) it fetches the source (an https://
URL, conditionally: If-None-Match / If-Modified-Since from the last good copy; or a local file,
by its modification time), parses it (`snitch_common.blocklists.parse_source`, which refuses an
error page or the wrong format whole), and writes `NAME.list` (the parsed copy, replaced
atomically and only by a good one) and `NAME.status` (what happened, read by snitchd and
`snitchctl lists show`) to its directory; then it pokes snitchd (`ListsChanged`). A list that
fails keeps its last good copy; its status says why, and snitchd raises an alert. Plain http
fails too: anyone on the path could rewrite the list, so an http:// source (which an earlier
version took) is refused before anything is asked of it.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import http.client
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO

from snitch_common import __version__
from snitch_common.blocklists import (
    ListFormat,
    ListSpec,
    ListStatus,
    check_list_name,
    check_list_source,
    parse_source,
    read_status,
    write_parsed,
    write_status,
)
from snitch_common.client import Client
from snitch_common.errors import ListError, SnitchError

__all__ = ["fetch", "main", "update_list"]

log = logging.getLogger("snitch-lists")

DEFAULT_DIR = "/var/lib/snitch-lists"
MAX_BYTES = 256 << 20  # a list larger than this is refused (the largest public ones are ~100 MB)
TIMEOUT = 60.0


class _NotModified(Exception):
    pass


class _HttpsRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to another https:// URL. urllib's own handler follows one to
    plain http too: a list host that moved, was misconfigured or lost its name would hand the
    list to anyone on the path again, the very thing an http:// source is refused for."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        # `newurl` is absolute here: urllib joined a relative Location to the request's URL.
        if urllib.parse.urlsplit(newurl).scheme != "https":
            fp.close()
            raise ListError(
                f"cannot download {req.full_url}: refused its redirect to {newurl}: not "
                "https:// (over plain http anyone on the path can rewrite a list)"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch(spec: ListSpec, last: ListStatus | None) -> tuple[bytes, str, str]:
    """The source's bytes, and the ETag and Last-Modified to send next time; raises
    _NotModified when the server (or the file's mtime) says the last copy is current. A source
    other than https:// or a local file is refused before anything is asked of it."""
    check_list_source(spec.source)
    same = last is not None and last.source == spec.source
    if spec.source.startswith("/"):
        try:
            st = os.stat(spec.source)
            stamp = email.utils.formatdate(st.st_mtime, usegmt=True) + f" {st.st_size}"
            if same and last is not None and last.last_modified == stamp and last.updated:
                raise _NotModified
            with open(spec.source, "rb") as f:
                data = f.read(MAX_BYTES + 1)
        except OSError as exc:
            raise ListError(f"cannot read {spec.source}: {exc.strerror}") from None
        if len(data) > MAX_BYTES:
            raise ListError(f"cannot use {spec.source}: larger than {MAX_BYTES >> 20} MiB")
        return data, "", stamp
    request = urllib.request.Request(spec.source, headers={"User-Agent": f"snitch/{__version__}"})
    if same and last is not None and last.updated:
        if last.etag:
            request.add_header("If-None-Match", last.etag)
        if last.last_modified:
            request.add_header("If-Modified-Since", last.last_modified)
    opener = urllib.request.build_opener(_HttpsRedirectsOnly())
    try:
        with opener.open(request, timeout=TIMEOUT) as reply:
            data = reply.read(MAX_BYTES + 1)
            etag = reply.headers.get("ETag", "")
            modified = reply.headers.get("Last-Modified", "")
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            raise _NotModified from None
        raise ListError(f"cannot download {spec.source}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ListError(f"cannot download {spec.source}: {reason}") from None
    if len(data) > MAX_BYTES:
        raise ListError(f"cannot use {spec.source}: larger than {MAX_BYTES >> 20} MiB")
    return data, etag, modified


def update_list(spec: ListSpec, directory: Path, now: float) -> ListStatus:
    """Fetch, parse and write one list; the status says what happened (also on failure)."""
    status_path = directory / f"{spec.name}.status"
    try:
        last: ListStatus | None = read_status(status_path)
    except ListError:
        last = None
    kept = last if last is not None and last.source == spec.source else None
    try:
        data, etag, modified = fetch(spec, kept)
        parsed = parse_source(
            data.decode("utf-8", errors="replace"), spec.format, what=f"{spec.source}"
        )
        write_parsed(directory / f"{spec.name}.list", parsed)
        status = ListStatus(spec.name, True, now, now, len(parsed), "", etag, modified, spec.source)
        log.info("list %s: %d entries (%d lines skipped)", spec.name, len(parsed), parsed.skipped)
    except _NotModified:
        assert kept is not None
        status = ListStatus(
            spec.name,
            True,
            now,
            kept.updated,
            kept.entries,
            "",
            kept.etag,
            kept.last_modified,
            spec.source,
        )
        log.info("list %s: not modified", spec.name)
    except ListError as exc:
        status = ListStatus(
            spec.name,
            False,
            now,
            kept.updated if kept else 0.0,
            kept.entries if kept else 0,
            exc.message,
            kept.etag if kept else "",
            kept.last_modified if kept else "",
            spec.source,
        )
        log.error("list %s: %s", spec.name, exc.message)
    write_status(status_path, status)
    return status


async def _run(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    client = await Client.connect()
    try:
        rows = json.loads(await client.call("Lists"))
        specs = [
            ListSpec(check_list_name(r["name"]), r["source"], ListFormat(r["format"])) for r in rows
        ]
        wanted = set(args.names)
        unknown = wanted - {s.name for s in specs}
        if unknown:
            raise ListError(f"no such list: {', '.join(sorted(unknown))} (see: snitchctl lists)")
        failed = 0
        for spec in specs:
            if wanted and spec.name not in wanted:
                continue
            status = await asyncio.to_thread(update_list, spec, directory, time.time())
            failed += not status.ok
        await client.call("ListsChanged")
    finally:
        client.close()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="snitch-lists",
        description="Download and parse snitch's block lists, and hand them to snitchd. "
        "Runs as an unprivileged user (snitch-lists.service); never as root.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="only these lists (default: all)")
    p.add_argument(
        "--dir",
        default=os.environ.get("STATE_DIRECTORY", DEFAULT_DIR),
        help=f"where parsed lists go, read by snitchd's lists_dir (default: {DEFAULT_DIR})",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    if os.geteuid() == 0:
        print(
            "snitch-lists: error: refusing to run as root: downloads are parsed by an "
            "unprivileged user (systemctl start snitch-lists.service, or setpriv --reuid nobody)",
            file=sys.stderr,
        )
        return 2
    try:
        return asyncio.run(_run(args))
    except SnitchError as exc:
        print(f"snitch-lists: error: {exc.message}", file=sys.stderr)
        return exc.exit_status
