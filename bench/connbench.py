"""snitch's benchmark: new connections per second through the firewall, against no firewall and
against the ceiling of its design, in one run, in network namespaces it creates and removes.

    sudo .venv/bin/python -m bench.connbench          # ~4-5 minutes; --help for options

Configurations, interleaved in rounds (the order rotates each round) so that noise from the rest
of the machine hits all alike:

  a  no firewall
  b  the ceiling: a Python NetfilterQueue callback that only accepts (bench/accept_only.py),
     behind the same kernel rules snitchd installs
  c  snitchd, default deny, one rule: allow app=<the load client>
  d  snitchd, default allow, no rules: every flow decided by the default action
  e  snitchd, default deny, 100k rules (bench/manyrules.py) written into its SQLite store
  g, h  c with 2 and with 4 queue reader processes (issue 21; c, d, e read one queue in
     snitchd itself); each reader's CPU is printed per load beside the whole tree's

snitchd attributes flows as it does by default, with its cgroup BPF hooks, attached to a
cgroup of the lab's own where the load client runs (`--attribution proc` measures the fallback,
sock_diag and /proc, instead; before this option existed the bench measured the fallback only,
because `ip netns exec` hides the machine's cgroup mount from snitchd).

Each configuration runs the same compiled load client (bench/connload.c): new TCP connections
(connect + close) with 1 and with 4 threads, and new UDP flows (new socket and port, sendto,
echo) with 1 thread. Daemon CPU comes from /proc/<pid>/stat (utime + stime), RSS from
/proc/<pid>/status, both summed over snitchd and its log writer (a child process); the kernel's
queue counter checks that every flow was queued. Then the micro-benchmarks (bench_micro.py,
bench_procs.py) and a py-spy profile of snitchd under load. Prints tables and writes
bench/results/latest.json. Figures are measured, never asserted.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from bench import hotpath, manyrules, report
from bench.monitorload import Monitor
from bench.netlab import PORT, SERVER_ADDR, NetLab
from snitch_common.rules import parse_rule
from snitchd.queue import kernel_stats
from snitchd.store import Store
from tests.support.lab import stop_process

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV_BIN = Path(sys.executable).parent
QUEUE = 4242
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOADS = (("tcp1", "tcp", 1), ("tcp4", "tcp", 4), ("udp1", "udp", 1))
SETUPS = {
    "a": ("no firewall", "none", None),
    "b": ("ceiling: accept-only callback", "ceiling", None),
    "c": ("snitch, allow rule for the client", "snitch", "deny"),
    "d": ("snitch, default action (allow)", "snitch", "allow"),
    "e": ("snitch, 100k rules", "snitch", "deny"),
    "f": ("ceiling read as snitchd does (asyncio)", "ceiling-asyncio", None),
    "m": ("c with two Network Monitor windows open (24h, live)", "snitch-monitored", "deny"),
    "g": ("c with 2 queue readers", "snitch", "deny"),
    "h": ("c with 4 queue readers", "snitch", "deny"),
    "q": ("c with every flow queued (fast_path off)", "snitch", "deny"),
}
# Queue reader processes per configuration (issue 21; config `queue_readers`): the others read
# their one queue in snitchd itself, as before readers existed. g and h decide c's flows.
READERS = {"g": 2, "h": 4}
# Configurations that decide every flow in Python (config `fast_path`): q is c without the
# kernel keeping a rule's allow for the client (`snitchd.fastpath`).
QUEUED_ALL = ("q",)
READER_CHILD = b"snitchd.readers.child"
# Configuration m's monitors (bench/monitorload.py): one on 24 h (Apps and Traffic 24h every
# 3 s), one live (Apps 1h every 3 s, like top --live); both take the Rates signal each second.
MONITOR_RANGES = ("24h", "10m")
# snitchd as its console script does it; PYTHONPATH picks the source tree (--alt-src for C/D/E).
DAEMON_MAIN = "import sys; from snitchd.main import main; sys.exit(main())"


def setup(key, src=None, alt_src=None):
    """(label, kind, default action, daemon source dir); an upper-case C, D or E is c, d or e
    run from the --alt-src tree, interleaved with the rest: an A/B test of a source change."""
    label, kind, action = SETUPS[key.lower()]
    if key.isupper():
        return f"{label} [alt]", kind, action, alt_src
    return label, kind, action, src or ROOT / "daemon"


def source_digest(src):
    """A short hash of a daemon tree's .py files: which code a result belongs to."""
    digest = hashlib.sha256()
    for path in sorted(Path(src).rglob("*.py")):
        digest.update(path.relative_to(src).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def build_client(out_dir):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise SystemExit("connbench: error: no C compiler (try: apt-get install gcc)")
    exe = out_dir / "connload"
    subprocess.run(
        [cc, "-O2", "-Wall", "-pthread", "-o", str(exe), str(HERE / "connload.c")], check=True
    )
    return Path(os.path.realpath(exe))


def make_stores(tmp, client_exe, n_rules):
    """Template databases, copied afresh for every daemon start."""
    stores = {}
    for key, texts in (
        ("c", [f"allow app={client_exe}"]),
        ("d", []),
        ("e", manyrules.rule_texts(n_rules, str(client_exe))),
    ):
        path = tmp / f"template-{key}.db"
        store = Store(path)
        try:
            for text in texts[:1]:
                store.add_rule(parse_rule(text), time.time(), "bench")
            store.db.conn.executemany(
                "INSERT INTO rules (text, created, hits, origin) VALUES (?, ?, 0, 'bench')",
                [(t, time.time()) for t in texts[1:]],
            )
            store.db.conn.commit()
        finally:
            store.close()
        stores[key] = path
    return stores


# -- reading the kernel's and the processes' counters ------------------------------------------
def tree(pid):
    """`pid` and its descendants: snitchd's figures include its log writer (snitchd.logwriter)."""
    pids = [pid]
    for p in pids:
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    pids += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return pids


def cpu_seconds(pid):
    total = 0.0
    for p in tree(pid):
        total += _own_cpu(p)
    return total


def _own_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def reader_cpu(pid):
    """{reader pid: CPU seconds} for snitchd's queue reader processes (issue 21)."""
    found = {}
    for p in tree(pid)[1:]:
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if READER_CHILD not in f.read():
                    continue
        except OSError:
            continue
        found[p] = _own_cpu(p)
    return found


def cpu_by_process(pid):
    """CPU seconds so far of snitchd, its log writer, exec watcher (procs/execs.py), hasher
    (procs/hasher.py) and queue readers, each apart: which one a cut moved."""
    out = {"snitchd": 0.0, "logwriter": 0.0, "execwatch": 0.0, "readers": 0.0, "hasher": 0.0}
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        role = (
            "snitchd"
            if p == pid
            else "execwatch"
            if b"execs.py" in cmdline
            else "hasher"
            if b"hasher.py" in cmdline
            else "readers"
            if READER_CHILD in cmdline
            else "logwriter"
        )
        out[role] += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def user_system(pid):
    """(user, system) CPU seconds of snitchd itself (not its children): how much of its CPU
    is the kernel's work in its system calls (the verdict's re-injection, netlink, /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def _tree_mb(pid, name, key):
    """The `key:` field (kB) of /proc/<p>/<name>, in MB, summed over the process tree."""
    total = 0.0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/{name}") as f:
                total += next(
                    (int(ln.split()[1]) / 1024 for ln in f if ln.startswith(key + ":")), 0.0
                )
        except OSError:
            continue
    return total


def rss_mb(pid, key="VmRSS"):
    """Summed over the process tree (VmHWM: the sum of each one's peak)."""
    return _tree_mb(pid, "status", key)


def pss_mb(pid):
    """Proportional set size summed over the tree: pages shared by snitchd and its writer (the
    interpreter, libraries) count once in the sum, where RSS counts them in each process."""
    return _tree_mb(pid, "smaps_rollup", "Pss")


def queue_counters(pid, queues=1):
    """`queue.kernel_stats` of our queues (QUEUE and, with queue readers, the next ones), in
    the network namespace of `pid`: empty when none is bound."""
    return kernel_stats(QUEUE, queues, f"/proc/{pid}/net/netfilter/nfnetlink_queue")


def machine_ticks():
    """(all, idle + iowait, irq + softirq) ticks of every CPU so far."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4], v[5] + v[6]


# -- the configurations under test --------------------------------------------------------------
class Running:
    """A firewall started in the client namespace (or none)."""

    def __init__(self, key, proc=None, startup_s=0.0, log=None):
        self.key = key
        self.proc = proc
        self.startup_s = startup_s
        self.log = log
        self.notify = None
        self.attribution = ""
        self.info = {}
        self.monitors = []

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None


def start(lab, key, stores, round_dir, env, srcs=(None, None), attribution="bpf"):
    """Start configuration `key`. `attribution`: how snitchd finds a flow's sender, "bpf" (its
    default; the hooks on the lab's cgroup, where the load client runs) or "proc" (the
    fallback: sock_diag and /proc)."""
    _, kind, action, src = setup(key, *srcs)
    if kind == "none":
        return Running(key)
    began = time.monotonic()
    if kind.startswith("ceiling"):
        argv = [sys.executable, str(HERE / "accept_only.py"), "--queue", str(QUEUE)]
        proc = lab.popen(
            lab.client, argv + (["--asyncio"] if kind.endswith("asyncio") else []), env=env
        )
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"accept_only.py did not start: {line!r}")
        return Running(key, proc, time.monotonic() - began)
    db = round_dir / f"snitch-{key}.db"
    shutil.copy(stores["c" if key.lower() in "mghq" else key.lower()], db)
    conf = round_dir / f"snitchd-{key}.toml"
    conf.write_text(
        f'database = "{db}"\ndefault_action = "{action}"\nqueue = {QUEUE}\n'
        'prompt_timeout = 5\nlog_level = "info"\n'
        f"dns_queue = {QUEUE - 1}\n"
        f'attribution = "{attribution}"\nbpf_cgroup = "{lab.bpf_cgroup_path}"\n'
        # Only where it differs from the default: --alt-src trees older than it still start.
        + (f"queue_readers = {READERS[key.lower()]}\n" if key.lower() in READERS else "")
        + ("fast_path = false\n" if key.lower() in QUEUED_ALL else "")
    )
    notify_path = round_dir / f"notify-{key}.sock"
    notify_path.unlink(missing_ok=True)
    log = round_dir / f"snitchd-{key}.log"
    # Kept open while the daemon runs: it also says STOPPING=1 on the way out.
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        notify.bind(str(notify_path))
        notify.settimeout(180)
        with open(log, "w") as err:
            proc = lab.popen(
                lab.client,
                [sys.executable, "-c", DAEMON_MAIN, "--config", str(conf)],
                env=env | {"NOTIFY_SOCKET": str(notify_path), "PYTHONPATH": str(src)},
                stderr=err,
            )
        for _ in range(100):  # bounded: READY=1 is among the first messages
            try:
                msg = notify.recv(4096).decode()
            except TimeoutError:
                raise RuntimeError("snitchd did not send READY=1:\n" + log.read_text()) from None
            if "READY=1" in msg:
                break
    except BaseException:
        notify.close()
        raise
    running = Running(key, proc, time.monotonic() - began, log)
    running.attribution = attribution
    running.notify = notify
    running.info["db"] = str(db)
    if kind == "snitch-monitored":
        try:
            start_monitors(running, env)
        except BaseException:
            stop(lab, running)
            raise
    return running


def start_monitors(running, env):
    """The monitor windows of configuration m, outside the lab's namespaces (they only talk
    to snitchd over the bus), ready once each has snitchd's first answer."""
    for shown in MONITOR_RANGES:
        monitor = Monitor(env, shown)
        running.monitors.append(monitor)
        monitor.ready()


