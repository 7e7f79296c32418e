"""snitchd's journal entries as a real journald stores them (issue 20): a private
systemd-journald (namespace "snitchtest", in a mount namespace of its own with tmpfs on
/run/systemd, /run/log and /var/log/journal, so the machine's journal is never touched),
entries sent by snitchd's own handler, read back with `journalctl --directory` and field matches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

JOURNALD = "/lib/systemd/systemd-journald"

EMIT = textwrap.dedent(
    """
    import logging, sys
    from snitchd.journal import Event, JournalHandler, journal_fields
    handler = JournalHandler(sys.argv[1])
    log = logging.getLogger("snitchd.firewall")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.warning("alert %s: %s", "new-app", "/usr/bin/curl connects for the first time",
                extra=journal_fields(Event.ALERT, kind="new-app", exe="/usr/bin/curl", uid=1000))
    log.info("rule added id=%d", 7, extra=journal_fields(Event.RULE_ADDED, rule_id=7))
    log.debug("verdict deny", extra=journal_fields(Event.DECISION, verdict="deny",
                                                   dst="tcp 203.0.113.7:9000"))
    try:
        raise ValueError("two\\nlines")
    except ValueError:
        log.exception("packet failed")
    log.warning("big %s", "x" * 300000)
    """
)

SCRIPT = textwrap.dedent(
    """
    set -e
    mount -t tmpfs tmpfs /run/systemd
    mkdir -p /run/log && mount -t tmpfs tmpfs /run/log
    # A journal namespace writes straight to /var/log/journal when it exists: hide the
    # machine's behind a tmpfs too (only in this mount namespace).
    if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
    {journald} snitchtest >/dev/null 2>&1 &
    jd=$!
    i=0
    while [ ! -S /run/systemd/journal.snitchtest/socket ] && [ $i -lt 100 ]; do
        sleep 0.1; i=$((i+1))
    done
    {python} -c "$EMIT" /run/systemd/journal.snitchtest/socket
    dir=""
    i=0
    while [ $i -lt 100 ]; do
        dir=$(find /run/log/journal /var/log/journal -mindepth 1 -maxdepth 1 -type d \\
            -name '*.snitchtest' 2>/dev/null || true)
        if [ -n "$dir" ] && [ "$(journalctl --directory "$dir" -q -a -o json 2>/dev/null \\
            | grep -c -e SNITCH_ -e big)" -ge 4 ]; then break; fi
        sleep 0.1; i=$((i+1))
    done
    echo "== alert"; journalctl --directory "$dir" -q -a -o json SNITCH_EVENT=alert
    echo "== warning"; journalctl --directory "$dir" -q -a -o json -p warning
    echo "== all"; journalctl --directory "$dir" -q -a -o json
    kill $jd; wait $jd || true
    """
)


@pytest.mark.skipif(not os.path.exists(JOURNALD), reason="systemd-journald is not installed")
def test_a_real_journald_stores_our_fields_and_priorities() -> None:
    from snitchd.journal import MESSAGE_IDS, Event  # noqa: PLC0415

    script = SCRIPT.format(journald=JOURNALD, python=sys.executable)
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "EMIT": EMIT},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    parts = {}
    for chunk in done.stdout.split("== ")[1:]:
        name, _, body = chunk.partition("\n")
        parts[name] = [json.loads(line) for line in body.splitlines() if line.strip()]
    alerts = parts["alert"]
    assert alerts and alerts[0]["SNITCH_ALERT"] == "new-app"
    assert alerts[0]["SNITCH_EXE"] == "/usr/bin/curl" and alerts[0]["PRIORITY"] == "4"
    assert alerts[0]["MESSAGE_ID"] == MESSAGE_IDS[Event.ALERT]
    assert alerts[0]["SYSLOG_IDENTIFIER"] == "snitchd"
    # -p warning: the alert, the traceback (3) and the big one; not the info nor the debug line
    warned = {e["MESSAGE"][:40] for e in parts["warning"]}
    assert not any("rule added" in m or "verdict" in m for m in warned), warned
    everything = parts["all"]
    by_event = {e.get("SNITCH_EVENT"): e for e in everything}
    assert (
        by_event["rule-added"]["SNITCH_RULE_ID"] == "7"
        and by_event["rule-added"]["PRIORITY"] == "6"
    )
    assert by_event["decision"]["PRIORITY"] == "7"
    assert by_event["decision"]["SNITCH_DST"] == "tcp 203.0.113.7:9000"
    traceback = next(e for e in everything if "packet failed" in str(e["MESSAGE"]))
    assert "two\\nlines" in str(traceback["MESSAGE"]) or "two\nlines" in str(traceback["MESSAGE"])
    big = next(e for e in everything if str(e["MESSAGE"]).startswith("snitchd.firewall: big "))
    assert len(big["MESSAGE"]) > 300000
