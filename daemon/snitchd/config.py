"""`/etc/snitch/snitchd.toml` → `Config`, validated once at the edge.

Every error names the key and the file. An unknown key is an error too: a typo in a firewall's
config must not silently fall back to a default. A missing file means all defaults. No key is
read anywhere else: the rest of the daemon gets the `Config` record.
"""

from __future__ import annotations

import grp
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from snitch_common.errors import ConfigError
from snitch_common.rules import Action

__all__ = ["DEFAULT_PATH", "Config", "FailMode", "load_config", "parse_config"]

DEFAULT_PATH = Path("/etc/snitch/snitchd.toml")

FailMode = str  # "open" | "closed"


@dataclass(frozen=True, slots=True)
class Config:
    """Defaults watch and allow: a fresh install must not cut a machine off before it has rules.

    `default_action` applies to a flow that no rule covers when no agent answers; `fail_mode`
    says what the kernel does with new flows while snitchd is not reading its queue.
    `attribution_timeout` bounds how long a packet waits for its sender to be found (then it
    is decided by uid, never more leniently than the sender's app rules would have); an
    executable larger than `max_hash_bytes` is still hashed, but its packet waits `hash_wait`
    seconds at most, then no rule pinning a digest matches it (procs/hashes.py).

    `attribution`: "bpf" records who connects when they connect (cgroup BPF hooks attached to
    `bpf_cgroup`, "" meaning the cgroup v2 root: the whole machine), and falls back to "proc"
    (sock_diag + /proc when the packet is read, the proc connector for exec-after-connect)
    where the kernel or our rights do not allow BPF; "proc" never loads BPF (procs/bpf.py).
    """

    default_action: Action = Action.ALLOW
    fail_mode: FailMode = "open"
    queue: int = 4242
    database: str = "/var/lib/snitch/snitch.db"
    admin_group: str = "sudo"
    prompt_timeout: float = 30.0
    max_prompts: int = 64
    intercept_loopback: bool = False
    stay_closed_when_stopped: bool = False
    queue_max_len: int = 4096
    log_level: str = "info"
    snoop_dns: bool = True
    dns_queue: int = 4243
    dns_grace: float = 60.0
    log_max_days: float = 30.0
    log_max_rows: int = 1_000_000
    attribution_timeout: float = 2.0
    max_hash_bytes: int = 256 << 20
    hash_wait: float = 1.0
    attribution: str = "bpf"
    bpf_cgroup: str = ""


_CHOICES = {
    "fail_mode": ("open", "closed"),
    "log_level": ("debug", "info", "warning", "error"),
    "attribution": ("bpf", "proc"),
}
_RANGES: dict[str, tuple[float, float]] = {
    "queue": (0, 65535),
    "prompt_timeout": (1, 3600),
    "max_prompts": (1, 10000),
    "queue_max_len": (16, 1_000_000),
    "dns_queue": (0, 65535),
    "dns_grace": (0, 86400),
    "log_max_days": (0.01, 36500),
    "log_max_rows": (100, 1_000_000_000),
    "attribution_timeout": (0.05, 60),
    "max_hash_bytes": (0, 1 << 50),
    "hash_wait": (0, 60),
}


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    known = {f.name: f for f in fields(Config)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown key {key!r} (known: {', '.join(known)})")
        values[key] = _check(key, value, source)
    config = Config(**values)
    if config.snoop_dns and config.dns_queue == config.queue:
        raise ConfigError(f"{source}: dns_queue = {config.dns_queue}: must differ from queue")
    return config


def _check(key: str, value: Any, source: str) -> Any:
    default = getattr(Config(), key)
    if isinstance(default, Action):
        try:
            return Action(value)
        except ValueError:
            raise ConfigError(f"{source}: {key} = {value!r}: use allow, deny or reject") from None
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
    if key == "bpf_cgroup":
        if not isinstance(value, str) or (value and not value.startswith("/")):
            raise ConfigError(
                f"{source}: bpf_cgroup = {value!r}: expected an absolute path to a cgroup v2 "
                'directory, or "" for the cgroup v2 root'
            )
        return value
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: {key} = {value!r}: expected a non-empty string")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"{source}: {key} = {value!r}: use {' or '.join(_CHOICES[key])}")
    if key == "admin_group":
        try:
            grp.getgrnam(value)
        except (KeyError, ValueError):
            raise ConfigError(f"{source}: admin_group = {value!r}: no such group") from None
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
