"""snitch-lists and a source it must not use (issue 18), against a real http server on loopback.

Over plain http anyone on the path can rewrite a list (drop the entries that block their own
names, add ones that block what the user needs), so the updater refuses such a source before it
asks the server anything, however the source got into the registry.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snitch_common.blocklists import (
    ListFormat,
    ListSpec,
    ListStatus,
    parse_source,
    read_parsed,
    read_status,
    write_parsed,
    write_status,
)
from snitch_lists.main import update_list


@pytest.fixture
def plain_http(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A plain http server on 127.0.0.1 offering a newer list: its base URL, and the paths
    asked of it."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "hosts.txt").write_text("0.0.0.0 old.example.org\n0.0.0.0 new.example.org\n")
    asked: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads `asked`, not stderr."""

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(www))
    )
    thread = threading.Thread(target=server.serve_forever, name="plain-http")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def test_a_stored_http_source_fails_its_update_and_keeps_the_last_good_copy(
    tmp_path: Path, plain_http: tuple[str, list[str]]
) -> None:
    """Earlier versions took http:// sources, and lists.json keeps them: such a list's update
    fails without a request, its status says to use https:// or a local file (snitchd turns it
    into a list-failed alert), and the last good copy and what the status says of it stay."""
    base, asked = plain_http
    spec = ListSpec("ads", f"{base}/hosts.txt", ListFormat.HOSTS)
    good = parse_source("0.0.0.0 old.example.org\n", ListFormat.HOSTS)
    lists = tmp_path / "lists"
    lists.mkdir()
    write_parsed(lists / "ads.list", good)
    before = ListStatus("ads", True, 100.0, 100.0, 1, "", '"e1"', "", spec.source)
    write_status(lists / "ads.status", before)

    status = update_list(spec, lists, 200.0)

    assert asked == []
    assert status.ok is False
    assert spec.source in status.error
    assert "https://" in status.error and "local file" in status.error
    kept = (status.checked, status.updated, status.entries, status.etag)
    assert kept == (200.0, 100.0, 1, '"e1"')
    assert read_status(lists / "ads.status") == status
    assert read_parsed(lists / "ads.list") == good
