"""`snitchd.toml` → Config: defaults that do not cut a machine off, and errors that name the key
(and the file), because a typo in a firewall's config must never fall back silently."""

from __future__ import annotations

import enum
import grp
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from snitch_common.errors import ConfigError
from snitch_common.rules import Action
from snitchd.config import DEFAULT_PATH, Config, FailMode, load_config, parse_config, reader_count


def _my_group() -> str:
    return grp.getgrgid(os.getgid()).gr_name


def test_empty_config_is_all_defaults() -> None:
    """No keys at all is a valid config: everything takes its default."""
    assert parse_config({}) == Config()


def test_defaults_watch_and_allow() -> None:
    """A fresh install must not cut the machine off before it has rules: unknown flows are
    allowed when nobody answers, and a stopped daemon lets traffic through."""
    config = Config()
    assert config.default_action is Action.ALLOW
    assert config.fail_mode is FailMode.OPEN
    assert config.stay_closed_when_stopped is False
    assert config.intercept_loopback is False


def test_every_key_can_be_set() -> None:
    """Each documented key is accepted with a valid value and lands in its field."""
    data: dict[str, Any] = {
        "default_action": "deny",
        "fail_mode": "closed",
        "queue": 0,
        "database": "/tmp/snitch-test.db",
        "admin_group": _my_group(),
        "prompt_timeout": 2.5,
        "max_prompts": 10000,
        "max_prompts_total": 10000,
        "max_prompt_packets": 1,
        "agent_launcher": "/usr/lib/snitch/snitch-agent",
        "answers_need_auth": True,
        "intercept_loopback": True,
        "stay_closed_when_stopped": True,
        "queue_max_len": 16,
        "log_level": "debug",
        "snoop_dns": False,
        "dns_queue": 7,
        "dns_grace": 0,
        "dns_resolvers": ("system", "192.0.2.53", "2001:db8::53"),
        "resolv_conf": "/run/snitch-test/resolv.conf",
        "dns_cache_bytes": 1 << 20,
        "log_max_days": 0.5,
        "log_max_rows": 100,
        "attribution_timeout": 0.5,
        "max_hash_bytes": 1 << 30,
        "hash_wait": 0,
        "interpreters": ("python", "tclsh"),
        "pin_answers": "user-writable",
        "attribution": "proc",
        "bpf_cgroup": "/sys/fs/cgroup/snitch-test",
        "lists_dir": "/var/lib/snitch-lists-test",
        "prompt_hold_max": 900,
        "rules_dir": "/etc/snitch-test/rules.d",
        "retry_window": 3,
        "max_proposals": 4,
        "follow_network": False,
        "metrics_file": "/run/snitch/metrics.prom",
        "metrics_interval": 5,
        "forward_interfaces": ("docker0", "br-+", "+"),
        "docker_socket": "",
        "podman_socket": "/run/user/1000/podman/podman.sock",
        "new_flows_per_user": 0,
        "dns_queries_per_user": 50,
        "dbus_calls_per_user": 10,
        "queue_readers": 3,
        "fast_path": False,
    }
    assert set(data) == {f.name for f in fields(Config)}, "a key was added: extend this test"
    lists = {k: list(data[k]) for k in ("dns_resolvers", "interpreters", "forward_interfaces")}
    config = parse_config(data | lists)
    assert config.default_action is Action.DENY
    got = {k: getattr(config, k) for k in data}
    assert {k: v.value if isinstance(v, enum.Enum) else v for k, v in got.items()} == data


def test_a_key_an_upgrade_left_behind_is_said_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    """Earlier configs list agent_programs (the scripts agents ran): agents are now known by
    their launcher. Refusing the key would stop the firewall at the first start after an
    upgrade; it is skipped with a warning that says what replaced it."""
    config = parse_config({"agent_programs": ["/opt/snitch/venv/bin/snitchctl"]}, "snitchd.toml")
    assert config.agent_launcher == "/opt/snitch/venv/libexec/snitch-agent"
    said = "snitchd.toml: agent_programs is no longer read: agents are now known by agent_launcher"
    assert said in caplog.text


