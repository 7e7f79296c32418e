"""Block lists at scale (issue 18): lookup time and memory at 1M domains and 100k networks, and
what a loaded 1M-domain list costs new connections through snitchd, with and without it, in one
run. Figures only; nothing is asserted (the machine may be shared: read ratios, not absolutes).

    sudo .venv/bin/python -m bench.bench_lists            # micro only: ~1 minute
    sudo .venv/bin/python -m bench.bench_lists --conn     # and the connection bench: ~2 more

Micro: the structure snitchd uses (`snitchd.places.DomainSet`: 64-bit keyed hashes in a sorted
array with a bucket index) against the obvious one (a set of the names, each looked up per
suffix), each built from the same 1M names, memory by tracemalloc (what the structure holds
after its build) and the process's peak RSS growth; lookups of a flow's one name (3-4 labels)
that hit and that miss, per call, median and p99 over 200k calls.

Conn (--conn): bench/connbench.py's lab and compiled client (tcp, 1 thread); snitchd with
`allow app=<client>` (no list) against snitchd with `deny app=<client> to=list:big` first and
the 1M-domain list loaded, interleaved in rounds. The client connects by address, so a flow
costs the list's network lookup and no name lookup: the name lookup's cost is the micro figure.
"""

import argparse
import gc
import json
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
import tracemalloc
from ipaddress import IPv4Address, ip_address
from pathlib import Path

from bench.connbench import DAEMON_MAIN, QUEUE, VENV_BIN, build_client, cpu_seconds, rss_mb
from bench.netlab import PORT, SERVER_ADDR, NetLab
from snitch_common.blocklists import ListFormat, ListSpec, ParsedList, specs_json, write_parsed
from snitch_common.rules import parse_rule
from snitchd.places import DomainSet, NetworkSet
from snitchd.store import Store
from tests.support.lab import stop_process

N_DOMAINS = 1_000_000
N_NETWORKS = 100_000
CALLS = 200_000
WORDS = ["ads", "track", "cdn", "pixel", "metrics", "img", "static", "api", "stats", "beacon"]
TLDS = ["com", "net", "org", "io", "info", "xyz", "de", "co.uk"]


def make_domains(n, seed=1):
    rng = random.Random(seed)
    out = set()
    while len(out) < n:
        label = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(
            rng.randint(4, 12)))  # fmt: skip
        name = f"{label}.{rng.choice(TLDS)}"
        if rng.random() < 0.6:
            name = f"{rng.choice(WORDS)}{rng.randint(0, 99)}.{name}"
        out.add(name)
    return list(out)


def make_networks(n, seed=2):
    rng = random.Random(seed)
    out = set()
    while len(out) < n:
        prefix = rng.choice([32, 32, 32, 24, 24, 22, 20, 16])
        addr = rng.getrandbits(32) & (((1 << prefix) - 1) << (32 - prefix))
        out.add(f"{IPv4Address(addr)}/{prefix}")
    return list(out)


def timed(fn, args_list):
    clock = time.perf_counter_ns
    samples = []
    for a in args_list:
        t0 = clock()
        fn(a)
        samples.append(clock() - t0)
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99)] / 1000


def measure_structure(label, build, lookup, hits, misses):
    gc.collect()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0 = time.perf_counter()
    held = build()
    build_s = time.perf_counter() - t0
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    hit_med, hit_p99 = timed(lambda n: lookup(held, n), hits)
    miss_med, miss_p99 = timed(lambda n: lookup(held, n), misses)
    print(
        f"{label:<34} build {build_s:5.1f} s  held {kept / 1e6:6.1f} MB  build peak "
        f"{peak / 1e6:6.1f} MB  (RSS peak growth, tracemalloc's own included: "
        f"{rss_peak:6.1f} MB)  lookup hit {hit_med:4.2f} / "
        f"{hit_p99:4.2f} µs, miss {miss_med:4.2f} / {miss_p99:4.2f} µs (median / p99)"
    )
    return held, {
        "build_s": round(build_s, 2),
        "held_mb": round(kept / 1e6, 1),
        "build_peak_mb": round(peak / 1e6, 1),
        "lookup_hit_median_us": round(hit_med, 3),
        "lookup_hit_p99_us": round(hit_p99, 3),
        "lookup_miss_median_us": round(miss_med, 3),
        "lookup_miss_p99_us": round(miss_p99, 3),
    }


def set_covers(names, name):
    if name in names:
        return True
    dot = name.find(".")
    while dot >= 0:
        if name[dot + 1 :] in names:
            return True
        dot = name.find(".", dot + 1)
    return False