def stop_monitors(running):
    took = [monitor.finish() for monitor in running.monitors]
    running.monitors = []
    if took:
        running.info["monitors"] = took


def stop(lab, running):
    if running.proc is None:
        return
    stop_monitors(running)
    if running.log is not None:
        done = subprocess.run(
            [str(VENV_BIN / "snitchctl"), "--json", "status"],
            capture_output=True,
            text=True,
            env=lab.env,
            timeout=30,
            check=False,
        )
        if done.returncode == 0:
            status = json.loads(done.stdout)
            keep = (
                "seen",
                "accepted",
                "dropped",
                "rejected",
                "errors",
                "by_default",
                "rules",
                "log_rows_written",
                "kernel_queue_dropped",
                "kernel_user_dropped",
                "attribution",
            )
            running.info["status"] = {k: status.get(k) for k in keep}
            if not str(status.get("attribution", "")).startswith(running.attribution):
                print(f"  ({running.key}: attribution was {status.get('attribution')!r}, "
                      f"not {running.attribution}: see {running.log})", flush=True)  # fmt: skip
        running.info["rss_end_mb"] = round(rss_mb(running.pid), 1)
        running.info["rss_peak_mb"] = round(rss_mb(running.pid, "VmHWM"), 1)
    try:
        running.info["exit"] = stop_process(running.proc)
    finally:
        if running.notify is not None:
            running.notify.close()
    if running.log is not None:
        text = running.log.read_text()
        lines = text.splitlines()
        running.info["log_errors"] = [line for line in lines if " ERROR " in line][:5] + (
            ["Traceback in the daemon log"] if "Traceback" in text else []
        )
        running.info["log_warnings"] = sum(" WARNING " in line for line in lines)
        with sqlite3.connect(running.info["db"]) as db:
            running.info["log_rows"] = [
                list(row)
                for row in db.execute(
                    "SELECT attribution, action, coalesce(rule_id, -1), proto, count(*) "
                    "FROM connections GROUP BY 1, 2, 3, 4 ORDER BY 5 DESC"
                )
            ]
    else:
        running.info["seen"] = (running.proc.stdout.read() or "").strip()