def test_a_user_s_prompt_share_cannot_exceed_everyone_s() -> None:
    with pytest.raises(ConfigError, match="max_prompts = 65: must not exceed max_prompts_total"):
        parse_config({"max_prompts": 65, "max_prompts_total": 64})


def test_whole_seconds_are_fine_for_a_float_key() -> None:
    """TOML `prompt_timeout = 30` is an integer; that is still a valid number of seconds."""
    assert parse_config({"prompt_timeout": 30}).prompt_timeout == 30


BAD_VALUES = [
    ("default_action", "drop"),
    ("default_action", ["allow"]),
    ("default_action", 1),
    ("fail_mode", "half"),
    ("fail_mode", ""),
    ("fail_mode", True),
    ("queue", -1),
    ("queue", 65536),
    ("queue", 1.5),
    ("queue", "4242"),
    ("queue", True),
    ("database", ""),
    ("database", 5),
    ("admin_group", "no-such-group-snitch-test"),
    ("admin_group", ""),
    ("prompt_timeout", 0),
    ("prompt_timeout", 3601),
    ("prompt_timeout", "30"),
    ("prompt_timeout", float("nan")),
    ("prompt_timeout", float("inf")),
    ("max_prompts", 0),
    ("max_prompts", 10001),
    ("max_prompts", 2.0),
    ("max_prompts_total", 0),
    ("max_prompt_packets", 0),
    ("agent_launcher", ["/opt/snitch/venv/libexec/snitch-agent"]),
    ("agent_launcher", "libexec/snitch-agent"),
    ("agent_launcher", "/opt/../tmp/x"),
    ("agent_launcher", "/opt/snitch\0"),
    ("answers_need_auth", "yes"),
    ("intercept_loopback", "yes"),
    ("intercept_loopback", 1),
    ("stay_closed_when_stopped", "false"),
    ("queue_max_len", 15),
    ("queue_max_len", 1_000_001),
    ("log_level", "verbose"),
    ("log_level", "INFO"),
    ("log_level", None),
    ("dns_resolvers", "system"),
    ("dns_resolvers", []),
    ("dns_resolvers", ["system", "resolver.example.org"]),
    ("dns_resolvers", ["192.0.2.300"]),
    ("dns_resolvers", [5]),
    ("resolv_conf", "resolv.conf"),
    ("dns_cache_bytes", 1000),
    ("dns_cache_bytes", 1.5),
    ("pin_answers", "never"),
    ("interpreters", "python"),
    ("interpreters", ["/usr/bin/python3"]),
    ("interpreters", [""]),
    ("interpreters", [3]),
    ("attribution", "ebpf"),
    ("attribution", ""),
    ("bpf_cgroup", "relative/path"),
    ("bpf_cgroup", 3),
    ("lists_dir", "relative/lists"),
]


def test_dns_resolvers_are_kept_as_canonical_addresses_once_each() -> None:
    """The daemon compares answers' sources with these: one spelling per address."""
    config = parse_config({"dns_resolvers": ["2001:DB8::0:53", "system", "2001:db8::53"]})
    assert config.dns_resolvers == ("2001:db8::53", "system")
    assert Config().dns_resolvers == ("system",)
    assert Config().dns_cache_bytes == 32 << 20


@pytest.mark.parametrize(("key", "value"), BAD_VALUES, ids=[f"{k}={v!r}" for k, v in BAD_VALUES])
def test_bad_value_is_an_error_naming_the_key(key: str, value: object) -> None:
    """The admin must see which line to fix; falling back to a default would change what the
    firewall does without telling anyone."""
    with pytest.raises(ConfigError) as info:
        parse_config({key: value}, "/etc/snitch/snitchd.toml")
    assert key in str(info.value)
    assert "/etc/snitch/snitchd.toml" in str(info.value)


def test_group_name_with_nul_is_an_error_naming_the_key() -> None:
    """TOML strings may contain "\\u0000"; `grp.getgrnam` then raises ValueError, which must
    become a ConfigError like any other bad group, not a crash at start-up."""
    with pytest.raises(ConfigError, match="admin_group"):
        parse_config({"admin_group": "su\x00do"})


# Found by name, so that a new path key is tested too (and fails until config checks it).
_PATH_KEYS = [
    f.name
    for f in fields(Config)
    if f.name.endswith(("_dir", "_conf", "_socket", "_file", "_programs", "_cgroup"))
    or f.name == "database"
]


