"""What a container's forwarded flow costs (issue 16), against a local flow, in one run.

The bench lab (client and server namespaces, the compiled connload client and server) plus a
"container" behind a bridge in the client namespace (tests/support/containers.py: its own
network namespace, NAT, a cgroup named like a Docker scope). For each round, interleaved:
connload's connect()+close() loop from the client namespace (OUTPUT path) and from the
container (FORWARD path), without a firewall and with snitchd (default allow, no rules: every
flow is attributed, decided and logged; no agent, so no prompt waits). The difference of the
two added medians is what the forwarded path costs beyond the local one.

Then, in this process, the pieces: a sock_diag exact lookup in our namespace and in the
container's (through the socket opened inside it), entering a namespace (a thread, setns, two
sockets; once per namespace), and a whole cold resolve (scan of /proc's namespaces + addresses).

A fifth series, "forward+snitchd-nosetns", runs snitchd as its service unit does, without
CAP_SYS_ADMIN (`setpriv --bounding-set=-sys_admin`): it may not enter the container's namespace,
so each new TCP flow of a container has its socket found in /proc/PID/net/tcp, in the worker,
while the flow waits. That read walks the kernel's whole TCP hash (every namespace's sockets
and every empty bucket): the pieces show it at rest and with `--sockets N` idle TCP sockets
more on the machine (held in the lab's client namespace, as other containers' would be).

Prints figures, asserts nothing. Run as root: python -m bench.bench_forward [--rounds N]
"""

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from ipaddress import ip_address
from pathlib import Path

from bench.connbench import DAEMON_MAIN, build_client
from bench.netlab import PORT, SERVER_ADDR, NetLab
from snitch_common.records import Flow, Proto
from snitchd.procs.netns import enter_and_open
from snitchd.procs.sockdiag import SockDiag, find_in_tables
from tests.support.containers import BRIDGE, GuestNet

ROOT = Path(__file__).resolve().parents[1]


def connload(lab, argv, seconds, warmup):
    done = subprocess.run(
        [*argv, "tcp", SERVER_ADDR, str(PORT), "1", str(seconds), str(warmup)],
        capture_output=True,
        text=True,
        timeout=seconds + warmup + 60,
        check=True,
    )
    return json.loads(done.stdout)


SOCKETS_HELPER = """
import resource, socket, sys, time
n = int(sys.argv[1]) // 2
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(4096)
keep = []
for _ in range(n):
    c = socket.create_connection(ls.getsockname()); a, _ = ls.accept(); keep += [c, a]
print("ready", flush=True)
time.sleep(600)
"""


def start_daemon(lab, tmp, prefix=()):
    # No per-user (per-source, for a container) limit of new flows: the guest's connects
    # would go past it, and what is measured is the cost of deciding each of them.
    conf = tmp / "snitchd.toml"
    conf.write_text(
        f'database = "{tmp / "snitch.db"}"\ndefault_action = "allow"\nqueue = 4242\n'
        'prompt_timeout = 5\nlog_level = "info"\nattribution = "proc"\ndocker_socket = ""\n'
        "new_flows_per_user = 0\n"
    )
    notify_path = tmp / "notify.sock"
    notify_path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(60)
    log = open(tmp / "snitchd.log", "a")  # noqa: SIM115 - kept open while the daemon runs
    proc = lab.popen(
        lab.client,
        [*prefix, sys.executable, "-c", DAEMON_MAIN, "--config", str(conf)],
        env=lab.env | {"NOTIFY_SOCKET": str(notify_path), "PYTHONPATH": str(ROOT / "daemon")},
        stderr=log,
    )
    try:
        for _ in range(100):
            if "READY=1" in notify.recv(4096).decode():
                break
    finally:
        notify.close()
    return proc, log


