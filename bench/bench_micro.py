"""Micro-benchmarks of the packet path's steps, in-process, without the kernel queue.

- rule lookup: `RuleSet.match` with 100k rules (bench/manyrules.py), best and worst cases, and
  what a rule change costs at that size (one rule in or out of the held set; the store write;
  the longest loop stall meanwhile), and a change made outside snitchd (read whole in a worker);
- decode: `packet.decode` of IPv4 and IPv6 TCP SYNs and a UDP datagram;
- log: `EventLog.record` per decision, and `Store.log_decisions` rows/s (batches of 2,000);
- the whole `Firewall.on_packet` with a stand-in packet (payload, outdev, accept) for a real TCP
  socket of this process, step by step: warm (the same socket every time) and as under the
  connect()+close() load (a new socket every time, so the owner cache misses and the last-seen
  process's fds are scanned).

Prints figures, asserts nothing; `--json PATH` writes them. Run as root (sock_diag of every
socket): python -m bench.bench_micro
"""

import argparse
import asyncio
import dataclasses
import inspect
import json
import logging
import os
import pickle
import socket
import sqlite3
import statistics
import struct
import sys
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path

from bench import manyrules
from snitch_common.records import Attribution, Flow, Process, Proto
from snitch_common.rules import Action, parse_rule
from snitchd.config import Config
from snitchd.decide import RuleSet, decide
from snitchd.events import EventLog
from snitchd.firewall import Firewall
from snitchd.logwriter.parent import Recorder
from snitchd.logwriter.protocol import Batch
from snitchd.packet import decode
from snitchd.procs import Attributor
from snitchd.prompts import Broker
from snitchd.store import Decision, FlowBytes, Store, log_row
from tests.support import packets
from tests.unit.test_traffic_codec import KERNEL_TCP_END  # a real kernel DESTROY event

CLIENT_EXE = "/opt/bench/connload"
FIGURES: dict[str, dict[str, float]] = {}


def stats(label, samples_ns, key=None):
    us = sorted(x / 1000 for x in samples_ns)
    p99 = us[min(len(us) - 1, int(len(us) * 0.99))]
    med = statistics.median(us)
    FIGURES[key or label] = {"n": len(us), "median_us": round(med, 2), "p99_us": round(p99, 2)}
    print(f"{label:58s} n={len(us):6d}  median {med:8.2f} µs  p99 {p99:8.2f} µs")
    return med


def timed(fn, args_list, repeat=1):
    clock = time.perf_counter_ns
    out = []
    for _ in range(repeat):
        out = []
        for args in args_list:
            start = clock()
            fn(*args)
            out.append(clock() - start)
    return out


def bench_rules():
    print("-- rule lookup: RuleSet.match, 100k rules")
    texts = manyrules.rule_texts(100_000, CLIENT_EXE)
    started = time.perf_counter()
    parsed = [parse_rule(t) for t in texts]
    parse_s = time.perf_counter() - started
    started = time.perf_counter()
    rules = RuleSet(enumerate(parsed, 1))
    index_s = time.perf_counter() - started
    print(
        f"parse 100k rule texts: {parse_s:.2f} s ({parse_s * 10:.1f} µs each); "
        f"build the index: {index_s:.2f} s"
    )
    FIGURES["rules_parse_100k"] = {"seconds": round(parse_s, 3)}
    FIGURES["rules_index_100k"] = {"seconds": round(index_s, 3)}
    src, dst = IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2")
    client = Process(Attribution.PROCESS, pid=4242, uid=0, exe=CLIENT_EXE)
    other = Process(Attribution.PROCESS, pid=4243, uid=1000, exe=manyrules.other_app(77))
    stranger = Process(Attribution.PROCESS, pid=4244, uid=1000, exe="/usr/bin/unknown")
    kernel = Process.kernel()
    now = time.time()
    cases = [
        ("client app, flow to the load server (its allow rule)", client, Proto.TCP, dst, 9000),
        (
            "other app, its exact address+port rule",
            other,
            Proto.TCP,
            IPv4Address("203.0.113.77"),
            443,
        ),
        (
            "app without rules, any-app address rule",
            stranger,
            Proto.TCP,
            IPv4Address("203.0.113.5"),
            1,
        ),
        (
            "app without rules, no rule matches (any-app /29 rules)",
            stranger,
            Proto.TCP,
            IPv4Address("198.51.100.9"),
            9,
        ),
        ("kernel (no process), no rule matches", kernel, Proto.UDP, dst, 9000),
    ]
    worst = 0.0
    for i, (label, proc, proto, to, port) in enumerate(cases):
        flow = Flow(proto, src, 40000, to, port, "veth0", 6 if proto is Proto.TCP else 17)
        hit = rules.match(flow, proc, frozenset(), now)
        med = stats(
            f"match: {label}",
            timed(rules.match, [(flow, proc, frozenset(), now)] * 5000, repeat=2),
            key=f"rule_match_{i}",
        )
        FIGURES[f"rule_match_{i}"]["hit"] = hit[0] if hit else -1
        worst = max(worst, med)
    FIGURES["rule_match_worst_median_us"] = {"median_us": round(worst, 2)}
    return texts


