"""The metrics text is valid Prometheus exposition: prometheus_client's own parser reads it,
and each sample is the status record's number (issue 20)."""

from __future__ import annotations

import dataclasses

from prometheus_client.parser import text_string_to_metric_families

from snitch_common.metrics import _METRICS, render_metrics


def _status() -> dict[str, object]:
    return {
        "running": True, "started": 1795000000.5, "seen": 10, "accepted": 6, "dropped": 3,
        "rejected": 1, "by_default": 2, "errors": 0, "attributed_bpf": 0,
        "attributed_sock_diag": 9, "attributed_uid_only": 1, "attributed_kernel": 0,
        "prompts_asked": 4, "prompts_timed_out": 1, "prompts_over_quota": 0, "prompts_open": 1,
        "prompt_packets_held": 2, "kernel_queue_dropped": 7, "kernel_user_dropped": 0,
        "dns_answers": 5, "rules": 12, "agents": 1, "log_rows_written": 9, "log_backlog": 1,
        "rules_error": "", "log_error": "database is locked", "datagrams_other_socket": 3,
        "flows_over_limit": 11, "dns_queries_over_limit": 13,
    }  # fmt: skip


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_parse_and_match_the_status_record() -> None:
    got = samples(render_metrics(_status()))
    assert got[("snitch_flows_total", (("verdict", "allow"),))] == 6
    assert got[("snitch_flows_total", (("verdict", "deny"),))] == 3
    assert got[("snitch_flows_total", (("verdict", "reject"),))] == 1
    assert got[("snitch_attributions_total", (("path", "sock_diag"),))] == 9
    assert got[("snitch_queue_dropped_total", (("by", "kernel"),))] == 7
    assert got[("snitch_datagrams_dropped_total", (("why", "other-socket"),))] == 3
    assert got[("snitch_limited_total", (("what", "new-flows"),))] == 11
    assert got[("snitch_limited_total", (("what", "dns-queries"),))] == 13
    assert got[("snitch_prompts_total", ())] == 4
    assert got[("snitch_rules", ())] == 12
    assert got[("snitch_log_backlog", ())] == 1
    assert got[("snitch_degraded", (("part", "log"),))] == 1
    assert got[("snitch_degraded", (("part", "rules"),))] == 0
    assert got[("snitch_start_time_seconds", ())] == 1795000000.5


def test_a_key_the_record_lacks_is_left_out_not_zero() -> None:
    text = render_metrics({"rules": 1})
    assert "snitch_rules 1" in text
    assert "snitch_flows_total" not in text


def test_every_metric_reads_a_key_the_status_record_has() -> None:
    """A metric whose key is misspelt (or renamed in snitchd's Status) would be left out of
    the text for good, silently: every metric must show for a full status record."""
    from snitchd.status import Status  # noqa: PLC0415 - the daemon's record, read only here

    kernel = ("held", "queue_dropped", "user_dropped", "queued_total")
    full = {f.name: 1 for f in dataclasses.fields(Status)} | {f"kernel_{k}": 1 for k in kernel}
    families = {f.name for f in text_string_to_metric_families(render_metrics(full))}
    wanted = {name.removesuffix("_total") for name, *_ in _METRICS}
    assert families == wanted


def test_the_metrics_file_is_replaced_whole_and_readable_by_the_collector(tmp_path) -> None:
    """snitchd runs with UMask=0077; node_exporter runs as its own user and must read it."""
    import os  # noqa: PLC0415

    from snitchd.metricsfile import write_atomic  # noqa: PLC0415

    path = tmp_path / "metrics.prom"
    old = os.umask(0o077)
    try:
        write_atomic(str(path), "snitch_rules 1\n")
        write_atomic(str(path), "snitch_rules 2\n")
    finally:
        os.umask(old)
    assert path.read_text() == "snitch_rules 2\n"
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.prom"], "a temp file was left"


def test_metrics_file_must_be_absolute_or_empty() -> None:
    import pytest  # noqa: PLC0415

    from snitch_common.errors import ConfigError  # noqa: PLC0415
    from snitchd.config import parse_config  # noqa: PLC0415

    assert parse_config({"metrics_file": ""}).metrics_file == ""
    with pytest.raises(ConfigError, match="metrics_file"):
        parse_config({"metrics_file": "metrics.prom"})