def queued(lab):
    """Packets the kernel handed to the queue, by rule: (OUTPUT, FORWARD)."""
    out = []
    for chain in ("SNITCH_QUEUE", "SNITCH_FORWARD"):
        text = lab.ns(lab.client, "iptables", "-t", "mangle", "-nvxL", chain, check=False).stdout
        out.append(sum(int(ln.split()[0]) for ln in text.splitlines() if "NFQUEUE" in ln))
    return tuple(out)


def proc_table(guest_ns, flow, n=200):
    """µs per /proc/PID/net/tcp search (find_in_tables) through a process in the namespace."""
    sleeper = subprocess.Popen(["ip", "netns", "exec", guest_ns, "sleep", "30"])
    try:
        time.sleep(0.3)
        began = time.perf_counter()
        for _ in range(n):
            find_in_tables(sleeper.pid, flow)
        return (time.perf_counter() - began) / n * 1e6
    finally:
        sleeper.kill()
        sleeper.wait()


def micro(lab, guest_ns, sockets):
    """µs per call: sock_diag in our namespace and in the guest's; entering a namespace; the
    /proc path, at rest and with `sockets` more TCP sockets on the machine."""
    figures = {}
    n = 2000
    ns_path = f"/run/netns/{guest_ns}"
    own = SockDiag()
    # A flow that has no socket: the lookup's cost is the same (one request, one answer).
    flow = Flow(Proto.TCP, ip_address("203.0.113.130"), 40000, ip_address(SERVER_ADDR), PORT)
    for label, diag in (("sock_diag here", own),):
        began = time.perf_counter()
        for _ in range(n):
            diag.find(flow)
        figures[label] = (time.perf_counter() - began) / n * 1e6
    _, diag_sock, rtnl = enter_and_open(ns_path)
    inside = SockDiag(diag_sock)
    began = time.perf_counter()
    for _ in range(n):
        inside.find(flow)
    figures["sock_diag in the container's namespace"] = (time.perf_counter() - began) / n * 1e6
    inside.close()
    rtnl.close()
    own.close()
    # Where snitchd may not enter namespaces (its service unit): the socket table, read through
    # a process in the namespace, in the worker.
    figures["socket table via /proc/PID/net/tcp (no setns)"] = proc_table(guest_ns, flow)
    if sockets:
        holder = lab.popen(lab.client, [sys.executable, "-c", SOCKETS_HELPER, str(sockets)])
        try:
            holder.stdout.readline()
            figures[f"  the same, {sockets} TCP sockets more on the machine"] = proc_table(
                guest_ns, flow
            )
            inside = SockDiag(enter_and_open(ns_path)[1])
            began = time.perf_counter()
            for _ in range(n):
                inside.find(flow)
            figures[f"  sock_diag in the container's, {sockets} sockets more"] = (
                (time.perf_counter() - began) / n * 1e6
            )
            inside.close()
        finally:
            holder.kill()
            holder.wait()
    times = []
    for _ in range(50):
        began = time.perf_counter()
        _, a, b = enter_and_open(ns_path)
        times.append(time.perf_counter() - began)
        a.close()
        b.close()
    figures["enter a namespace (thread + setns + 2 sockets), median"] = (
        statistics.median(times) * 1e6
    )
    return figures