def bench_rule_change(texts, tmp):
    """What a rule change costs at 100k rules: on the loop (the one rule in or out of its
    bucket), for the D-Bus caller (plus the store write in a worker thread), and the longest
    the loop went without running meanwhile; and the same for a change made outside snitchd
    (read, parse and index whole in a worker thread, swap on the loop)."""
    print("-- rule change at 100k rules")
    path = tmp / "rules.db"
    store = Store(path)
    try:
        now = time.time()
        store.db.conn.executemany(
            "INSERT INTO rules (text, created, hits, origin) VALUES (?, ?, 0, 'bench')",
            [(t, now) for t in texts],
        )
        store.db.conn.commit()
        broker = Broker(time.time, 5, 10, lambda uid: uid == 0)
        started = time.perf_counter()
        fw = Firewall(Config(database=str(path)), store, None, None, broker)
        read_all = time.perf_counter() - started
        print(f"read, parse and index 100k rules whole (at start): {read_all:.2f} s")
        FIGURES["rules_read_whole_100k"] = {"seconds": round(read_all, 3)}
        asyncio.run(_rule_changes(fw, path))
    finally:
        store.close()


async def _rule_changes(fw, path):
    # The loop part alone: one any-app rule (the bucket of 2,700 rules) in, then out.
    rules = fw.rules
    entries = [
        (10_000_000 + i, parse_rule(f"deny to=192.0.2.{i % 250} port={i + 1}")) for i in range(1000)
    ]
    adds = timed(rules.add, [(e,) for e in entries])
    removes = timed(rules.remove, [(e[0],) for e in entries])
    stats("RuleSet.add, one any-app rule", adds, key="ruleset_add_100k")
    stats("RuleSet.remove, one any-app rule", removes, key="ruleset_remove_100k")
    gaps = []
    ticker = asyncio.create_task(_loop_gaps(gaps))
    await asyncio.sleep(0.05)
    totals = []
    for i in range(20):
        started = time.perf_counter()
        record = await fw.add_rule(parse_rule(f"allow to=192.0.2.{i} port=9{i:03d}"), "bench")
        await fw.delete_rule(record.id, "bench")
        totals.append(time.perf_counter() - started)
    med = statistics.median(totals) * 1e3
    print(f"add-rule + delete-rule for the caller (store writes included): {med:.1f} ms median")
    worst_gap = max(gaps) * 1e3
    print(f"  longest the loop went without running meanwhile: {worst_gap:.1f} ms")
    FIGURES["rule_change_100k"] = {"caller_ms": round(med, 2), "loop_gap_ms": round(worst_gap, 2)}
    gaps.clear()
    raw = sqlite3.connect(path)
    raw.execute("INSERT INTO rules (text, created, hits) VALUES ('deny port=4444', 0, 0)")
    raw.commit()
    raw.close()
    started = time.perf_counter()
    await fw.check_outside_change(time.time())
    total = time.perf_counter() - started
    worst_gap = max(gaps) * 1e3
    print(
        f"a change made outside snitchd (read whole in a worker): {total:.2f} s; "
        f"longest the loop went without running: {worst_gap:.1f} ms"
    )
    FIGURES["outside_change_100k"] = {
        "seconds": round(total, 3),
        "loop_gap_ms": round(worst_gap, 2),
    }
    ticker.cancel()


