"""`/etc/snitch/snitchd.toml` → `Config`, validated once at the edge.

Every error names the key and the file. An unknown key is an error too: a typo in a firewall's
config must not silently fall back to a default. A missing file means all defaults. No key is
read anywhere else: the rest of the daemon gets the `Config` record.
"""

from __future__ import annotations

import enum
import grp
import logging
import os
import re
import tomllib
from dataclasses import dataclass, fields
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from snitch_common.errors import ConfigError
from snitch_common.rules import DEFAULT_INTERPRETERS, Action

__all__ = [
    "DEFAULT_AGENT_LAUNCHER",
    "DEFAULT_PATH",
    "AttributionPath",
    "Config",
    "FailMode",
    "LogLevel",
    "PinAnswers",
    "load_config",
    "parse_config",
    "reader_count",
]

DEFAULT_PATH = Path("/etc/snitch/snitchd.toml")
log = logging.getLogger(__name__)


class FailMode(enum.Enum):
    """What the kernel does with new flows while snitchd is not reading its queue."""

    OPEN = "open"  # they pass unfiltered (--queue-bypass)
    CLOSED = "closed"  # they wait, and are dropped


class PinAnswers(enum.Enum):
    """Which executables a rule made by answering a prompt pins by sha256."""

    ALWAYS = "always"
    USER_WRITABLE = "user-writable"  # root-owned apps keep their rules across upgrades


class AttributionPath(enum.Enum):
    """How the owner of a flow is found: recorded at connect time, or looked up when read."""

    BPF = "bpf"  # cgroup BPF hooks record who connects (falls back to PROC where unavailable)
    PROC = "proc"  # sock_diag + /proc when the packet is read; the proc connector for execs