def measure(lab, connload, running, mode, threads, seconds, warmup, server_pid):
    pid = running.pid
    split0 = cpu_by_process(pid) if pid else {}
    us0 = user_system(pid) if pid else (0.0, 0.0)
    cpu0 = cpu_seconds(pid) if pid else 0.0
    readers0 = reader_cpu(pid) if pid else {}
    srv0 = cpu_seconds(server_pid)
    queues = READERS.get(running.key.lower(), 1)
    q0 = queue_counters(pid, queues) if pid else None
    m0 = machine_ticks()
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = lab.hooked(
        lab.client,
        str(connload),
        mode,
        SERVER_ADDR,
        str(PORT),
        str(threads),
        str(seconds),
        str(warmup),
        timeout=seconds + warmup + 60,
    )
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    m1 = machine_ticks()
    q1 = queue_counters(pid, queues) if pid else None
    cpu1 = cpu_seconds(pid) if pid else 0.0
    readers1 = reader_cpu(pid) if pid else {}
    split1 = cpu_by_process(pid) if pid else {}
    us1 = user_system(pid) if pid else (0.0, 0.0)
    srv1 = cpu_seconds(server_pid)
    r = json.loads(done.stdout)
    if readers1:
        # Each reader's CPU in this window (a reader replaced meanwhile counts from 0).
        r["reader_cpu_s"] = [
            round(c - readers0.get(p, 0.0), 3) for p, c in sorted(readers1.items())
        ]
    busy_s = ((m1[0] - m0[0]) - (m1[1] - m0[1])) / CLK_TCK
    irq_s = (m1[2] - m0[2]) / CLK_TCK
    client_s = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    r["daemon_cpu_s"] = round(cpu1 - cpu0, 3)
    r["cpu_per_1000"] = round((cpu1 - cpu0) / (r["attempts"] / 1000), 4) if pid else None
    r["snitchd_user_system_per_1000"] = [
        round((us1[i] - us0[i]) / (r["attempts"] / 1000), 4) for i in (0, 1)
    ]
    r["cpu_per_1000_by_process"] = {
        role: round((split1[role] - split0[role]) / (r["attempts"] / 1000), 4) for role in split1
    }
    r["machine_busy"] = round(busy_s / ((m1[0] - m0[0]) / CLK_TCK), 3)
    # In cores: the kernel's packet work (softirq: veth, conntrack, the queue), and everything
    # else on the machine that is not the client, the server or the firewall (others' jobs).
    wall = seconds + warmup
    known = client_s + (cpu1 - cpu0) + (srv1 - srv0) + irq_s
    r["softirq_cores"] = round(irq_s / wall, 2)
    r["other_cores"] = round(max(0.0, busy_s - known) / wall, 2)
    r["loadavg1"] = os.getloadavg()[0]
    if q0 and q1:
        r["queued"] = q1["queued_total"] - q0["queued_total"]
        r["queued_per_flow"] = round(r["queued"] / max(1, r["attempts"]), 4)
        r["queue_full_drops"] = q1["queue_dropped"] - q0["queue_dropped"]
    return r