def cold_resolve(lab, guest_addr):
    """A whole resolve with nothing held: /proc scan + entering every namespace + addresses.
    Run inside the client namespace (where snitchd runs), as snitchd would."""
    code = (
        "import socket, time; from ipaddress import ip_address;"
        "from snitchd.procs.netns import NetnsTable;"
        "from snitchd.procs import _run;"
        f"t = NetnsTable(); i = socket.if_nametoindex('{BRIDGE}'); b = time.perf_counter();"
        f"ns = _run(t.resolve(i, ip_address('{guest_addr}'), lambda: False));"
        "e = time.perf_counter() - b; import os;"
        "print(e * 1e6, len(t.pids), ns is not None)"
    )
    out = lab.ns(lab.client, sys.executable, "-c", code).stdout.split()
    return float(out[0]), int(out[1]), out[2] == "True"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--sockets", type=int, default=10000)
    args = parser.parse_args()
    lab = NetLab()
    guests = None
    daemon = None
    log = None
    try:
        exe = build_client(lab.tmp)
        lab.build(exe)
        guests = GuestNet(lab.client)
        guests.build()
        guest = guests.add()
        client_argv = ["ip", "netns", "exec", lab.client, str(exe)]
        guest_argv = guest.argv(str(exe))
        keys = ("output", "forward", "output+snitchd", "forward+snitchd", "forward+snitchd-nosetns")
        results = {k: [] for k in keys}
        nosetns = ("setpriv", "--bounding-set=-sys_admin", "--")
        counts = []
        for r in range(args.rounds):
            for key, runs in results.items():
                firewall = "snitchd" in key
                if daemon is not None and (not firewall or key.endswith("nosetns")):
                    daemon.terminate()
                    daemon.wait(15)
                    daemon = None
                if firewall and daemon is None:
                    prefix = nosetns if key.endswith("nosetns") else ()
                    daemon, log = start_daemon(lab, lab.tmp, prefix)
                    lab.set_sysctls()
                if not firewall and daemon is not None:
                    daemon.terminate()
                    daemon.wait(15)
                    daemon = None
                before = queued(lab) if firewall else (0, 0)
                argv = guest_argv if key.startswith("forward") else client_argv
                got = connload(lab, argv, args.seconds, args.warmup)
                after = queued(lab) if firewall else (0, 0)
                runs.append(got)
                if firewall:
                    counts.append(
                        (key, got["attempts"], after[0] - before[0], after[1] - before[1])
                    )
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        if daemon is not None:
            daemon.terminate()
            daemon.wait(15)
            daemon = None
        print(f"connect()+close(), 1 client thread, {args.rounds} rounds of {args.seconds} s, "
              "medians of the rounds:")  # fmt: skip
        med = {}
        for key, runs in results.items():
            med[key] = (
                statistics.median(x["p50_us"] for x in runs),
                statistics.median(x["p99_us"] for x in runs),
                statistics.median(x["rate"] for x in runs),
                sum(x["refused"] + x["timeouts"] + x["other_errors"] for x in runs),
            )
            p50, p99, rate, errors = med[key]
            print(f"  {key:17} {rate:9.0f} conn/s  p50 {p50:7.1f} µs  p99 {p99:7.1f} µs"
                  f"  errors {errors}")  # fmt: skip
        added_out = med["output+snitchd"][0] - med["output"][0]
        added_fwd = med["forward+snitchd"][0] - med["forward"][0]
        extra = added_fwd - added_out
        print(f"  snitchd adds (median): OUTPUT {added_out:.1f} µs, FORWARD {added_fwd:.1f} µs "
              f"per new flow: the forwarded path costs {extra:+.1f} µs more")  # fmt: skip
        added_proc = med["forward+snitchd-nosetns"][0] - med["forward"][0]
        print(f"  without CAP_SYS_ADMIN (the unit as shipped): FORWARD {added_proc:.1f} µs "
              f"per new flow ({added_proc - added_fwd:+.1f} µs against setns)")  # fmt: skip
        for key, attempts, q_out, q_fwd in counts:
            print(f"  queued {key}: {attempts} attempts, OUTPUT {q_out}, FORWARD {q_fwd}")
        print("pieces (µs per call, this process):")
        for label, value in micro(lab, guest.ns, args.sockets).items():
            print(f"  {label:55} {value:8.1f}")
        cold, spaces, found = cold_resolve(lab, guest.addr)
        print(f"  cold resolve of a new source ({spaces} namespaces on this machine, found: "
              f"{found}): {cold:.0f} µs")  # fmt: skip
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(15)
        if log is not None:
            log.close()
        if guests is not None:
            guests.destroy()
        lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