class LogLevel(enum.Enum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


# What install.sh builds (snitch_common.launcher): the set-group-id program every agent runs.
DEFAULT_AGENT_LAUNCHER = "/opt/snitch/venv/libexec/snitch-agent"
# Keys earlier versions read, and why they are gone: a config that still has one starts, with a
# warning, so that an upgrade never stops the firewall over a line it no longer needs.
OBSOLETE = {
    "agent_programs": "agents are now known by agent_launcher, the set-group-id program they "
    "run (README, Trust)",
}


# Input interfaces of the container and guest networks the runtimes make (issue 16), as
# iptables names them (`+`: any suffix): Docker's default bridge and user networks, Podman's
# (netavark, CNI), libvirt's NAT bridges and taps, LXC/LXD/Incus bridges, systemd-nspawn's
# host-side veths (`ve-NAME`) and bridge ports (`vb-NAME`), plain taps. A flow starting on one
# is queued; a router's own LAN bridge named `br-...` must be left out (forward_interfaces).
DEFAULT_FORWARD_INTERFACES = (
    "docker0",
    "br-+",
    "podman+",
    "cni-+",
    "virbr+",
    "lxcbr+",
    "lxdbr+",
    "incusbr+",
    "ve-+",
    "vb-+",
    "vnet+",
    "tap+",
)
_IFACE_PATTERN = re.compile(r"[A-Za-z0-9_.:@-]{1,15}\+?|[A-Za-z0-9_.:@-]{0,14}\+")


@dataclass(frozen=True, slots=True)
class Config:
    """Defaults watch and allow: a fresh install must not cut a machine off before it has rules.

    `default_action` applies to a flow that no rule covers when no agent answers; `fail_mode`
    says what the kernel does with new flows while snitchd is not reading its queue.
    `attribution_timeout` bounds how long a packet waits for its sender to be found (then it
    is decided by uid, never more leniently than the sender's app rules would have); an
    executable larger than `max_hash_bytes` is still hashed, but its packet waits `hash_wait`
    seconds at most, then no rule pinning a digest matches it (procs/hashes.py).
    `dns_resolvers` lists the servers whose answers may name addresses: addresses, and
    "system" for the machine's own (`resolv_conf`, systemd-resolved, NetworkManager, local
    stubs; see `resolvers`); `dns_cache_bytes` bounds the names kept (`names`).
    `interpreters`: the executables whose script is part of who they are (read at start).
    `pin_answers`: a rule made by answering a prompt pins the executable's sha256 — for every
    executable ("always"), or only for those someone other than root can change
    ("user-writable": root-owned apps then keep their rules across package upgrades).

    Prompts are rationed per user: `max_prompts` open prompts per uid (the flow's owner) and
    `max_prompts_total` for everyone, so one user whose agent never answers cannot push
    another's flows to the default; a prompt holds at most `max_prompt_packets` packets (the
    rest of the flow's packets are dropped while it waits) so held packets never fill the
    kernel queue. Only processes the kernel started from `agent_launcher` are accepted as
    agents (snitchd.agents); with `answers_need_auth`, an answer that makes a permanent allow
    rule needs polkit.
    `prompt_hold_max`: how long after it was asked a prompt the person put aside (deferred)
    keeps its flow held before the default applies.

    `attribution`: "bpf" records who connects when they connect (cgroup BPF hooks attached to
    `bpf_cgroup`, "" meaning the cgroup v2 root: the whole machine), and falls back to "proc"
    (sock_diag + /proc when the packet is read, the proc connector for exec-after-connect)
    where the kernel or our rights do not allow BPF; "proc" never loads BPF (procs/bpf.py).
    `rules_dir`: the folder of `*.rules` files (issue 18), read at start and on reload; it and
    its files must be root's and writable by no one else.
    """

    default_action: Action = Action.ALLOW
    fail_mode: FailMode = FailMode.OPEN
    queue: int = 4242
    database: str = "/var/lib/snitch/snitch.db"
    admin_group: str = "sudo"
    prompt_timeout: float = 30.0
    max_prompts: int = 64
    max_prompts_total: int = 1024
    max_prompt_packets: int = 64
    intercept_loopback: bool = False
    stay_closed_when_stopped: bool = False
    queue_max_len: int = 4096
    log_level: LogLevel = LogLevel.INFO
    snoop_dns: bool = True
    dns_queue: int = 4241  # below the packet queues, which span queue … queue + readers - 1
    dns_grace: float = 60.0
    dns_resolvers: tuple[str, ...] = ("system",)
    resolv_conf: str = "/etc/resolv.conf"
    dns_cache_bytes: int = 32 << 20
    log_max_days: float = 30.0
    log_max_rows: int = 1_000_000
    attribution_timeout: float = 2.0
    max_hash_bytes: int = 256 << 20
    hash_wait: float = 1.0
    interpreters: tuple[str, ...] = DEFAULT_INTERPRETERS
    pin_answers: PinAnswers = PinAnswers.ALWAYS
    agent_launcher: str = DEFAULT_AGENT_LAUNCHER
    answers_need_auth: bool = False

    attribution: AttributionPath = AttributionPath.BPF
    bpf_cgroup: str = ""
    # Where snitch-lists (the unprivileged updater) writes parsed lists for snitchd to read:
    # its systemd StateDirectory (snitchd/lists.py).
    lists_dir: str = "/var/lib/snitch-lists"
    prompt_hold_max: float = 600.0
    rules_dir: str = "/etc/snitch/rules.d"
    # A decided attempt is remembered this many seconds (0: not at all): a retry of the same
    # app to the same destination gets its verdict without a new prompt, and counts as one
    # attempt in the log (`attempts`).
    retry_window: float = 10.0
    # Issue 17: proposals `learn` mode keeps at most (a quarter of it per user), and whether
    # profiles that name networks switch by themselves when the network changes.
    max_proposals: int = 1000
    follow_network: bool = True

    # Prometheus text for node_exporter's textfile collector, rewritten every
    # `metrics_interval` seconds; "" (the default) writes none (snitchd/metricsfile.py).
    metrics_file: str = ""
    metrics_interval: float = 15.0
    # Containers and guests (issue 16): the input interfaces whose new forwarded flows are
    # queued ([] queues none), and the runtimes' API sockets asked for container names ("":
    # never asked; the short id names the container then).
    forward_interfaces: tuple[str, ...] = DEFAULT_FORWARD_INTERFACES
    docker_socket: str = "/var/run/docker.sock"
    podman_socket: str = "/run/podman/podman.sock"
    # New flows a second that one user above the system uids (SYSTEM_UID_MAX) may start; the
    # rest are dropped in the kernel before the queue, so one user cannot fill the queue every
    # user's flows wait in (0: no limit). An nft table of its own (`netfilter.limit_script`).
    # Forwarded flows have no uid here: each source address gets this rate, all four times it
    # (`netfilter._forward_queue_lines`).
    new_flows_per_user: int = 1000
    # DNS queries a second that one such user may send (UDP or TCP to port 53): each is held in
    # the DNS queue every user's queries wait in, until snitchd has read its name; the rest are
    # dropped in the kernel (the sender sees EPERM). 0: no limit. The same nft table; a
    # container's (forwarded) queries per source address, by iptables (`_dns_lines`).
    dns_queries_per_user: int = 200
    # D-Bus calls a second that one such user may make (a burst of as many): each is parsed
    # and answered on the loop that reads the queue; the next waits its turn, and past
    # `callpace.WAITING_MAX` waiting is refused. 0: no limit.
    dbus_calls_per_user: int = 50
    # Queue reader processes, one per queue (issue 21): 0 is one per core; 1 (the default until
    # several readers are measured faster on a quiet machine and checked with BPF attribution)
    # reads the one queue in snitchd itself.
    queue_readers: int = 1
    # The kernel passes a process's connect to where a rule allowed it to connect before, with
    # nothing else deciding (`fastpath`); needs the BPF recorder and the socket match, and one
    # queue reader.
    fast_path: bool = True


_RANGES: dict[str, tuple[float, float]] = {
    "queue": (0, 65535),
    "prompt_timeout": (1, 3600),
    "max_prompts": (1, 10000),
    "max_prompts_total": (1, 100000),
    "max_prompt_packets": (1, 4096),
    "queue_max_len": (16, 1_000_000),
    "dns_queue": (0, 65535),
    "dns_grace": (0, 86400),
    "dns_cache_bytes": (1 << 16, 1 << 34),
    "log_max_days": (0.01, 36500),
    "log_max_rows": (100, 1_000_000_000),
    "attribution_timeout": (0.05, 60),
    "max_hash_bytes": (0, 1 << 50),
    "hash_wait": (0, 60),
    "prompt_hold_max": (1, 86400),
    "retry_window": (0, 300),
    "max_proposals": (4, 100_000),
    "metrics_interval": (1, 3600),
    "queue_readers": (0, 64),
    "new_flows_per_user": (0, 1_000_000),
    "dns_queries_per_user": (0, 1_000_000),
    "dbus_calls_per_user": (0, 1_000_000),
}


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    known = {f.name: f for f in fields(Config)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in OBSOLETE:
            log.warning("%s: %s is no longer read: %s; remove it", source, key, OBSOLETE[key])
            continue
        if key not in known:
            raise ConfigError(f"{source}: unknown key {key!r} (known: {', '.join(known)})")
        values[key] = _check(key, value, source)
    config = Config(**values)
    if config.max_prompts > config.max_prompts_total:
        raise ConfigError(
            f"{source}: max_prompts = {config.max_prompts}: must not exceed max_prompts_total "
            f"({config.max_prompts_total})"
        )
    readers = reader_count(config)
    last = config.queue + readers - 1
    if last > 65535:
        raise ConfigError(
            f"{source}: queue = {config.queue}: with {readers} queue readers the queues would "
            f"end at {last}, past 65535 (lower queue or queue_readers)"
        )
    if config.snoop_dns and config.queue <= config.dns_queue <= last:
        raise ConfigError(
            f"{source}: dns_queue = {config.dns_queue}: must differ from the packet queues "
            f"{config.queue}…{last} (queue … queue + queue_readers - 1)"
        )
    return config


def reader_count(config: Config) -> int:
    """How many queues and queue readers: `queue_readers`, or one per core for 0."""
    return config.queue_readers or max(1, os.cpu_count() or 1)


# Every key that names a file or folder. A NUL in one passed the check, and the OS call on it
# later raised ValueError, not the OSError its reader catches (read_rules_dir crashed).
_PATH_KEYS = frozenset(
    {
        "database",
        "resolv_conf",
        "lists_dir",
        "rules_dir",
        "docker_socket",
        "podman_socket",
        "bpf_cgroup",
        "metrics_file",
        "agent_launcher",
    }
)


def _check(key: str, value: Any, source: str) -> Any:
    default = getattr(Config(), key)
    if key in _PATH_KEYS:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and "\0" in item:
                raise ConfigError(f"{source}: {key} = {item!r}: a path cannot hold a NUL character")
    if isinstance(default, enum.Enum):
        kind = type(default)
        try:
            return kind(value)
        except ValueError:
            words = [m.value for m in kind]
            use = ", ".join(words[:-1]) + " or " + words[-1]
            raise ConfigError(f"{source}: {key} = {value!r}: use {use}") from None
    if key == "dns_resolvers":
        return _check_resolvers(key, value, source)
    if key == "agent_launcher":
        return _launcher(key, value, source)
    if key == "forward_interfaces":
        if not isinstance(value, list) or not all(
            isinstance(v, str) and _IFACE_PATTERN.fullmatch(v) for v in value
        ):
            raise ConfigError(
                f"{source}: {key} = {value!r}: expected a list of interface names, a trailing "
                '"+" matching any suffix, e.g. ["docker0", "br-+"] (or [] for none)'
            )
        return tuple(dict.fromkeys(value))
    if key in ("docker_socket", "podman_socket"):
        if not isinstance(value, str) or (value and not value.startswith("/")):
            raise ConfigError(
                f'{source}: {key} = {value!r}: expected an absolute path, or "" to never ask'
            )
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} = {value!r}: use true or false")
        return value
    if isinstance(default, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: {key} = {value!r}: expected a number")
        if isinstance(default, int) and not isinstance(value, int):
            raise ConfigError(f"{source}: {key} = {value!r}: expected a whole number")
        lo, hi = _RANGES[key]
        if not lo <= value <= hi:
            raise ConfigError(f"{source}: {key} = {value!r}: must be between {lo:g} and {hi:g}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(
            isinstance(v, str) and v and "/" not in v for v in value
        ):
            raise ConfigError(
                f"{source}: {key} = {value!r}: expected a list of executable names, "
                'e.g. ["python", "bash"]'
            )
        return tuple(value)
    if key == "bpf_cgroup":
        if not isinstance(value, str) or (value and not value.startswith("/")):
            raise ConfigError(
                f"{source}: bpf_cgroup = {value!r}: expected an absolute path to a cgroup v2 "
                'directory, or "" for the cgroup v2 root'
            )
        return value
    if key == "metrics_file":
        if not isinstance(value, str) or (value and not value.startswith("/")):
            raise ConfigError(
                f"{source}: metrics_file = {value!r}: expected an absolute path such as "
                '"/run/snitch/metrics.prom", or "" for none'
            )
        return value
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: {key} = {value!r}: expected a non-empty string")
    if key in ("resolv_conf", "rules_dir", "lists_dir") and not value.startswith("/"):
        raise ConfigError(f"{source}: {key} = {value!r}: expected an absolute path")
    if key == "admin_group":
        try:
            grp.getgrnam(value)
        except (KeyError, ValueError):
            raise ConfigError(f"{source}: admin_group = {value!r}: no such group") from None
    return value


def _check_resolvers(key: str, value: Any, source: str) -> tuple[str, ...]:
    """`dns_resolvers`: a list of "system" and IP addresses, kept as their canonical text."""
    if not isinstance(value, list) or not value:
        raise ConfigError(
            f"{source}: {key} = {value!r}: expected a non-empty list such as "
            '["system"] or ["system", "192.0.2.53"]'
        )
    found: list[str] = []
    for item in value:
        if item == "system":
            found.append(item)
            continue
        try:
            if not isinstance(item, str):
                raise ValueError(item)
            found.append(str(ip_address(item)))
        except ValueError:
            raise ConfigError(
                f'{source}: {key}: {item!r} is neither "system" nor an IP address'
            ) from None
    return tuple(dict.fromkeys(found))


def _launcher(key: str, value: Any, source: str) -> str:
    """An absolute path with no `..` (agent_launcher): the file an agent's /proc/PID/exe is."""
    if not isinstance(value, str) or not value.startswith("/") or "/../" in value + "/":
        raise ConfigError(f"{source}: {key} = {value!r}: expected an absolute path")
    return value


def load_config(path: Path | None) -> Config:
    """Read the file; the default path may be absent (all defaults), a given one may not."""
    target = path or DEFAULT_PATH
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        if path is None:
            return Config()
        raise ConfigError(f"cannot read config {target}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {target}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{target}: not valid UTF-8: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{target}: not valid TOML: {exc}") from None
    return parse_config(data, str(target))