# -- the run ------------------------------------------------------------------------------------
def rounds(lab, args, connload, stores, env):
    runs = {k: {load: [] for load, _, _ in LOADS} for k in args.configs}
    infos = {k: [] for k in args.configs}
    server_pid = lab.server_pid
    for rnd in range(args.rounds):
        order = args.configs[rnd % len(args.configs) :] + args.configs[: rnd % len(args.configs)]
        round_dir = lab.tmp / f"round{rnd}"
        round_dir.mkdir()
        for key in order:
            srcs = (args.src, args.alt_src)
            running = start(lab, key, stores, round_dir, env, srcs, args.attribution)
            try:
                if lab.sysctl_missing:
                    lab.set_sysctls()
                if running.pid is not None:
                    time.sleep(0.5)  # let start-up work (first flush, GC) settle
                    running.info["rss_idle_mb"] = round(rss_mb(running.pid), 1)
                    running.info["pss_idle_mb"] = round(pss_mb(running.pid), 1)
                running.info["startup_s"] = round(running.startup_s, 2)
                line = [f"round {rnd + 1}/{args.rounds} {key}"]
                cpu_before = cpu_seconds(running.pid) if running.pid else 0.0
                flows = 0
                for load, mode, threads in LOADS:
                    r = measure(
                        lab, connload, running, mode, threads, args.seconds, args.warmup, server_pid
                    )
                    runs[key][load].append(r)
                    flows += r["attempts"]
                    p50 = "-" if r["p50_us"] is None else f"{r['p50_us']:.1f}"
                    line.append(f"{load} {r['rate']:8.0f}/s p50 {p50:>6s} µs")
                    if "reader_cpu_s" in r:
                        each = "/".join(f"{c:.2f}" for c in r["reader_cpu_s"])
                        total = r["daemon_cpu_s"]
                        line.append(f"readers {each} s (snitchd+all {total:.2f} s)")
                    if r.get("cpu_per_1000_by_process"):
                        split = "/".join(f"{v:.3f}" for v in r["cpu_per_1000_by_process"].values())
                        user, system = r["snitchd_user_system_per_1000"]
                        line.append(
                            f"cpu/1k {r['cpu_per_1000']:.3f} ({split}; snitchd user {user:.3f}"
                            f" sys {system:.3f})"
                        )
                if running.pid is not None:
                    # Over all three loads: work done late (conntrack's flow ends come seconds
                    # after the flow, the log in batches) lands in some load's window anyway.
                    cpu = cpu_seconds(running.pid) - cpu_before
                    running.info["cpu_per_1000_all"] = round(cpu / (flows / 1000), 4)
            finally:
                stop(lab, running)
            infos[key].append(running.info)
            print("  ".join(line), flush=True)
    return runs, infos