@pytest.mark.parametrize("key", _PATH_KEYS)
def test_a_nul_in_a_path_is_an_error_naming_the_key(key: str) -> None:
    """A NUL passed the check, and the OS call on the path raised ValueError where its reader
    catches OSError: read_rules_dir crashed instead of naming the key."""
    value: str | list[str] = "/etc/snitch/a\0b"
    if isinstance(getattr(Config(), key), tuple):
        value = ["/usr/bin/ok", "/etc/snitch/a\0b"]
    with pytest.raises(ConfigError, match=f"{key} = '/etc/snitch/a\\\\x00b': a path cannot"):
        parse_config({key: value}, "snitchd.toml")


def test_unknown_key_is_an_error_naming_it() -> None:
    """`queu = 5` is a typo, not a request for the default queue."""
    with pytest.raises(ConfigError, match="'queu'") as info:
        parse_config({"queu": 5})
    assert "queue" in str(info.value), "the message lists the known keys"


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    """The file is TOML with top-level keys."""
    path = tmp_path / "snitchd.toml"
    path.write_text('default_action = "reject"\nqueue = 7\n# a comment\n', encoding="utf-8")
    assert load_config(path) == Config(default_action=Action.REJECT, queue=7)


def test_bad_value_in_a_file_names_the_file_and_key(tmp_path: Path) -> None:
    """With several config files around, the error must say which one."""
    path = tmp_path / "snitchd.toml"
    path.write_text('fail_mode = "sometimes"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="fail_mode") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_bad_toml_is_an_error_naming_the_file(tmp_path: Path) -> None:
    """A syntax error is reported as such, with the file, not as a traceback."""
    path = tmp_path / "snitchd.toml"
    path.write_text("queue = = 5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """TOML is UTF-8; a Latin-1 comment must give ConfigError naming the file, not a
    UnicodeDecodeError traceback at start-up."""
    path = tmp_path / "snitchd.toml"
    path.write_bytes(b"queue = 5 # caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    """`snitchd --config typo.toml` must fail, not run with defaults the admin did not choose."""
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="no such file") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_unreadable_path_is_a_config_error(tmp_path: Path) -> None:
    """A directory where the file should be is an OSError; it must read as a config error."""
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path))):
        load_config(tmp_path)


def test_missing_default_file_means_defaults() -> None:
    """A package may ship no config at all: the default path being absent is not an error."""
    if DEFAULT_PATH.exists():
        pytest.skip(f"{DEFAULT_PATH} exists on this machine")
    assert load_config(None) == Config()


@pytest.mark.parametrize("value", [["eth 0"], ["sixteen-chars-xx"], ["a+b"], "docker0", [""], [3]])
def test_forward_interfaces_are_iptables_names(value: Any) -> None:
    """forward_interfaces become `-i NAME` words of iptables rules (issue 16): a name of at
    most 15 characters, `+` only at its end; anything else is refused, naming the key."""
    with pytest.raises(ConfigError, match="forward_interfaces"):
        parse_config({"forward_interfaces": value})


def test_no_forward_interfaces_is_allowed() -> None:
    assert parse_config({"forward_interfaces": []}).forward_interfaces == ()


def test_dns_queue_must_lie_outside_the_readers_queues() -> None:
    """With N queue readers the packet queues are queue … queue + N - 1 (issue 21); the
    default dns_queue lies below them."""
    with pytest.raises(ConfigError, match=r"dns_queue = 12: must differ from the packet queues"):
        parse_config({"queue": 10, "queue_readers": 4, "dns_queue": 12})
    assert parse_config({"queue": 10, "queue_readers": 4, "dns_queue": 14}).queue_readers == 4
    assert parse_config({"queue_readers": 64}).dns_queue < Config().queue
    with pytest.raises(ConfigError, match="past 65535"):
        parse_config({"queue": 65535, "queue_readers": 2})


def test_queue_readers_zero_is_one_per_core_and_one_is_the_default() -> None:
    assert reader_count(Config(queue_readers=0)) == max(1, os.cpu_count() or 1)
    assert reader_count(Config()) == 1
