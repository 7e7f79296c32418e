"""`snitchd`: start-up, the event loop, and an orderly stop.

Order matters for a firewall: the queue is bound before the kernel rules divert anything to it,
and on the way out the rules go before the queue (unless the admin asked the firewall to stay
closed while stopped). Everything that can be checked is checked before the kernel is touched, so
a bad config, a missing kernel feature or a locked store stop start-up with one clear line and
change nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from snitch_common import __version__
from snitch_common.bus import broadcast, call_bus_daemon, disconnected
from snitch_common.errors import BackendUnavailable, ConfigError, SnitchError
from snitchd.access import is_admin
from snitchd.agents import session_active
from snitchd.api import serve
from snitchd.config import DEFAULT_PATH, Config, FailMode, PinAnswers, load_config, reader_count
from snitchd.connmark import ConnMarks
from snitchd.containers import container_names
from snitchd.decide import set_local_time
from snitchd.events import EventLog
from snitchd.fastpath import DRAIN_MAX, RING_EVENTS_MAX, FastPath
from snitchd.firewall import Firewall, local_time, quotas_of
from snitchd.journal import Event, journal_fields, setup_logging
from snitchd.limitdrops import DropWatch
from snitchd.logwriter.parent import Recorder
from snitchd.metricsfile import run_metrics_file
from snitchd.netfilter import NO_FAST, NO_SOCKETS, Backend, NetSpec, select_backend
from snitchd.netwatch import NetWatch, wifi_ssid
from snitchd.procs import Attributor, start_attributor
from snitchd.prompts import Broker
from snitchd.queue import QueueReader
from snitchd.readers.parent import Readers
from snitchd.socketmatch import (
    FAST_PIN,
    NAMED_PIN,
    QUEUED_PIN,
    SocketMatch,
    open_named,
    open_senders,
)
from snitchd.status import current_status
from snitchd.store import Store
from snitchd.subnets import SubnetWatch
from snitchd.switching import Switcher

__all__ = ["build_parser", "main"]

log = logging.getLogger("snitchd")

SWEEP_INTERVAL = 1.0
PRUNE_INTERVAL = 300.0


def _notify(state: str) -> None:
    """sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET, if systemd gave one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError as exc:
            log.warning("sd_notify failed state=%s: %s", state, exc)