def run_micro(lab, env, out_dir):
    figures = {}
    for name in ("bench_micro.py", "bench_procs.py"):
        out = out_dir / (name.removesuffix(".py") + ".json")
        print(f"\n== {name}", flush=True)
        done = lab.ns(
            lab.client,
            "env",
            f"PYTHONPATH={env['PYTHONPATH']}:{ROOT}",
            sys.executable,
            "-m",
            f"bench.{name.removesuffix('.py')}",
            "--json",
            str(out),
            check=False,
            timeout=600,
        )
        print(done.stdout.rstrip())
        if done.returncode != 0:
            print(f"{name} failed:\n{done.stderr}")
            continue
        figures[name.removesuffix(".py")] = json.loads(out.read_text())
    return figures


def run_profile(lab, args, connload, stores, env, out_dir):
    py_spy = hotpath.find_py_spy()
    if py_spy is None:
        print("\nprofile skipped: py-spy not found (pip install py-spy into the venv)")
        return None
    round_dir = lab.tmp / "profile"
    round_dir.mkdir()
    profiles = {}
    for key, load, mode, threads in (
        ("c", "tcp1", "tcp", 1),
        ("c", "tcp4", "tcp", 4),
        ("d", "tcp1", "tcp", 1),
        ("e", "tcp1", "tcp", 1),
    ):
        if key not in stores:
            continue
        running = start(lab, key, stores, round_dir, env, (args.src, None), args.attribution)
        spy = None
        try:
            raw = out_dir / f"profile-{key}-{load}.txt"
            spy = hotpath.record(py_spy, running.pid, args.profile_seconds, raw, args.profile_lines)
            time.sleep(0.5)
            measure(
                lab, connload, running, mode, threads, args.profile_seconds - 1, 0, lab.server_pid
            )
            _, err = spy.communicate(timeout=args.profile_seconds + 60)
            if spy.returncode != 0 or not raw.exists():
                print(f"py-spy failed: {err.strip()}")
                continue
            for process, name in (
                ("main", "snitchd"),
                ("logwriter", "its log writer"),
                ("execwatch", "its exec watcher"),
            ):
                summary = hotpath.top(
                    raw, args.profile_seconds, lines=args.profile_lines, process=process
                )
                summary["file"] = str(raw.relative_to(ROOT) if raw.is_relative_to(ROOT) else raw)
                profiles[f"{key}-{load}" + ("" if process == "main" else f"-{process}")] = summary
                hotpath.print_top(summary, f"{name} ({setup(key)[0]}), {load}")
        finally:
            if spy is not None and spy.poll() is None:
                stop_process(spy, 5)
            stop(lab, running)
    return profiles