async def _loop_gaps(gaps):
    """How late a 1 ms sleep wakes up: the loop's longest stall, as a packet would see it."""
    while True:
        started = time.perf_counter()
        await asyncio.sleep(0.001)
        gaps.append(time.perf_counter() - started - 0.001)


def bench_decode():
    print("-- decode: packet.decode")
    v4 = packets.ipv4(6, packets.tcp(40000, 9000), frag=0x4000)
    udp = packets.ipv4(17, packets.udp(40000, 9000, b"x"), frag=0x4000)
    v6 = packets.ipv6(6, packets.tcp(40000, 80))
    for key, label, data in (
        ("decode_v4_tcp", "IPv4 TCP SYN", v4),
        ("decode_v4_udp", "IPv4 UDP", udp),
        ("decode_v6_tcp", "IPv6 TCP SYN", v6),
    ):
        assert decode(data, "veth0").dport in (9000, 80)
        stats(f"decode {label}", timed(decode, [(data, "veth0")] * 20000, repeat=2), key=key)


def _destroy_event(sport=40000, kind=2):
    """A conntrack DESTROY event as the kernel sends it for a TCP flow with counters (`kind`
    0: IPCTNL_MSG_CT_NEW, an entry of a dump)."""
    from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_CTNETLINK  # noqa: PLC0415
    from pyroute2.netlink.nfnetlink.nfctsocket import IPCTNL_MSG_CT_DELETE, nfct_msg  # noqa: PLC0415

    def tup(a, b, sport, dport):
        ip = [("CTA_IP_V4_SRC", a), ("CTA_IP_V4_DST", b)]
        ports = [("CTA_PROTO_NUM", 6), ("CTA_PROTO_SRC_PORT", sport), ("CTA_PROTO_DST_PORT", dport)]
        return {"attrs": [("CTA_TUPLE_IP", {"attrs": ip}), ("CTA_TUPLE_PROTO", {"attrs": ports})]}

    def counters(packets, size):
        return {"attrs": [("CTA_COUNTERS_PACKETS", packets), ("CTA_COUNTERS_BYTES", size)]}

    msg = nfct_msg()
    assert IPCTNL_MSG_CT_DELETE == 2
    msg["header"]["type"] = (NFNL_SUBSYS_CTNETLINK << 8) | kind
    msg["header"]["sequence_number"] = 7
    msg["nfgen_family"] = socket.AF_INET
    msg["attrs"] = [
        ("CTA_TUPLE_ORIG", tup("192.0.2.1", "192.0.2.2", sport, 9000)),
        ("CTA_TUPLE_REPLY", tup("192.0.2.2", "192.0.2.1", 9000, sport)),
        ("CTA_STATUS", 0x18E),
        ("CTA_COUNTERS_ORIG", counters(3, 180)),
        ("CTA_COUNTERS_REPLY", counters(2, 120)),
        ("CTA_ID", 12345),
        ("CTA_MARK", 0),
        ("CTA_USE", 1),
    ]
    msg.encode()
    return bytes(msg.data)


def bench_flow_end_decode():
    """traffic.decode_ends: one conntrack DESTROY event per finished flow, on the event loop."""
    try:
        from snitchd.logwriter.conntrack import decode_ends  # noqa: PLC0415 (newer trees only)
    except ImportError:
        return
    data = _destroy_event()
    assert decode_ends(data)[0].dport == 9000
    stats(
        "traffic.decode_ends, one DESTROY event (per flow, in the log writer)",
        timed(decode_ends, [(data,)] * 2000, repeat=2),
        key="flow_end_decode",
    )


def _decision(i):
    flow = Flow(
        Proto.TCP,
        IPv4Address("192.0.2.1"),
        1024 + i % 60000,
        IPv4Address("192.0.2.2"),
        9000,
        "veth0",
        6,
    )
    proc = Process(
        Attribution.PROCESS, pid=4242, uid=0, exe=CLIENT_EXE, cmdline=(CLIENT_EXE,), sha256="0" * 64
    )
    return Decision(time.time(), flow, proc, Action.ALLOW, 1, "rule 1")


