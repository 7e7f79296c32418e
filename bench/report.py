"""connbench's figures: medians over rounds, ratios within the run, the issue's targets, tables.

Every figure is the median of the rounds; ratios divide the medians of the same run, so the
configurations share whatever the machine was doing. Targets (issue #8's, and issue 21's for
the default configuration c) are checked, never asserted: a missed target is a row that says
MISSED.
"""

import statistics

LOAD_KEYS = ("tcp1", "tcp4", "udp1")
SNITCH = ("c", "d", "e")


def _med(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def summarize(runs, infos, configs):
    summary = {}
    for key in configs:
        entry = {}
        for load in LOAD_KEYS:
            rs = runs[key][load]
            if not rs:
                continue
            entry[load] = {
                "rate": _med([r["rate"] for r in rs]),
                "rate_min": min(r["rate"] for r in rs),
                "timed_nothing": sum(r["samples"] == 0 for r in rs),
                "rate_max": max(r["rate"] for r in rs),
                "p50_us": _med([r["p50_us"] for r in rs]),
                "p99_us": _med([r["p99_us"] for r in rs]),
                "p999_us": _med([r["p999_us"] for r in rs]),
                "cpu_per_1000": _med([r.get("cpu_per_1000") for r in rs]),
                "failed": sum(r["refused"] + r["timeouts"] + r["other_errors"] for r in rs),
                "queued_per_flow": _med([r.get("queued_per_flow") for r in rs]),
                "queue_full_drops": sum(r.get("queue_full_drops", 0) for r in rs),
                "machine_busy": _med([r["machine_busy"] for r in rs]),
                "softirq_cores": _med([r["softirq_cores"] for r in rs]),
                "other_cores": _med([r["other_cores"] for r in rs]),
            }
        for field in (
            "rss_idle_mb",
            "pss_idle_mb",
            "rss_end_mb",
            "rss_peak_mb",
            "startup_s",
            "cpu_per_1000_all",
        ):
            entry[field] = _med([i.get(field) for i in infos[key]])
        summary[key] = entry
    for key, entry in summary.items():
        for load in LOAD_KEYS:
            if load not in entry:
                continue
            e = entry[load]
            for base in ("a", "b"):
                ref = summary.get(base, {}).get(load)
                if ref and ref["rate"]:
                    e[f"vs_{base}"] = round(e["rate"] / ref["rate"], 3)
            ref = summary.get("c", {}).get(load)
            if key == "m" and ref and ref["rate"]:
                e["vs_c"] = round(e["rate"] / ref["rate"], 3)  # monitoring on / off
            ref = summary.get("a", {}).get(load)
            if ref and key != "a":
                for q in ("p50", "p99"):
                    if e[f"{q}_us"] is not None and ref[f"{q}_us"] is not None:
                        e[f"added_{q}_us"] = round(e[f"{q}_us"] - ref[f"{q}_us"], 1)
    return summary


def _micro(micro, bench, key, field="median_us"):
    return micro.get(bench, {}).get(key, {}).get(field)


def targets(summary, micro):
    rows = []

    def check(config, what, value, limit, higher_is_better=False, empty=0, issue=8):
        """`empty`: rounds that timed nothing (the daemon held every flow past the load): a
        latency from the other rounds would flatter it, so the row says MISSED."""
        if empty:
            rows.append(
                {
                    "issue": issue,
                    "config": config,
                    "what": what,
                    "value": None,
                    "limit": limit,
                    "met": False,
                    "note": f"nothing timed in {empty} rounds",
                }
            )
            return
        if value is None:
            return
        met = value >= limit if higher_is_better else value <= limit
        rows.append(
            {
                "issue": issue,
                "config": config,
                "what": what,
                "value": value,
                "limit": limit,
                "met": met,
            }
        )

    for key in SNITCH:
        s = summary.get(key)
        if not s or "tcp1" not in s:
            continue
        check(key, "tcp 1 client rate / ceiling", s["tcp1"].get("vs_b"), 0.65, True)
        if "tcp4" in s:
            check(key, "tcp 4 clients rate / ceiling", s["tcp4"].get("vs_b"), 0.50, True)
        empty = s["tcp1"]["timed_nothing"]
        check(key, "added median µs (tcp 1 client)", s["tcp1"].get("added_p50_us"), 90, empty=empty)
        check(key, "added p99 µs (tcp 1 client)", s["tcp1"].get("added_p99_us"), 250, empty=empty)
        check(key, "daemon CPU s / 1000 conns (tcp 1 client)", s["tcp1"]["cpu_per_1000"], 0.08)
        check(key, "daemon CPU s / 1000 flows (all three loads)", s["cpu_per_1000_all"], 0.08)
        if "tcp4" in s:
            check(key, "daemon CPU s / 1000 conns (tcp 4 clients)", s["tcp4"]["cpu_per_1000"], 0.08)
        if key == "c":  # issue 21: the default configuration, whatever its reader count
            t1, t4 = s["tcp1"], s.get("tcp4", {})
            for what, value, limit, higher, nothing in (
                ("tcp 1 client rate / ceiling", t1.get("vs_b"), 0.60, True, 0),
                ("tcp 4 clients rate / ceiling", t4.get("vs_b"), 0.50, True, 0),
                ("added median µs (tcp 1 client)", t1.get("added_p50_us"), 60, False, empty),
                ("added p99 µs (tcp 1 client)", t1.get("added_p99_us"), 200, False, empty),
                ("CPU s / 1000 conns, all its processes (tcp 1 client)", t1["cpu_per_1000"], 0.10,
                 False, 0),
                ("CPU s / 1000 conns, all its processes (tcp 4 clients)",
                 t4.get("cpu_per_1000"), 0.10, False, 0),
            ):  # fmt: skip
                check(key, what, value, limit, higher, nothing, issue=21)
        limit, when = (150, "at 100k rules") if key == "e" else (60, "idle")
        check(key, f"RSS MB {when} (snitchd + log writer, summed)", s["rss_idle_mb"], limit)
        check(key, f"PSS MB {when} (snitchd + log writer, summed)", s["pss_idle_mb"], limit)
    check(
        "micro",
        "attribution median µs, 10k sockets (warm)",
        _micro(micro, "bench_procs", "warm lookup, all"),
        50,
    )
    check(
        "micro",
        "attribution median µs, 10k sockets (new socket, last-seen process)",
        _micro(micro, "bench_procs", "new socket of the last-seen process (hot-pid scan)"),
        50,
    )
    check(
        "micro",
        "rule lookup median µs, 100k rules (client's allow rule)",
        _micro(micro, "bench_micro", "rule_match_0"),
        20,
    )
    check(
        "micro",
        "rule lookup median µs, 100k rules (worst case measured)",
        _micro(micro, "bench_micro", "rule_match_worst_median_us"),
        20,
    )
    return rows


def _f(value, fmt="{:,.0f}", none="—"):
    return none if value is None else fmt.format(value)


def print_tables(summary, targets_rows, meta, setups):
    print("\n== new flows through the firewall (median of rounds)")
    print(
        f"{'configuration':40s} {'tcp 1c/s':>9s} {'tcp 4c/s':>9s} {'udp/s':>8s} "
        f"{'p50 µs':>7s} {'p99 µs':>7s} {'+p50':>6s} {'+p99':>6s} {'CPU/1k':>7s} "
        f"{'RSS MB':>7s} {'PSS MB':>7s} {'start s':>7s}"
    )
    for key, s in summary.items():
        t1, t4, u = s.get("tcp1", {}), s.get("tcp4", {}), s.get("udp1", {})
        print(
            f"{key} {setups[key]:38s} {_f(t1.get('rate')):>9s} {_f(t4.get('rate')):>9s} "
            f"{_f(u.get('rate')):>8s} {_f(t1.get('p50_us'), '{:.1f}'):>7s} "
            f"{_f(t1.get('p99_us'), '{:.1f}'):>7s} {_f(t1.get('added_p50_us'), '{:.1f}'):>6s} "
            f"{_f(t1.get('added_p99_us'), '{:.1f}'):>6s} "
            f"{_f(t1.get('cpu_per_1000'), '{:.3f}'):>7s} {_f(s.get('rss_idle_mb'), '{:.1f}'):>7s} "
            f"{_f(s.get('pss_idle_mb'), '{:.1f}'):>7s} "
            f"{_f(s.get('startup_s') if key in SNITCH else None, '{:.1f}'):>7s}"
        )
    print(
        "(latency and CPU/1k: TCP, 1 client; CPU/1k: daemon CPU seconds per 1000 flows; "
        "RSS, PSS: idle, after start, snitchd and its log writer summed)"
    )

    print("\n== ratios within this run (rate / rate of a, of b); UDP and 4-client latency")
    print(
        f"{'':3s}{'tcp1 /a':>8s} {'/b':>6s} {'tcp4 /a':>8s} {'/b':>6s} {'udp /a':>7s} {'/b':>6s}"
        f" {'udp p50':>8s} {'+p50':>6s} {'udp p99':>8s} {'tcp4 p50':>9s} {'tcp4 p99':>9s}"
        f" {'CPU/1k 4c':>9s} {'CPU/1k all':>10s}"
    )
    for key, s in summary.items():
        t1, t4, u = s.get("tcp1", {}), s.get("tcp4", {}), s.get("udp1", {})
        print(
            f"{key:3s}{_f(t1.get('vs_a'), '{:.2f}'):>8s} {_f(t1.get('vs_b'), '{:.2f}'):>6s} "
            f"{_f(t4.get('vs_a'), '{:.2f}'):>8s} {_f(t4.get('vs_b'), '{:.2f}'):>6s} "
            f"{_f(u.get('vs_a'), '{:.2f}'):>7s} {_f(u.get('vs_b'), '{:.2f}'):>6s} "
            f"{_f(u.get('p50_us'), '{:.1f}'):>8s} {_f(u.get('added_p50_us'), '{:.1f}'):>6s} "
            f"{_f(u.get('p99_us'), '{:.1f}'):>8s} {_f(t4.get('p50_us'), '{:.1f}'):>9s} "
            f"{_f(t4.get('p99_us'), '{:.1f}'):>9s} {_f(t4.get('cpu_per_1000'), '{:.3f}'):>9s}"
            f" {_f(s.get('cpu_per_1000_all'), '{:.3f}'):>10s}"
        )

    m = summary.get("m")
    if m and "c" in summary:
        ratios = ", ".join(
            f"{load} {_f(m[load].get('vs_c'), '{:.3f}')}" for load in LOAD_KEYS if load in m
        )
        print(f"\n== monitoring on (m) / off (c), rates in this run: {ratios}")
        p50 = ", ".join(
            f"{load} {_f(summary['c'][load]['p50_us'], '{:.1f}')} -> "
            f"{_f(m[load]['p50_us'], '{:.1f}')} µs"
            for load in LOAD_KEYS
            if load in m and load in summary["c"]
        )
        print(f"   median latency off -> on: {p50}")

    print("\n== checks: failed flows; queued per flow (1.0: every flow reached the queue); load:")
    print("   machine busy, and in cores: kernel softirq, others (not client/server/firewall)")
    for key, s in summary.items():
        parts = []
        for load in LOAD_KEYS:
            e = s.get(load)
            if e:
                n = e["timed_nothing"]
                none = f" NOTHING TIMED in {n} rounds" if n else ""
                parts.append(
                    f"{load}: failed {e['failed']}{none}"
                    f" queued/flow {_f(e['queued_per_flow'], '{:.3f}')}"
                    f" busy {e['machine_busy']:.0%} softirq {e['softirq_cores']:.2f}"
                    f" others {e['other_cores']:.2f}"
                )
        print(f"{key}  " + " | ".join(parts))
    print(
        f"loadavg before {meta['loadavg_before'][0]:.2f}, after {meta['loadavg_after'][0]:.2f}"
        f" ({meta['cpus']} CPUs)"
    )

    for issue in (8, 21):
        _print_targets(issue, [row for row in targets_rows if row.get("issue", 8) == issue])


def _print_targets(issue, targets_rows):
    if not targets_rows:
        return
    print(f"\n== targets (issue #{issue})")
    for row in targets_rows:
        value = row["value"]
        if value is None:
            shown = row.get("note", "-")
        elif isinstance(value, float) and value < 10:
            shown = f"{value:.3f}"
        else:
            shown = f"{value:,.1f}"
        print(
            f"{'met' if row['met'] else 'MISSED':6s} {row['config']:5s} {row['what']:66s} "
            f"{shown:>9s}  (limit {row['limit']})"
        )