def _git(*argv):
    argv = ["git", "-C", str(ROOT), *argv]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return done.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed load per measurement")
    parser.add_argument("--warmup", type=float, default=0.5, help="untimed load before it")
    parser.add_argument(
        "--configs",
        default="abcde",
        help="which of a-h, in round order (f: the ceiling on asyncio; g, h: c with 2 and 4 "
        "queue readers; C, D, E: c, d, e with the daemon from --alt-src)",
    )
    parser.add_argument(
        "--src", type=Path, default=None, help="the daemon/ tree for c, d, e (default: ./daemon)"
    )
    parser.add_argument(
        "--alt-src", type=Path, default=None, help="a daemon/ tree (holding snitchd/) for C, D, E"
    )
    parser.add_argument("--rules", type=int, default=100_000, help="rules of configuration e")
    parser.add_argument(
        "--attribution",
        choices=("bpf", "proc"),
        default="bpf",
        help="snitchd's attribution path: bpf (its default; hooks on the lab's cgroup, where "
        "the load client runs) or proc (the fallback: sock_diag and /proc)",
    )
    parser.add_argument(
        "--linger",
        type=int,
        default=1,
        help="seconds conntrack keeps a finished flow (1; the kernel's TIME_WAIT is 120): the "
        "log writer's live dump reads every entry every second",
    )
    parser.add_argument("--no-micro", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--profile-seconds", type=int, default=6)
    parser.add_argument(
        "--profile-lines", action="store_true", help="rank source lines, not functions"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latest.json")
    args = parser.parse_args()
    args.configs = [c for c in args.configs if c.lower() in SETUPS]
    if any(c.isupper() for c in args.configs) and args.alt_src is None:
        parser.error("configurations C, D, E need --alt-src")
    if not 1 <= args.rounds <= 20 or not 0.5 <= args.seconds <= 60:
        parser.error("--rounds must be 1..20 and --seconds 0.5..60")
    if os.geteuid() != 0:
        raise SystemExit("connbench: error: needs root (network namespaces, NFQUEUE)")
    out_dir = args.out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(args.src or ROOT / "daemon")}
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": _git("rev-parse", "--short", "HEAD").strip(),
        "daemon_changed_since_commit": bool(_git("status", "--porcelain", "daemon").strip()),
        "src": str(args.src or ROOT / "daemon"),
        "src_digest": source_digest(args.src or ROOT / "daemon"),
        "alt_src": str(args.alt_src) if args.alt_src else None,
        "alt_src_digest": source_digest(args.alt_src) if args.alt_src else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "setups": {k: setup(k)[0] for k in args.configs},
    }
    lab = NetLab(args.linger)
    try:
        connload = build_client(lab.tmp)
        lab.build(connload)
        env["DBUS_SYSTEM_BUS_ADDRESS"] = lab.bus_address
        stores = make_stores(lab.tmp, connload, args.rules)
        print(
            f"lab: {lab.client} / {lab.server}, load client {connload}; "
            f"{len(args.configs)} configurations x {args.rounds} rounds x "
            f"{len(LOADS)} loads of {args.warmup}+{args.seconds} s",
            flush=True,
        )
        runs, infos = rounds(lab, args, connload, stores, env)
        micro = {} if args.no_micro else run_micro(lab, env, out_dir)
        profile = (
            None if args.no_profile else run_profile(lab, args, connload, stores, env, out_dir)
        )
    finally:
        lab.close()
    meta["loadavg_after"] = os.getloadavg()
    meta["seconds"] = round(time.monotonic() - began, 1)
    summary = report.summarize(runs, infos, args.configs)
    targets = report.targets(summary, micro)
    result = {
        "meta": meta,
        "summary": summary,
        "targets": targets,
        "micro": micro,
        "profile": profile,
        "runs": runs,
        "daemon": infos,
    }
    report.print_tables(summary, targets, meta, meta["setups"])
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(f"\nwrote {args.out} ({meta['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