def bench_log(tmp):
    print("-- connection log: EventLog.record, the hand-over to the writer, Store.log_decisions")
    store = Store(tmp / "log.db")
    try:
        events = EventLog(store, Recorder(str(tmp / "log.db")))
        decisions = [_decision(i) for i in range(20000)]
        stats(
            "EventLog.record (append; per decision)",
            timed(events.record, [(d,) for d in decisions]),
            key="log_record",
        )
        batch = 2000
        started = time.perf_counter()
        for i in range(0, len(decisions), batch):
            store.log_decisions(decisions[i : i + batch])
        elapsed = time.perf_counter() - started
        rate = len(decisions) / elapsed
        print(
            f"Store.log_decisions, batches of {batch}: {rate:,.0f} rows/s "
            f"({elapsed / len(decisions) * 1e6:.1f} µs a row, in the log writer process)"
        )
        FIGURES["log_write"] = {"rows_per_s": round(rate), "us_per_row": elapsed / len(decisions)}
        bench_flow_ends(store, decisions)
        started = time.perf_counter()
        for i in range(0, len(decisions), batch):
            pickle.dumps(Batch(i, [log_row(d) for d in decisions[i : i + batch]]))
        elapsed = time.perf_counter() - started
        print(
            f"hand-over to the log writer (log_row + pickle), batches of {batch}: "
            f"{elapsed / len(decisions) * 1e6:.2f} µs a row, in snitchd's worker thread"
        )
        FIGURES["log_handover"] = {"us_per_row": round(elapsed / len(decisions) * 1e6, 3)}
    finally:
        store.close()


def bench_flow_ends(store, decisions):
    """Byte counters joined to their log rows (one UPDATE per ended flow), if the tree has it."""
    ends = [
        FlowBytes(
            "tcp", str(d.flow.src), d.flow.sport, str(d.flow.dst), d.flow.dport, 120, 60, d.time + 1
        )
        for d in decisions[:4000]
    ]
    started = time.perf_counter()
    for i in range(0, len(ends), 2000):
        store.record_flow_ends(ends[i : i + 2000])
    elapsed = time.perf_counter() - started
    rate = len(ends) / elapsed
    print(
        f"Store.record_flow_ends, batches of 2000: {rate:,.0f} rows/s "
        f"({elapsed / len(ends) * 1e6:.1f} µs a flow end, in the log writer process)"
    )
    FIGURES["flow_ends_write"] = {"rows_per_s": round(rate), "us_per_row": elapsed / len(ends)}


def _kernel_message(sport, kind=0x102, seq=0, timeout=None, mark=0x100):
    """`KERNEL_TCP_END` for source port `sport` (both tuples), as a DESTROY event or (kind
    0x100) an entry of a dump, with a CTA_MARK and, when given, a CTA_TIMEOUT."""
    data = bytearray(KERNEL_TCP_END)
    for at in (
        data.find(bytes.fromhex("0600020087260000")),
        data.find(bytes.fromhex("0600030087260000")),
    ):
        struct.pack_into("!H", data, at + 4, sport)
    extra = struct.pack("=HH", 8, 8) + struct.pack("!I", mark)
    if timeout is not None:
        extra += struct.pack("=HH", 8, 7) + struct.pack("!I", timeout)
    data += extra
    struct.pack_into("=IHHI", data, 0, len(data), kind, 0 if kind == 0x102 else 2, seq)
    return bytes(data)


