"""`snitchctl status` says what a person needs: a short summary while snitchd runs, and when it
does not, what the kernel does meanwhile with new connections, as root in snitchd's namespace;
`snitchctl metrics` is the status in Prometheus text (issue 20)."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import VENV_BIN, Lab


def ctl_in_ns(lab: Lab, *argv: str) -> subprocess.CompletedProcess[str]:
    """snitchctl as root inside the client namespace, where snitchd's rules are."""
    return subprocess.run(
        ["ip", "netns", "exec", lab.client, str(VENV_BIN / "snitchctl"), *argv],
        capture_output=True, text=True, env=lab.env | {"NO_COLOR": "1"}, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_status_with_snitchd_killed_says_what_the_kernel_does(lab: Lab, mode: str) -> None:
    lab.start_daemon(fail_mode=mode)
    assert lab.stop_daemon(signal.SIGKILL) == -signal.SIGKILL  # a crash: the rules stay
    done = ctl_in_ns(lab, "status", "--config", str(lab.config_path))
    assert done.returncode == 3, done.stderr
    first = done.stdout.splitlines()[0]
    if mode == "open":
        assert first == (
            "snitchd: not running: new connections pass unfiltered "
            "(fail_mode open: the queue rule is in place with --queue-bypass)"
        )
        assert lab.py("tcp", "192.0.2.2", 9000, "--timeout", "2") == "connected"
    else:
        assert first.startswith(
            "snitchd: not running: new connections are held and dropped by the kernel "
            "(fail_mode closed: nothing new gets out until snitchd is back"
        )
        assert lab.py("tcp", "192.0.2.2", 80, "--timeout", "1.5") == "timeout"
    record = json.loads(ctl_in_ns(lab, "--json", "status", "--config", str(lab.config_path)).stdout)
    assert record["running"] is False and record["fail_mode"] == mode
    assert record["queue_rule"] == ("bypass" if mode == "open" else "hold")


def test_status_after_a_clean_stop_says_nothing_is_filtered(lab: Lab) -> None:
    lab.start_daemon(fail_mode="closed")
    lab.stop_daemon()
    done = ctl_in_ns(lab, "status", "--config", str(lab.config_path))
    assert done.returncode == 3
    assert "new connections pass unfiltered (snitchd's rules are not in the kernel)" in done.stdout
    assert lab.py("tcp", "192.0.2.2", 9000, "--timeout", "2") == "connected"


def test_status_summary_and_metrics_match(running: Lab) -> None:
    running.add_rule("allow port=80")
    assert running.py("tcp", "192.0.2.2", 80) == "connected"
    assert running.py("tcp", "192.0.2.2", 9000, "--timeout", "1") == "timeout"
    text = ctl_in_ns(running, "status").stdout
    assert text.startswith("snitchd: running since ")
    assert "rules: 1" in text and "counters:" not in text
    assert "counters:" in ctl_in_ns(running, "status", "--verbose").stdout
    status = running.ctl_json("status")
    done = running.ctl("metrics")
    assert done.returncode == 0, done.stderr
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(done.stdout)
        for s in family.samples
    }
    after = running.ctl_json("status")
    # Counters only grow: each metric lies between the status before and the status after (a
    # late SYN retransmit may count in between); with no traffic they are all equal.
    for metric, labels, key in (
        ("snitch_flows_total", (("verdict", "allow"),), "accepted"),
        ("snitch_flows_total", (("verdict", "deny"),), "dropped"),
        ("snitch_attributions_total", (("path", "sock_diag"),), "attributed_sock_diag"),
        ("snitch_flows_seen_total", (), "seen"),
    ):
        assert 1 <= status[key] <= got[(metric, labels)] <= after[key], key
    assert got[("snitch_rules", ())] == status["rules"] == 1


def test_metrics_file_matches_status_and_goes_with_a_clean_stop(lab: Lab) -> None:
    """The textfile collector's file: written by snitchd off the packet loop, parsed by
    prometheus_client, its counters those of `status --json`; removed on a clean stop."""
    path = lab.tmp / "metrics.prom"
    lab.start_daemon(metrics_file=str(path), metrics_interval=1)
    lab.add_rule("allow port=80")
    assert lab.py("tcp", "192.0.2.2", 80) == "connected"
    assert lab.py("tcp", "192.0.2.2", 9000, "--timeout", "1") == "timeout"
    deadline = time.monotonic() + 30
    got: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    while True:  # the file is rewritten every second; a late SYN retransmit may still count
        status = lab.ctl_json("status")
        if path.exists():
            got = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(path.read_text())
                for s in family.samples
            }
            if got.get(("snitch_flows_total", (("verdict", "deny"),))) == status["dropped"]:
                break
        assert time.monotonic() < deadline, (got, status)
        time.sleep(0.3)
    assert got[("snitch_flows_total", (("verdict", "allow"),))] == status["accepted"] >= 1
    assert got[("snitch_flows_total", (("verdict", "deny"),))] == status["dropped"] >= 1
    assert got[("snitch_rules", ())] == 1 and got[("snitch_up", ())] == 1
    assert path.stat().st_mode & 0o777 == 0o644
    lab.stop_daemon()
    assert not path.exists()
