"""snitchd's counters in the Prometheus text exposition format (version 0.0.4).

One renderer for both places the text appears: the file snitchd writes for node_exporter's
textfile collector (`metrics_file`) and `snitchctl metrics`, which renders what `Status`
returns over D-Bus. It reads the status record by its field names (as a{sv} gives them), so a
counter there and here are the same number. snitchd never speaks IP (its unit has
`IPAddressDeny=any`): no HTTP endpoint, the collector or a person reads the text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["render_metrics"]

# name, type, help, [(labels, status key)]
_METRICS: tuple[tuple[str, str, str, tuple[tuple[str, str], ...]], ...] = (
    ("snitch_up", "gauge", "1 while snitchd answers (the file keeps its last value: see its mtime)",
     (("", "running"),)),
    ("snitch_start_time_seconds", "gauge", "when snitchd started, seconds since the epoch",
     (("", "started"),)),
    ("snitch_flows_seen_total", "counter",
     "new flows read from the queue, or passed by the fast path", (("", "seen"),)),
    ("snitch_flows_total", "counter", "flows decided, by verdict",
     (('verdict="allow"', "accepted"), ('verdict="deny"', "dropped"),
      ('verdict="reject"', "rejected"))),
    ("snitch_flows_fast_total", "counter",
     "new flows the kernel passed by a rule's earlier allow (the fast path), of those seen",
     (("", "fast"),)),
    ("snitch_flows_by_default_total", "counter",
     "flows decided by the default action (no rule, no answer)", (("", "by_default"),)),
    ("snitch_flow_errors_total", "counter",
     "packets that could not be handled and got the fail-mode verdict", (("", "errors"),)),
    ("snitch_attributions_total", "counter", "decided flows by how their owner was found",
     (('path="bpf"', "attributed_bpf"), ('path="sock_diag"', "attributed_sock_diag"),
      ('path="uid-only"', "attributed_uid_only"), ('path="kernel"', "attributed_kernel"))),
    ("snitch_prompts_total", "counter", "prompts asked of an agent", (("", "prompts_asked"),)),
    ("snitch_prompts_timed_out_total", "counter", "prompts nobody answered in time",
     (("", "prompts_timed_out"),)),
    ("snitch_prompts_over_quota_total", "counter",
     "prompts refused by a per-user bound (decided by the default action)",
     (("", "prompts_over_quota"),)),
    ("snitch_prompts_open", "gauge", "prompts waiting for an answer", (("", "prompts_open"),)),
    ("snitch_prompt_packets_held", "gauge", "packets held by open prompts",
     (("", "prompt_packets_held"),)),
    ("snitch_prompt_packets_dropped_total", "counter",
     "packets of prompted flows dropped by the per-prompt bound",
     (("", "prompt_packets_dropped"),)),
    ("snitch_queue_dropped_total", "counter",
     "packets the kernel dropped: queue full (kernel) or not delivered to snitchd (user)",
     (('by="kernel"', "kernel_queue_dropped"), ('by="user"', "kernel_user_dropped"))),
    ("snitch_datagrams_dropped_total", "counter",
     "datagrams the socket match dropped: a user past its limit, or a verdict for another socket",
     (('why="over-limit"', "datagrams_over_limit"),
      ('why="other-socket"', "datagrams_other_socket"))),
    ("snitch_limited_total", "counter",
     "packets the kernel's per-user and per-source limits dropped before the queues",
     (('what="new-flows"', "flows_over_limit"), ('what="dns-queries"', "dns_queries_over_limit"))),
    ("snitch_queue_held", "gauge", "packets waiting in the kernel's queue", (("", "kernel_held"),)),
    ("snitch_dns_answers_total", "counter", "DNS answers, by what snitch made of them",
     (('outcome="believed"', "dns_answers"), ('outcome="skipped"', "dns_skipped"),
      ('outcome="unasked"', "dns_unasked"), ('outcome="untrusted"', "dns_untrusted"),
      ('outcome="duplicate"', "dns_duplicates"), ('outcome="unowned"', "dns_unowned"))),
    ("snitch_dns_queries_total", "counter", "DNS queries seen leaving", (("", "dns_queries"),)),
    ("snitch_rules", "gauge", "rules in force", (("", "rules"),)),
    ("snitch_agents", "gauge", "agents registered", (("", "agents"),)),
    ("snitch_names_bytes", "gauge", "the name cache's estimated size", (("", "names_bytes"),)),
    ("snitch_log_rows_written_total", "counter", "connection log rows written",
     (("", "log_rows_written"),)),
    ("snitch_log_rows_dropped_total", "counter",
     "connection log rows dropped (the log writer fell behind or failed)",
     (("", "log_rows_dropped"),)),
    ("snitch_log_backlog", "gauge", "connection log rows waiting for the log writer",
     (("", "log_backlog"),)),
    ("snitch_log_writer_starts_total", "counter", "times the log writer was (re)started",
     (("", "log_writer_starts"),)),
    ("snitch_degraded", "gauge", "1 when rules or the log are in a degraded state",
     (('part="rules"', "rules_error"), ('part="log"', "log_error"))),
)  # fmt: skip


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str):
        return "1" if value else "0"  # an error text: present or not
    if isinstance(value, float):
        return repr(value)
    return str(int(value))


def render_metrics(status: Mapping[str, Any]) -> str:
    """The text for one status record; a metric whose key the record lacks (an older snitchd,
    a counter not kept on this path) is left out rather than shown as 0."""
    lines: list[str] = []
    for name, kind, text, series in _METRICS:
        present = [(labels, status[key]) for labels, key in series if key in status]
        if not present:
            continue
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        lines += [
            f"{name}{{{labels}}} {_number(v)}" if labels else f"{name} {_number(v)}"
            for labels, v in present
        ]
    return "\n".join(lines) + "\n"