def micro():
    domains = make_domains(N_DOMAINS)
    rng = random.Random(3)
    # What a flow asks: one name, a subdomain of a listed one (hit) or an unlisted one (miss).
    hits = [f"www.{rng.choice(domains)}" for _ in range(CALLS)]
    misses = [f"www.host{i}.example{i % 97}.com" for i in range(CALLS)]
    results = {}
    print(f"{N_DOMAINS:,} domains, {CALLS:,} lookups each:")
    # Each build makes its own str objects, as reading the parsed file does: a set keeps
    # them, DomainSet drops them once hashed.
    _, results["domainset"] = measure_structure(
        "DomainSet (snitchd: hashes+index)",
        lambda: DomainSet((d.encode().decode() for d in domains), os.urandom(16)),
        DomainSet.covers, hits, misses,
    )  # fmt: skip
    gc.collect()
    _, results["set_of_str"] = measure_structure(
        "set of str (the obvious one)", lambda: {d.encode().decode() for d in domains},
        set_covers, hits, misses,
    )  # fmt: skip
    gc.collect()
    nets = make_networks(N_NETWORKS)
    addr_hits = [ip_address(n.split("/")[0]) for n in rng.sample(nets, 10_000)] * 20
    addr_misses = [IPv4Address(rng.getrandbits(32)) for _ in range(CALLS)]
    print(f"{N_NETWORKS:,} networks:")
    _, results["networkset"] = measure_structure(
        "NetworkSet (per prefix length)", lambda: NetworkSet(nets), NetworkSet.has, addr_hits,
        addr_misses,
    )  # fmt: skip
    return results


# -- with and without a loaded 1M-domain list, through snitchd ---------------------------------
def start_daemon(lab, tag, rules, lists_dir, db_dir):
    db = db_dir / f"snitch-{tag}.db"
    store = Store(db)
    try:
        for text in rules:
            store.add_rule(parse_rule(text), time.time(), "bench")
    finally:
        store.close()
    conf = db_dir / f"snitchd-{tag}.toml"
    conf.write_text(
        f'database = "{db}"\ndefault_action = "deny"\nqueue = {QUEUE}\nprompt_timeout = 5\n'
        f'log_level = "info"\nlists_dir = "{lists_dir}"\nattribution = "proc"\n'
    )
    (db_dir / "lists.json").write_text(
        specs_json([ListSpec("big", "/dev/null", ListFormat.DOMAINS, time.time())])
    )
    notify_path = db_dir / f"notify-{tag}.sock"
    notify_path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(180)
    log = db_dir / f"snitchd-{tag}.log"
    with open(log, "w") as err:
        proc = lab.popen(
            lab.client,
            [sys.executable, "-c", DAEMON_MAIN, "--config", str(conf)],
            env=lab.env | {"NOTIFY_SOCKET": str(notify_path)},
            stderr=err,
        )
    for _ in range(100):
        if "READY=1" in notify.recv(4096).decode():
            break
    notify.close()
    return proc, log


def wait_list(lab, want, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done = subprocess.run(
            [str(VENV_BIN / "snitchctl"), "--json", "lists", "show", "big"],
            capture_output=True, text=True, env=lab.env, check=False, timeout=30,
        )  # fmt: skip
        if done.returncode == 0 and json.loads(done.stdout).get("domains") == want:
            return time.monotonic()
        time.sleep(0.2)
    raise RuntimeError("the list did not load")


def conn(args):
    lab = NetLab()
    try:
        connload = build_client(lab.tmp)
        lab.build(connload)
        domains = make_domains(N_DOMAINS)
        setups = {
            "no list": [f"allow app={connload}"],
            "1M-domain list": [f"allow app={connload}", f"deny app={connload} to=list:big"],
        }
        results = {k: [] for k in setups}
        for rnd in range(args.rounds):
            order = list(setups) if rnd % 2 == 0 else list(reversed(setups))
            for tag in order:
                run_dir = lab.tmp / f"r{rnd}-{tag.replace(' ', '_')}"
                lists_dir = run_dir / "lists"
                lists_dir.mkdir(parents=True)
                if tag != "no list":
                    write_parsed(lists_dir / "big.list", ParsedList(tuple(domains), ()))
                proc, _ = start_daemon(lab, "d", setups[tag], lists_dir, run_dir)
                try:
                    loaded_s = None
                    if tag != "no list":
                        t0 = time.monotonic()
                        loaded_s = wait_list(lab, N_DOMAINS) - t0
                    lab.set_sysctls()
                    cpu0 = cpu_seconds(proc.pid)
                    done = lab.ns(
                        lab.client, str(connload), "tcp", SERVER_ADDR, str(PORT), "1",
                        str(args.seconds), "0.5", timeout=args.seconds + 60,
                    )  # fmt: skip
                    r = json.loads(done.stdout)
                    r["cpu_per_1000"] = round(
                        (cpu_seconds(proc.pid) - cpu0) / max(1, r["attempts"]) * 1000, 4
                    )
                    r["rss_mb"] = round(rss_mb(proc.pid), 1)
                    r["list_load_s"] = round(loaded_s, 1) if loaded_s else None
                    results[tag].append(r)
                    print(f"round {rnd} {tag:<15} {json.dumps(r, sort_keys=True)}")
                finally:
                    stop_process(proc)
        print("\nconnections through snitchd, tcp, 1 client thread (medians over rounds):")
        for tag, rows in results.items():

            def med(key, rows=rows):
                return statistics.median(r[key] for r in rows if r.get(key) is not None)

            print(
                f"  {tag:<15} {med('rate'):8.0f} conn/s  connect median "
                f"{med('p50_us'):6.0f} µs  p99 {med('p99_us'):6.0f} µs  "
                f"CPU {med('cpu_per_1000'):.3f} s/1000  RSS {med('rss_mb'):6.1f} MB"
            )
        return results
    finally:
        lab.close()
        shutil.rmtree(lab.tmp, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conn", action="store_true", help="also the connection bench (root)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "lists.json"
    )
    args = parser.parse_args()
    out = {"micro": micro()}
    if args.conn:
        out["conn"] = conn(args)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