def bench_writer(tmp, flows=20000, batch=2500, lifetime=2, live_flag=False):
    """The log writer's CPU per flow, everything it does for one flow but the system calls:
    the batch of rows (insert, and `Accounting.learn`), the flow's entry in the live dumps
    while conntrack holds it (decode, count), its DESTROY event (decode, `on_end`), the UPDATE
    that joins its end to its row, and the accounting of the end. Kernel-shaped messages, a
    new tuple per flow, batches as snitchd sends them (`batch` rows every half second at ~5k
    flows/s). Each batch's entries stay `lifetime` seconds (a tick each second, on a clock of
    the bench's: connbench's 1 s timeouts give ~2, a real kernel's TIME_WAIT 120), with a
    live view open (`live_flag`: a dump each tick) or not (a dump each IDLE_DUMP_INTERVAL)."""
    from snitchd.logwriter.child import LogWriter  # noqa: PLC0415 (the child's modules)
    from snitchd.logwriter.conntrack import FlowEnds  # noqa: PLC0415
    from snitchd.logwriter.livebytes import decode_dump  # noqa: PLC0415

    class Dumps:
        """Stands in for `livebytes.LiveDump`: the datagrams of one dump, decoded as it does."""

        def __init__(self):
            self.datagrams = []

        def dump(self):
            out = []
            for data in self.datagrams:
                out += decode_dump(data, 7)[0]
            return out

    done_msg = struct.pack("=IHHII", 20, 3, 2, 7, 0) + bytes(4)
    proc = _decision(0).proc
    src, dst = IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2")
    rows = [
        log_row(
            Decision(
                time.time(),
                Flow(Proto.TCP, src, 1024 + i, dst, 8000, "veth0", 6),
                proc,
                Action.ALLOW,
                1,
                "rule 1",
            )
        )
        for i in range(flows)
    ]
    opens = [_kernel_message(1024 + i, 0x100, 7, 120) for i in range(flows)]
    ends = [_kernel_message(1024 + i) for i in range(flows)]
    try:
        from snitchd import ctwire  # noqa: PLC0415 (newer trees only)

        ctwire.forget()  # each run reads its tuples afresh, as a writer that just started
    except ImportError:
        pass
    store = Store(tmp / f"writer-{lifetime}{'-live' if live_flag else ''}.db")
    try:
        writer = LogWriter(None, store)
        live = Dumps()
        writer.live = live
        writer.live_wanted = live_view = live_flag
        has_live = "live" in {f.name for f in dataclasses.fields(Batch)}  # older trees: no

        def batch_of(seq, rows):
            return Batch(seq, rows, live=live_flag) if has_live else Batch(seq, rows)

        tick = writer.on_tick
        accepts_now = "now" in inspect.signature(tick).parameters  # older trees: every tick
        now = 1_700_000_000.0
        reads = 0
        real_dump = live.dump

        def counted_dump():
            nonlocal reads
            reads += 1
            return real_dump()

        live.dump = counted_dump
        reader = FlowEnds(writer.on_end)
        clock = time.process_time
        spent = {"batches": 0.0, "dumps": 0.0, "ends": 0.0}
        for first in range(0, flows, batch):
            t0 = clock()
            writer.handle(batch_of(first + 1, rows[first : first + batch]))
            # Each flow of the batch is open in `dumps` dumps (50 entries a datagram), then ends.
            entries = opens[first : first + batch]
            live.datagrams = [b"".join(entries[k : k + 50]) for k in range(0, len(entries), 50)] + [
                done_msg
            ]
            t1 = clock()
            for _ in range(lifetime):
                now += 1.0
                tick(now) if accepts_now else tick()
            t2 = clock()
            for data in ends[first : first + batch]:
                reader._deliver(data)
            t3 = clock()
            spent["batches"] += t1 - t0
            spent["dumps"] += t2 - t1
            spent["ends"] += t3 - t2
        t0 = clock()
        writer.handle(batch_of(flows + 1, []))
        writer.handle(batch_of(flows + 2, []))  # the last ends are joined one batch late
        spent["batches"] += clock() - t0
        elapsed = sum(spent.values())
        joined = store.db.execute("SELECT count(*) FROM connections WHERE ended IS NOT NULL")
        assert joined.fetchone()[0] == flows, "every end joined to its row"
        assert reader.events == flows and writer.accounting.unknown == 0
    finally:
        store.close()
    per_flow = elapsed / flows * 1e6
    parts = {k: round(v / flows * 1e6, 2) for k, v in spent.items()}
    batches = -(-flows // batch)
    view = "live view open" if live_view else "no live view"
    print(
        f"log writer, per flow ({flows} flows, batches of {batch}, entries kept {lifetime} s, "
        f"{view}: {reads / batches:.1f} dumps each): "
        f"{per_flow:.1f} µs CPU = {per_flow / 1000:.4f} s per 1000 flows "
        f"(batches {parts['batches']}, dumps {parts['dumps']}, ends {parts['ends']} µs)"
    )
    key = f"writer_per_flow_{lifetime}s" + ("_live" if live_view else "")
    FIGURES[key] = {"us_cpu": round(per_flow, 2), "reads": reads / batches, **parts}


class StandInPacket:
    """What Firewall.on_packet uses of a netfilterqueue.Packet."""

    __slots__ = ("outdev", "payload", "verdict")
    hook = 3  # NF_INET_LOCAL_OUT: a flow of this machine's own (FORWARD is 2)
    indev = 0

    def __init__(self, payload, outdev):
        self.payload = payload
        self.outdev = outdev
        self.verdict = None

    def get_hw(self):
        return None

    def get_mark(self):
        return 0

    def get_payload(self):
        return self.payload

    def accept(self):
        self.verdict = "accept"

    def repeat(self):  # an allow: through the hook again with the allow mark (firewall._give)
        self.verdict = "accept"

    def drop(self):
        self.verdict = "drop"

    def set_mark(self, mark):
        pass


def _syn_of(sock):
    (src, sport), (dst, dport) = sock.getsockname(), sock.getpeername()
    return packets.ipv4(6, packets.tcp(sport, dport), src=IPv4Address(src), dst=IPv4Address(dst))


async def _new_sockets(fw, listener, lo, n):
    """on_packet of a new socket's SYN, to its verdict: without the BPF recorder a socket
    never seen is a worker's job (its /proc fds), so this runs on a loop, as snitchd does."""
    new_ns = []
    for _ in range(n):
        s = socket.create_connection(listener.getsockname())
        pkt = StandInPacket(_syn_of(s), lo)
        start = time.perf_counter_ns()
        fw.on_packet(pkt)
        for _ in range(10_000):  # bounded: 10 s at most
            if pkt.verdict is not None:
                break
            await asyncio.sleep(0.001 if _ else 0)
        new_ns.append(time.perf_counter_ns() - start)
        assert pkt.verdict == "accept", pkt.verdict
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        _drain(listener)
    return new_ns


def bench_on_packet(tmp):
    print("-- Firewall.on_packet, stand-in packet, a real TCP socket of this process")
    exe = os.path.realpath(sys.executable)
    store = Store(tmp / "path.db")
    attributor = Attributor()
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    held = []
    try:
        store.add_rule(parse_rule(f"allow app={exe}"), time.time(), "bench")
        events = EventLog(store, Recorder(str(tmp / "path.db")))
        broker = Broker(time.time, 30, 64, lambda uid: True)
        fw = Firewall(
            Config(default_action=Action.DENY, database=str(tmp / "path.db")),
            store,
            attributor,
            events,
            broker,
        )
        broker.attach(fw)
        lo = socket.if_nametoindex("lo")
        warm_sock = socket.create_connection(listener.getsockname())
        held.append(warm_sock)
        warm = StandInPacket(_syn_of(warm_sock), lo)
        # First sight of this process (/proc scan, psutil, sha256): a worker's job under
        # on_packet, which needs a running loop; done here whole, so on_packet finds it cached.
        attributor.lookup(decode(warm.payload, "lo"))
        fw.on_packet(warm)
        assert warm.verdict == "accept", warm.verdict
        n = 5000
        stats(
            "on_packet, same socket (warm owner cache)",
            timed(fw.on_packet, [(warm,)] * n, repeat=2),
            key="on_packet_warm",
        )
        new_ns = asyncio.run(_new_sockets(fw, listener, lo, n))
        stats(
            "on_packet to verdict, new socket each time (proc path: a worker finds its owner)",
            new_ns,
            key="on_packet_new_socket",
        )
        # The steps on their own, as on_packet runs them.
        payload = warm.payload
        flow = decode(payload, "lo")
        stats("  step: decode", timed(decode, [(payload, "lo")] * n, repeat=2), key="step_decode")
        stats(
            "  step: Attributor.lookup, warm",
            timed(attributor.lookup, [(flow,)] * n, repeat=2),
            key="step_lookup_warm",
        )
        lookup_new = []
        for _ in range(2000):
            s = socket.create_connection(listener.getsockname())
            f = decode(_syn_of(s), "lo")
            start = time.perf_counter_ns()
            attributor.lookup(f)
            lookup_new.append(time.perf_counter_ns() - start)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
            _drain(listener)
        stats(
            "  step: Attributor.lookup, new socket (hot-pid fd scan)",
            lookup_new,
            key="step_lookup_new_socket",
        )
        proc = attributor.lookup(flow)
        now = time.time()
        stats(
            "  step: decide (1 rule)",
            timed(decide, [(flow, proc, fw.rules, now)] * n, repeat=2),
            key="step_decide",
        )
        stats(
            "  step: Decision + EventLog.record",
            timed(
                lambda: events.record(Decision(now, flow, proc, Action.ALLOW, 1, "rule 1")),
                [()] * n,
                repeat=2,
            ),
            key="step_record",
        )
        stats(
            "  step: read /proc/self/stat (procs.details.read_stat)",
            timed(_read_stat_self, [()] * n, repeat=2),
            key="step_read_stat",
        )
        fds = len(os.listdir("/proc/self/fd"))
        print(f"  (this process holds {fds} fds; the hot-pid scan reads each one's link)")
        FIGURES["bench_process_fds"] = {"fds": fds}
    finally:
        for s in held:
            s.close()
        listener.close()
        attributor.close()
        store.close()


def bench_live_dump_decode():
    """livebytes.decode_dump: every second, every entry snitch allowed that conntrack still
    tracks (a TCP flow's stays ~2 min after its close), so the same tuples again and again.
    Per entry, in datagrams of 50 entries, each datagram read many times (as the dumps do)."""
    try:
        from snitchd.logwriter.livebytes import decode_dump  # noqa: PLC0415 (newer trees only)
    except ImportError:
        return
    entries = [_destroy_event(40000 + i, kind=0) for i in range(50)]
    done = struct.pack("=IHHII", 20, 3, 2, 7, 0) + b"\0" * 4
    datagram = b"".join(entries) + done
    assert len(decode_dump(datagram, 7)[0]) == 50
    samples = timed(decode_dump, [(datagram, 7)] * 400, repeat=2)
    stats(
        "livebytes.decode_dump, per entry of a known flow (log writer, every second)",
        [ns / 50 for ns in samples],
        key="live_dump_decode_per_entry",
    )


def _read_stat_self():
    fd = os.open("/proc/self/stat", os.O_RDONLY)
    try:
        os.read(fd, 4096)
    finally:
        os.close(fd)


def _drain(listener):
    listener.setblocking(False)
    try:
        while True:
            conn, _ = listener.accept()
            conn.close()
    except BlockingIOError:
        pass


def main():
    logging.getLogger("snitchd").setLevel(logging.ERROR)  # the first-connection alert, etc.
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--lifetime",
        type=int,
        default=2,
        help="seconds a flow's conntrack entry stays in the log writer's bench (connbench's 1 s "
        "timeouts: ~2; a real TCP close: 120), measured with and without a live view",
    )
    parser.add_argument(
        "--log-only",
        action="store_true",
        help="only the connection log's figures (snitchd's side and the log writer's)",
    )
    args = parser.parse_args()
    if args.log_only:
        with tempfile.TemporaryDirectory(prefix="snitch-micro-") as tmp:
            bench_flow_end_decode()
            bench_live_dump_decode()
            bench_log(Path(tmp))
            bench_writer(Path(tmp), lifetime=args.lifetime)
            bench_writer(Path(tmp), lifetime=args.lifetime, live_flag=True)
        if args.json is not None:
            args.json.write_text(json.dumps(FIGURES, indent=1))
        return
    with tempfile.TemporaryDirectory(prefix="snitch-micro-") as tmp:
        texts = bench_rules()
        bench_rule_change(texts, Path(tmp))
        bench_decode()
        bench_flow_end_decode()
        bench_live_dump_decode()
        bench_log(Path(tmp))
        bench_writer(Path(tmp), lifetime=args.lifetime)
        bench_writer(Path(tmp), lifetime=args.lifetime, live_flag=True)
        if os.geteuid() == 0:
            bench_on_packet(Path(tmp))
        else:
            print("-- on_packet skipped: needs root (sock_diag, /proc/<pid>/fd)")
    if args.json is not None:
        args.json.write_text(json.dumps(FIGURES, indent=1))


if __name__ == "__main__":
    main()