class _Daemon:
    def __init__(
        self, config: Config, config_path: Path | None, backend: Backend, recorder: Recorder
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.backend = backend
        self.recorder = recorder
        self.stop = asyncio.Event()
        self.bus_lost = False
        self.firewall: Firewall | None = None
        self.switcher: Switcher
        self.reloads = 0
        self.readers: Readers | None = None
        self.sockets: SocketMatch | None = None
        self.fast: FastPath | None = None
        self._file_tasks: set[asyncio.Task[None]] = set()

    def _spec(self, config: Config) -> NetSpec:
        dns_queue = config.dns_queue if config.snoop_dns else None
        return NetSpec(
            config.queue,
            config.fail_mode is FailMode.OPEN,
            config.intercept_loopback,
            dns_queue,
            config.forward_interfaces,
            reader_count(config),
            config.new_flows_per_user,
            str(self.sockets.pins) if self.sockets is not None else "",
            config.dns_queries_per_user if dns_queue is not None else 0,
            str(self.sockets.pins / FAST_PIN) if self.fast is not None and self.sockets else "",
        )

    async def run(self) -> None:
        config = self.config
        store = Store(config.database)
        events = EventLog(store, self.recorder)
        marks = ConnMarks()
        firewall, broker, attributor = self._firewall(store, events, marks)
        switcher = self.switcher = Switcher(firewall)
        switcher.load()
        # The rules (100k of them: over a million objects) are long-lived: leave them out of
        # the collector's full passes, which otherwise held the GIL ~100 ms each, stalling the
        # loop while a worker allocated (bench/disturb.py). Refcounting still frees them.
        gc.freeze()
        loop = asyncio.get_running_loop()
        # One queue read here, or several, each read by a process of its own (issue 21).
        reader, readers = self._queue_readers(firewall)
        # DNS queries and answers are copied whole (a name is deep inside); an answer is held
        # only while its query's sender is looked up.
        dns_reader = QueueReader(config.dns_queue, firewall.on_dns_packet, 1024, 65535)
        bus = None
        netwatch: NetWatch | None = None  # the network profiles follow (issue 17)
        installed = False
        subnets = SubnetWatch(firewall.places)  # to=lan: the connected subnets, followed
        try:
            await subnets.start()
            off = self._load_socket_match(firewall)
            await _start_reading(loop, reader, readers)
            if config.snoop_dns:
                dns_reader.start(loop)
            installed = True
            self._install(firewall, off)
            bus = await serve(firewall, self.backend.name, switcher)
            netwatch = await _follow_network(bus, loop, switcher)
            self._stop_on(loop, bus)
            _notify("READY=1\nSTATUS=filtering new outbound flows")
            log.info(
                "snitchd %s running default_action=%s rules=%d database=%s",
                __version__,
                config.default_action.value,
                len(firewall.rules),
                store.path,
                extra=journal_fields(Event.START),
            )
            async with asyncio.TaskGroup() as tasks:
                background = self._background(tasks, firewall, events)
                await self.stop.wait()
                for task in background:
                    task.cancel()
        finally:
            self.stop.set()  # for `_bus_gone`: the disconnect below is ours
            _notify("STOPPING=1")
            if netwatch is not None:
                netwatch.close()
            broker.release_all("default: snitchd stopping")
            self._remove_rules(installed)
            _stop_reading(reader, readers)
            dns_reader.close()
            subnets.close()
            if bus is not None:
                bus.disconnect()
            await events.last_flush()  # main() then ends the writer
            attributor.close()
            marks.close()
            store.close()
            log.info("snitchd stopped", extra=journal_fields(Event.STOP))

    def _stop_on(self, loop: asyncio.AbstractEventLoop, bus: MessageBus) -> None:
        """Stop on SIGTERM, SIGINT or the loss of the bus; reload on SIGHUP."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        disconnected(bus).add_done_callback(self._bus_gone)

    def _bus_gone(self, gone: asyncio.Future[None]) -> None:
        """The system bus dropped snitchd (dbus-daemon restarted, or refused a message): no
        prompt reaches an agent any more, so every flow no rule covers would get the default
        action unasked, and neither snitchctl nor the agents reach snitchd. It stops with a
        failure, which systemd answers by starting it again (Restart=on-failure)."""
        why = None if gone.cancelled() else gone.exception()  # retrieved here, said below
        if self.stop.is_set():  # our own disconnect, on the way out
            return
        log.error("lost the connection to the system bus (%r): stopping, to be started again", why)
        self.bus_lost = True
        self.stop.set()

    def _queue_readers(self, firewall: Firewall) -> tuple[QueueReader, Readers | None]:
        config = self.config
        reader = QueueReader(config.queue, firewall.on_packet, config.queue_max_len)
        count = reader_count(config)
        if count > 1:
            self.readers = Readers(firewall, config.queue, count)
        return reader, self.readers

    def _background(
        self, tasks: asyncio.TaskGroup, firewall: Firewall, events: EventLog
    ) -> list[asyncio.Task[None]]:
        """What runs beside the packet loop until snitchd stops."""
        config = self.config
        background = [
            tasks.create_task(events.run(), name="event-log"),
            tasks.create_task(self._sweep(firewall), name="rule-sweeper"),
            tasks.create_task(self._watchdog(), name="watchdog"),
            tasks.create_task(firewall.dns.resolvers.follow(), name="dns-resolvers"),
            tasks.create_task(firewall.lists.follow(), name="lists"),
        ]
        if config.metrics_file:
            backend_name = self.backend.name
            metrics = run_metrics_file(
                config.metrics_file,
                config.metrics_interval,
                lambda: current_status(firewall, backend_name),
            )
            background.append(tasks.create_task(metrics, name="metrics-file"))
        return background

    def _firewall(
        self, store: Store, events: EventLog, marks: ConnMarks
    ) -> tuple[Firewall, Broker, Attributor]:
        """The decision side: the prompt broker, the attributor, the firewall with its rules
        (rules.d read before any packet is decided)."""
        config = self.config
        broker = Broker(
            clock=time.time,
            timeout=config.prompt_timeout,
            max_open=config.max_prompts,
            is_admin=lambda uid: is_admin(uid, self.config.admin_group),
            pin_root=config.pin_answers is PinAnswers.ALWAYS,
            quotas=quotas_of(config),
            session_active=session_active,
            hold_max=config.prompt_hold_max,
        )
        attributor = start_attributor(
            config.attribution.value,
            config.bpf_cgroup,
            Path(config.database).parent,
            config.interpreters,
            container_names(config),
        )
        set_local_time(local_time)  # time windows in the machine's zone (TZ, /etc/localtime)
        firewall = self.firewall = Firewall(config, store, attributor, events, broker, marks=marks)
        firewall.limit_drops = DropWatch(self.backend.families)
        firewall.load_rule_files_now()  # rules.d, before any packet is decided
        broker.attach(firewall)
        return firewall, broker, attributor

    def _load_socket_match(self, firewall: Firewall) -> tuple[str, ...]:
        """The socket match, before the queue readers start (each names the socket of every
        datagram verdict it gives, in the match's map) and before our rules (they name where
        it is pinned); what is lost without it."""
        try:
            state_dir = Path(self.config.database).parent
            self.sockets = SocketMatch(state_dir, self.config.new_flows_per_user)
        except BackendUnavailable as exc:
            log.warning("%s: %s", NO_SOCKETS, exc)
            return (f"{NO_SOCKETS}: {exc}",)
        firewall.socket_match = self.sockets
        firewall.named = open_named(self.sockets.pins / NAMED_PIN)
        firewall.attributor.senders = open_senders(self.sockets.pins / QUEUED_PIN)
        self._load_fast_path(firewall, self.sockets)
        return ()

    def _load_fast_path(self, firewall: Firewall, sockets: SocketMatch) -> None:
        """The fast path (`fastpath`), with the recorder's maps, pinned beside the socket
        match; off with several queue readers (each decides on its own copy of the rules)."""
        recorder = firewall.attributor.recorder
        fds = recorder.fast_fds() if recorder is not None else None
        if not self.config.fast_path:
            firewall.fast_path = "off: fast_path = false"
            return
        if fds is None:
            firewall.fast_path = "off: it needs the BPF recorder (attribution bpf)"
            return
        if reader_count(self.config) > 1:
            firewall.fast_path = "off: not with several queue readers"
            return
        rules_fd, gen_fd, ring_fd, prog_fd = fds
        try:
            sockets.pin(prog_fd, FAST_PIN)
            fast = FastPath(rules_fd, gen_fd, ring_fd)
        except (OSError, BackendUnavailable) as exc:
            log.warning("%s: %s", NO_FAST, exc)
            firewall.fast_path = f"off: {exc}"
            return
        self.fast = firewall.fast = fast
        firewall.fast_path = "on"
        asyncio.get_running_loop().add_reader(ring_fd, firewall.on_fast)

    def _install(self, firewall: Firewall, lost: tuple[str, ...]) -> None:
        """Our rules, after the socket match (`lost`: what is off already). Without it (a
        kernel or unit without BPF, or without xt_bpf) snitchd keeps datagram verdicts per
        conntrack tuple, as before it, and says so (the journal, `status`)."""
        lost += self.backend.apply(self.backend.plan_install(self._spec(self.config)))
        why = next((text for text in lost if text.startswith(NO_SOCKETS)), "")
        if why or self.sockets is None:
            firewall.sockets = f"per tuple: {why.removeprefix(NO_SOCKETS + ': ')}"
        else:
            firewall.sockets = f"per socket ({self.sockets.pins})"
        if why := next((text for text in lost if text.startswith(NO_FAST)), ""):
            firewall.fast = None  # what it keeps would pass nothing: no rule matches by it
            firewall.fast_path = f"off: {why.removeprefix(NO_FAST + ': ')}"
        log.info(
            "kernel rules installed backend=%s queue=%d fail_mode=%s",
            self.backend.name,
            self.config.queue,
            self.config.fail_mode.value,
        )

    def _remove_rules(self, installed: bool) -> None:
        try:
            self._remove(installed)
        finally:
            if self.sockets is not None:  # rules left in place keep the program
                self.sockets.close()
            if self.fast is not None:
                asyncio.get_running_loop().remove_reader(self.fast.ring_fd)
                # The last connects passed: their rows too. Bounded: the ring holds fewer
                # events than this, and a fail-closed stop leaves the rule passing more.
                for _ in range(RING_EVENTS_MAX // DRAIN_MAX + 1):
                    if self.firewall is None or not self.fast.pending:
                        break
                    self.firewall.on_fast()
                self.fast.close()

    def _remove(self, installed: bool) -> None:
        if not installed:
            return
        if self.config.fail_mode is FailMode.CLOSED and self.config.stay_closed_when_stopped:
            log.warning("kernel rules left in place: fail-closed while stopped")
            return
        try:
            self.backend.apply(self.backend.plan_remove())
            log.info("kernel rules removed")
        except SnitchError as exc:
            log.error("cannot remove kernel rules: %s", exc)

    def reload(self) -> None:
        """SIGHUP: read and check the config again; a bad one is refused and the running one
        stays. The queue keeps running throughout, so no flow is lost."""
        assert self.firewall is not None
        _notify("RELOADING=1")
        self._reload_files(self.firewall)
        try:
            new = load_config(self.config_path)
            fixed = [
                k
                for k in (
                    "queue",
                    "database",
                    "interpreters",
                    "attribution",
                    "bpf_cgroup",
                    "metrics_file",
                    "metrics_interval",
                    "queue_readers",
                    "fast_path",
                )
                if getattr(new, k) != getattr(self.config, k)
            ]
            if fixed:
                raise ConfigError(f"{', '.join(fixed)} cannot change on reload: restart snitchd")
            if self._spec(new) != self._spec(self.config):
                self.backend.apply(self.backend.plan_install(self._spec(new)))
            if self.sockets is not None:
                self.sockets.limit(new.new_flows_per_user)
        except SnitchError as exc:
            log.error("reload refused, the running config stays: %s", exc)
        else:
            self.config = new
            self.firewall.reconfigure(new)
            if self.readers is not None:
                self.readers.reconfigure(new)
            logging.getLogger().setLevel(new.log_level.value.upper())
            self.reloads += 1
            log.info(
                "config reloaded default_action=%s fail_mode=%s",
                new.default_action.value,
                new.fail_mode.value,
                extra=journal_fields(Event.CONFIG),
            )
        _notify("READY=1")

    def _reload_files(self, firewall: Firewall) -> None:
        """The rules.d files again, in the background (worker thread; a refused file is
        logged and keeps its rules)."""
        task = asyncio.get_running_loop().create_task(
            firewall.reload_rule_files(), name="rules-files"
        )
        self._file_tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._file_tasks.discard(t)
            if not t.cancelled() and (exc := t.exception()) is not None:
                log.error("rules files not reloaded: %s", exc)

        task.add_done_callback(done)

    async def _watchdog(self) -> None:
        """WATCHDOG=1 from the loop itself: if the loop is stuck, systemd restarts us."""
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        if usec <= 0:
            return
        while True:
            _notify("WATCHDOG=1")
            await asyncio.sleep(usec / 2e6)

    async def _sweep(self, firewall: Firewall) -> None:
        """Once a second: expire rules, end a time-limited mode whose (wall-clock) deadline
        passed — so within a second of a resume from suspend — and write new proposals, notice
        rules changed behind our back (all do their store work in worker threads); now and
        then, prune the connection log to its limits (the log writer does it: it may take a
        while)."""
        last_prune = 0.0
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await firewall.expire_rules()
                now = time.time()
                await self.switcher.tick(now)
                await firewall.check_outside_change(now)
                if now - last_prune >= PRUNE_INTERVAL:
                    last_prune = now
                    config = self.config
                    before = firewall.events.pruned
                    await firewall.events.flush(
                        (now, config.log_max_days * 86400, config.log_max_rows)
                    )
                    if firewall.events.pruned > before:
                        log.info("connection log pruned rows=%d", firewall.events.pruned - before)
            except SnitchError as exc:
                log.warning("sweep failed: %s", exc)


def _stop_reading(reader: QueueReader, readers: Readers | None) -> None:
    reader.close()
    if readers is not None:
        readers.close()


async def _start_reading(
    loop: asyncio.AbstractEventLoop, reader: QueueReader, readers: Readers | None
) -> None:
    """Bind the packet queue here, or start the queue reader processes (issue 21) and wait
    until each has bound its own."""
    if readers is None:
        reader.start(loop)
    else:
        await readers.start()


async def _follow_network(
    bus: MessageBus, loop: asyncio.AbstractEventLoop, switcher: Switcher
) -> NetWatch:
    """Profiles follow the network (issue 17): route and neighbour changes from netlink in a
    thread of their own, the Wi-Fi SSID from NetworkManager (asked again when it says its
    primary connection changed)."""
    switcher.ssid_of = lambda: wifi_ssid(bus)

    def on_nm(msg: Message) -> None:
        if (
            msg.message_type is MessageType.SIGNAL
            and msg.path == "/org/freedesktop/NetworkManager"
            and msg.member == "PropertiesChanged"
            and broadcast(msg)  # NetworkManager's own, by the match rule below
        ):
            switcher.follow(switcher.network)

    bus.add_message_handler(on_nm)
    rule = (
        "type='signal',sender='org.freedesktop.NetworkManager',"
        "path='/org/freedesktop/NetworkManager',member='PropertiesChanged'"
    )
    await call_bus_daemon(bus, "AddMatch", "s", [rule])
    netwatch = NetWatch(loop, switcher.follow)
    netwatch.start()
    return netwatch


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    """snitchd's command line (also read by its man page, snitchd.manpage)."""
    parser = argparse.ArgumentParser(
        prog="snitchd",
        description="snitch daemon: holds each new outbound flow until a rule or a person decides.",
    )
    parser.add_argument(
        "--config", type=Path, default=None, help=f"config file (default {DEFAULT_PATH})"
    )
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")
    parser.add_argument("--debug", action="store_true", help="log every decision")
    parser.add_argument("--version", action="version", version=f"snitchd {__version__}")
    return parser


# How long a worker thread (queries, attribution, hashing) may hold the GIL before the packet
# loop gets it back: 5 ms by default, which every queued packet could wait.
SWITCH_INTERVAL = 0.0005


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    setup_logging(logging.INFO)  # the journal's native protocol under systemd (journal.py)
    try:
        if os.geteuid() != 0 and not args.check_config:
            raise SnitchError(
                "snitchd must run as root: it installs kernel rules and reads every process's "
                "sockets (try: sudo snitchd)"
            )
        config = load_config(args.config)
        logging.getLogger().setLevel(
            logging.DEBUG if args.debug else config.log_level.value.upper()
        )
        if args.check_config:
            print(f"snitchd: config {args.config or DEFAULT_PATH} is valid")
            return 0
        backend = select_backend()
        Store(config.database).close()
        # The log writer before anything else: it is forked while there is no thread yet, and
        # it turns byte accounting on (flows that start before that are never counted).
        recorder = Recorder(str(config.database))
        recorder.start()
        sys.setswitchinterval(SWITCH_INTERVAL)
        daemon = _Daemon(config, args.config, backend, recorder)
        try:
            asyncio.run(daemon.run())
        finally:
            recorder.close()
        if daemon.bus_lost:
            raise SnitchError(
                "lost its connection to the system bus: stopped, so that systemd starts it again"
            )
    except SnitchError as exc:
        print(f"snitchd: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
