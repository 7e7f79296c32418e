"""The rule language: what `list-rules` prints must paste back into `add-rule` unchanged, and every
malformed rule must be refused with a message that points at the wrong word."""

from __future__ import annotations

import shlex
import string
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network, ip_network

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import snitch_common.rules
from snitch_common.errors import RuleError
from snitch_common.records import Proto
from snitch_common.rules import CLASSES, Action, Lifetime, Rule, parse_duration, parse_rule
from snitchctl.main import rule_warnings

HASH = "0123456789abcdef" * 4

# ---------------------------------------------------------------------------------------------
# Round trips: a table first (readable failures), then a property.

ROUND_TRIP = [
    "allow",
    "deny",
    "reject",
    "allow app=/usr/bin/curl",
    f"allow app=/usr/bin/curl sha256={HASH}",
    "deny user=1000",
    "allow to=93.184.216.34",
    "allow to=10.0.0.0/8",
    "allow to=0.0.0.0/0",
    "allow to=2001:db8::1",
    "allow to=2001:db8::/32",
    "allow to=example.org",
    "allow to=*.example.org",
    "allow to=under_score.example.org",
    "allow port=53",
    "allow port=1-65535",
    "allow port=8000-8080 proto=tcp",
    "allow proto=udp",
    "allow proto=icmp",
    "allow proto=other",
    "allow to=224.0.0.22 proto=other",
    "allow iface=tun0",
    "allow app=/usr/bin/curl for=once",
    "allow app=/usr/bin/curl for=restart",
    "allow app=/usr/bin/curl for=15m",
    "allow app=/usr/bin/curl for=15m until=1700000900.5",
    "allow app=/usr/bin/curl for=process",
    "allow app=/usr/bin/curl for=process pid=4242 start=1700000000.25",
    "reject app=/usr/bin/curl user=0 to=10.1.0.0/16 port=443 proto=tcp iface=eth0 for=525600m",
    "allow app='/opt/My App/bin/my app'",
    "allow app='/opt/it'\"'\"'s/bin'",
    "allow iface='we\"ird'",
    "allow app=/usr/bin/python3 script=/home/u/ok.py",
    f"allow app=/usr/bin/python3 sha256={HASH} script=/home/u/ok.py parent1=/usr/bin/bash",
    "deny parent=/usr/bin/evolution",
    "allow app=/usr/bin/curl parent1=/usr/bin/make parent=/usr/bin/ssh to=example.org",
    "allow app=/usr/bin/bash script='/home/u/my scripts/x.sh'",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_printed_rule_parses_back_to_the_same_rule(text: str) -> None:
    """What `list-rules` prints is pasted into `add-rule`; it must mean exactly the same rule."""
    rule = parse_rule(text)
    assert parse_rule(str(rule)) == rule


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_canonical_text_is_printed_unchanged(text: str) -> None:
    """These texts are already canonical, so printing them must give the same words back
    (a stable printed form is what makes rules diffable and greppable)."""
    assert str(parse_rule(text)) == text


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("allow to=10.0.0.1/32", "allow to=10.0.0.1"),
        ("allow to=2001:db8::1/128", "allow to=2001:db8::1"),
        ("allow to=Example.ORG.", "allow to=example.org"),
        ("allow to=any", "allow"),
        ("allow to=*", "allow"),
        ("allow for=forever", "allow"),
        ("allow port=80-80", "allow port=80"),
        ("allow   proto=tcp    port=443", "allow port=443 proto=tcp"),
        ("allow user=root", "allow user=0"),
        ("allow 'app=/usr/bin/curl'", "allow app=/usr/bin/curl"),
    ],
)
def test_equivalent_spellings_print_in_one_canonical_form(text: str, canonical: str) -> None:
    """Spellings that mean the same rule print the same way, and a user name becomes a uid so the
    stored form keeps its meaning if the name is reused."""
    assert str(parse_rule(text)) == canonical


def test_app_path_with_spaces_is_quoted_and_round_trips() -> None:
    """Paths with spaces exist (`/opt/Some App/`): the printed form quotes them as a shell would,
    so the path is one word again when parsed."""
    rule = parse_rule("allow app='/opt/Some App/bin/run me' port=443")
    assert rule.exe == "/opt/Some App/bin/run me"
    assert "app='/opt/Some App/bin/run me'" in str(rule)
    assert parse_rule(str(rule)) == rule


def test_parsed_fields_have_the_meaning_the_grammar_gives() -> None:
    """A round trip alone would pass if the parser dropped fields on both sides; pin the fields."""
    rule = parse_rule(
        f"reject app=/usr/bin/curl sha256={HASH} user=1000 to=10.1.0.0/16 port=8000-8080 "
        "proto=tcp iface=eth0 for=15m"
    )
    assert rule == Rule(
        action=Action.REJECT,
        exe="/usr/bin/curl",
        sha256=HASH,
        user=1000,
        dst=IPv4Network("10.1.0.0/16"),
        ports=(8000, 8080),
        proto=Proto.TCP,
        iface="eth0",
        lifetime=Lifetime.MINUTES,
        minutes=15,
    )


# Strategies: only combinations `_check_consistent` accepts.

_LABEL = st.from_regex(r"[a-z0-9_]([a-z0-9_-]{0,8}[a-z0-9_])?", fullmatch=True)


@st.composite
def hosts(draw: st.DrawFn) -> str:
    labels = draw(st.lists(_LABEL, min_size=1, max_size=4))
    host = ".".join(labels)
    if draw(st.booleans()):
        host = "*." + host
    # All digits and dots reads as a (bad) address; "any" means no destination at all.
    # ... and a class word (`lan`) is the class, never a host.
    if host.replace(".", "").replace("*", "").isdigit() or host in ("any", *CLASSES):
        host = "h" + host if not host.startswith("*.") else "*.h" + host[2:]
    return host


@st.composite
def networks(draw: st.DrawFn) -> IPv4Network | IPv6Network:
    if draw(st.booleans()):
        addr = draw(st.ip_addresses(v=4))
        prefix = draw(st.integers(0, 32))
    else:
        addr = draw(st.ip_addresses(v=6))
        prefix = draw(st.integers(0, 128))
    return ip_network((addr, prefix), strict=False)


# Canonical absolute paths: no empty, `.` or `..` component (the parser refuses those).
# Printable ones: a line break or control character would split the rule's line in a file.
_PRINTABLE = st.characters(blacklist_characters="/").filter(str.isprintable)
_COMPONENT = st.text(_PRINTABLE, min_size=1, max_size=6).filter(
    lambda part: part not in (".", "..")
)
_PATHS = st.lists(_COMPONENT, max_size=3).map(lambda parts: "/" + "/".join(parts))

_FLOATS = st.floats(allow_nan=False, allow_infinity=False)
# Interface names Linux takes: up to 15 bytes of UTF-8 (cut at a character), not "." or "..",
# no "/", ":" or byte the kernel's isspace() is true for (0xa0 among them).
_IFACES = (
    st.text(
        _PRINTABLE.filter(lambda c: c not in ": " and 0xA0 not in c.encode()),
        min_size=1,
        max_size=15,
    )
    .map(lambda name: name.encode()[:15].decode(errors="ignore"))
    .filter(lambda name: name not in ("", ".", ".."))
)


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    exe = draw(st.none() | _PATHS)
    sha256 = draw(st.none() | st.text("0123456789abcdef", min_size=64, max_size=64))
    if exe is None:
        sha256 = None
    dst, host = None, None
    which = draw(st.sampled_from(["none", "net", "host"]))
    if which == "net":
        dst = draw(networks())
    elif which == "host":
        host = draw(hosts())
    proto = draw(st.none() | st.sampled_from(list(Proto)))
    ports = None
    if proto not in (Proto.ICMP, Proto.OTHER) and draw(st.booleans()):
        lo = draw(st.integers(1, 65535))
        ports = (lo, draw(st.integers(lo, 65535)))
    iface = draw(st.none() | _IFACES)
    paths = _PATHS
    script = draw(st.none() | paths) if exe is not None else None
    lifetimes = [Lifetime.ONCE, Lifetime.MINUTES, Lifetime.RESTART, Lifetime.FOREVER]
    if exe is not None:
        lifetimes.append(Lifetime.PROCESS)
    lifetime = draw(st.sampled_from(lifetimes))
    minutes = until = pid = start = None
    if lifetime is Lifetime.MINUTES:
        minutes = draw(st.integers(1, 525600))
        until = draw(st.none() | _FLOATS)
    elif lifetime is Lifetime.PROCESS:
        pid = draw(st.none() | st.integers(1, 2**22 - 1))
        start = draw(st.none() | _FLOATS)
    action = draw(st.sampled_from(Action))
    return Rule(
        action=action,
        exe=exe,
        sha256=sha256,
        user=draw(st.none() | st.integers(0, 2**32 - 2)),
        dst=dst,
        host=host,
        ports=ports,
        proto=proto,
        iface=iface,
        lifetime=lifetime,
        minutes=minutes,
        until=until,
        pid=pid,
        start=start,
        script=script,
        parent=draw(st.none() | paths),
        parent1=draw(st.none() | paths),
        **_window(draw),
        keep_open=action is not Action.ALLOW and draw(st.booleans()),
    )


def _window(draw: st.DrawFn) -> dict[str, object]:
    """Time windows and keep-open (issue 18): any valid window, any set of days."""
    start, end = draw(st.integers(0, 1439)), draw(st.integers(0, 1439))
    during = draw(st.none() | st.just((start, end))) if start != end else None
    days = draw(st.none() | st.integers(1, 127))
    return {"during": during, "days": days}


@given(rules())
def test_any_valid_rule_round_trips(rule: Rule) -> None:
    """The docstring's promise, `parse_rule(str(rule)) == rule`, for every valid rule, including
    odd paths and interface names that need quoting."""
    assert parse_rule(str(rule)) == rule


@given(hosts() | st.sampled_from(CLASSES), st.booleans(), st.booleans())
@example("lan", False, True)
def test_any_destination_word_round_trips(name: str, upper: bool, dot: bool) -> None:
    """`to=lan.` was the host "lan", printed as `to=lan`: the class, the whole LAN, after the
    next restart. Whatever the case and trailing dot, a destination that parses prints as
    itself."""
    text = (name.upper() if upper else name) + ("." if dot else "")
    try:
        rule = parse_rule(f"deny to={text}")
    except RuleError:
        assert dot and name in CLASSES
        return
    assert parse_rule(str(rule)) == rule


@given(st.text(" \t\r\n\x0b\x0c\x1c\x85\xa0\u2003'\"\\#=a/é", max_size=16))
def test_words_are_split_as_shlex_splits_them(text: str) -> None:
    """The parser splits text without quotes or backslashes itself, 20 times faster than shlex
    (3 of the 3.5 s that parsing 100k rules took); a word split any other way would be another
    rule, or one that prints as something else."""
    try:
        expected = shlex.split(text)
    except ValueError:
        with pytest.raises(RuleError):
            snitch_common.rules._split(text)
        return
    assert snitch_common.rules._split(text) == expected


def test_rules_share_equal_values() -> None:
    """At 100k rules the same apps, networks and ports recur thousands of times; one object
    for each halved what the parsed rules cost (bench/manyrules.py: 61 -> 28 MB)."""
    a = parse_rule("allow app=/usr/bin/curl to=10.0.0.0/8 port=443 iface=tun0")
    b = parse_rule("deny app=/usr/bin/curl to=10.0.0.0/8 port=443 iface=tun0 for=restart")
    assert a.exe is b.exe and a.dst is b.dst and a.ports is b.ports and a.iface is b.iface
    c = parse_rule("allow to=*.example.org")
    assert c.host is parse_rule("deny to=*.Example.org.").host


_WORD_VALUES = st.text(string.printable + "²٥\x00é*", max_size=12)


@given(
    st.sampled_from(["allow", "deny", "reject", "permit", ""]),
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "app",
                    "sha256",
                    "script",
                    "parent",
                    "parent1",
                    "user",
                    "to",
                    "port",
                    "proto",
                    "iface",
                    "for",
                    "until",
                    "pid",
                    "start",
                    "bogus",
                ]
            ),
            _WORD_VALUES,
        ),
        max_size=4,
    ),
)
def test_parser_raises_only_rule_error(action: str, words: list[tuple[str, str]]) -> None:
    """Rule text arrives from D-Bus callers: whatever they send, the answer is a RuleError (an
    `InvalidRule` reply), never an internal crash."""
    text = " ".join([action, *(shlex.quote(f"{k}={v}") for k, v in words)])
    try:
        rule = parse_rule(text)
    except RuleError:
        return
    assert parse_rule(str(rule)) == rule


# ---------------------------------------------------------------------------------------------
# Malformed rules: each is refused, and the message names what is wrong.

MALFORMED = [
    pytest.param("", "empty", id="empty"),
    pytest.param("   ", "empty", id="blank"),
    pytest.param("permit port=80", "'permit'", id="bad-action"),
    pytest.param("port=80", "'port=80'", id="no-action"),
    pytest.param("allow colour=red", "'colour=red'", id="unknown-key"),
    pytest.param("allow port80", "'port80'", id="word-without-equals"),
    pytest.param("allow port=80 port=81", "port=", id="duplicate-key"),
    pytest.param("allow port=", "'port='", id="empty-value"),
    pytest.param("allow port=0", "'0'", id="port-zero"),
    pytest.param("allow port=9-3", "'9-3'", id="port-range-backwards"),
    pytest.param("allow port=70000", "'70000'", id="port-too-big"),
    pytest.param("allow port=http", "'http'", id="port-name"),
    pytest.param("allow port=8_0", "'8_0'", id="port-underscore"),
    pytest.param("allow port=+443", "'+443'", id="port-plus"),
    pytest.param("allow port=80-+90", "'80-+90'", id="port-range-plus"),
    pytest.param("allow port=\u0664\u0664\u0663", "port", id="port-arabic-indic-digits"),
    pytest.param("allow for=\u0661\u0665m", "duration", id="minutes-arabic-indic-digits"),
    pytest.param("allow user=99999999999999999999", "0..4294967294", id="uid-too-big"),
    pytest.param("allow user=4294967295", "'4294967295'", id="uid-minus-one"),
    pytest.param("allow proto=icmp port=5", "icmp", id="icmp-with-port"),
    pytest.param("allow proto=sctp", "'sctp'", id="unknown-proto"),
    pytest.param("allow proto=other port=5", "other has no ports", id="other-with-port"),
    pytest.param("allow to=300.1.1.1", "'300.1.1.1'", id="bad-ipv4"),
    pytest.param("allow to=10.0.0.1/8", "'10.0.0.1/8'", id="host-bits-set"),
    pytest.param("allow to=2001:db8::1/32", "'2001:db8::1/32'", id="v6-host-bits-set"),
    pytest.param("allow to=1.2.3", "'1.2.3'", id="short-ipv4"),
    pytest.param("allow to=bad..host", "'bad..host'", id="empty-label"),
    pytest.param("allow to=-bad.example", "'-bad.example'", id="label-starts-with-dash"),
    pytest.param("deny to=lan.", "'lan.'", id="class-word-as-host"),
    pytest.param("deny to=LocalHost.", "'LocalHost.'", id="class-word-as-host-any-case"),
    pytest.param("allow app=relative", "'relative'", id="relative-app"),
    pytest.param("allow app=/bin/x sha256=xyz", "'xyz'", id="bad-sha256"),
    pytest.param(f"allow app=/bin/x sha256={HASH.upper()}", HASH.upper(), id="upper-sha256"),
    pytest.param(f"allow sha256={HASH}", "sha256=", id="sha256-without-app"),
    pytest.param("allow app=/bin/sh script=x.sh", "'x.sh'", id="relative-script"),
    pytest.param("allow script=/x.sh", "script=", id="script-without-app"),
    pytest.param("allow parent=bash", "'bash'", id="relative-parent"),
    pytest.param("allow parent1=./make", "'./make'", id="relative-parent1"),
    pytest.param("allow parent=/a parent=/b", "parent=", id="two-parents"),
    pytest.param("deny app=/usr/bin//python3.11", "canonical path", id="app-double-slash"),
    pytest.param("deny app=/usr/./bin/curl", "'/usr/./bin/curl'", id="app-dot"),
    pytest.param("deny app=/usr/lib/../bin/curl", "'/usr/lib/../bin/curl'", id="app-dot-dot"),
    pytest.param("deny app=/usr/bin/curl/", "app= must be the canonical", id="app-trailing-slash"),
    pytest.param("deny app=/bin/sh script=/home/u/./x.sh", "script= must", id="script-dot"),
    pytest.param("deny parent=/usr/bin/..", "parent= must", id="parent-ends-in-dot-dot"),
    pytest.param("deny parent1=//usr/bin/make", "parent1= must", id="parent1-leading-slashes"),
    pytest.param("allow user=no-such-user-snitch-test", "'no-such-user-snitch-test'", id="user"),
    pytest.param("allow iface=a-very-long-iface-name", "'a-very-long-iface-name'", id="iface"),
    pytest.param("allow iface=eth/0", "'eth/0'", id="iface-slash"),
    pytest.param("allow 'iface=a\nb'", "'a\\nb'", id="iface-newline"),
    pytest.param("deny 'app=/opt/a\u2028b'", "printable", id="app-line-separator"),
    pytest.param("deny 'app=/opt/a\nb'", "'/opt/a\\nb'", id="app-newline"),
    pytest.param("deny 'parent=/opt/a\x0cb'", "parent", id="parent-form-feed"),
    pytest.param("allow for=forever2", "'forever2'", id="bad-duration"),
    pytest.param("allow for=0m", "'0m'", id="zero-minutes"),
    pytest.param("allow for=525601m", "'525601m'", id="more-than-a-year"),
    pytest.param("allow for=minutes", "'minutes'", id="minutes-without-number"),
    pytest.param("allow until=5", "until=", id="until-without-minutes"),
    pytest.param("allow for=5m until=soon", "'soon'", id="until-not-a-number"),
    pytest.param("allow app=/bin/x pid=5", "pid=", id="pid-without-process"),
    pytest.param("allow for=process", "app=", id="process-without-app"),
    pytest.param("allow app=/bin/x for=process pid=-1", "'-1'", id="negative-pid"),
    pytest.param("allow app='/usr/bin/curl", "app='/usr/bin/curl", id="unbalanced-quote"),
]


@pytest.mark.parametrize(("text", "named"), MALFORMED)
def test_malformed_rule_is_refused_naming_the_bad_word(text: str, named: str) -> None:
    """A firewall rule that half-parses is worse than none; and "invalid rule" alone does not
    tell the user what to fix, so the message must quote the offending word."""
    with pytest.raises(RuleError) as info:
        parse_rule(text)
    assert named in str(info.value)


@pytest.mark.parametrize("text", ["allow user=²", "allow app=/bin/x for=process pid=²"])
def test_non_ascii_digits_are_refused_not_crashed_on(text: str) -> None:
    """`str.isdigit` is true for "²" but `int("²")` fails: the parser must answer RuleError
    (InvalidRule over D-Bus), not leak a ValueError."""
    with pytest.raises(RuleError, match="²"):
        parse_rule(text)


@pytest.mark.parametrize("value", ["4194304", "4294967296", "9" * 5000])
def test_pid_above_the_kernels_largest_is_refused(value: str) -> None:
    """A pid is below the kernel's pid_max, which is at most PID_MAX_LIMIT (4194304 on 64-bit):
    `pid=4294967296` was taken and named a process that can never exist, and 5000 digits
    leaked int()'s ValueError instead of saying what is wrong."""
    with pytest.raises(RuleError, match=r"invalid pid '[0-9]+': a process id is at most 4194303"):
        parse_rule(f"allow app=/bin/x for=process pid={value}")


@pytest.mark.parametrize("value", ["0", "00", "0000000"])
def test_pid_0_is_refused(value: str) -> None:
    """No process has pid 0 (the kernel gives 1 and up): such a rule was taken and matched
    nothing, so the person who wrote it believed something was allowed or denied that was not."""
    with pytest.raises(RuleError, match=r"invalid pid '0+': a process id is 1 or more"):
        parse_rule(f"allow app=/bin/x for=process pid={value}")


def test_the_largest_pid_the_kernel_gives_is_taken() -> None:
    rule = parse_rule("allow app=/bin/x for=process pid=4194303 start=1.0")
    assert rule.pid == 4194303


@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("eth0:1", "':'"),
        ("we ird", "' '"),
        (".", "not '.' or '..'"),
        ("..", "not '.' or '..'"),
        ("wlpäöüßéèê", "at most 15 bytes"),  # 10 characters, 17 bytes
        ("tunà", "'à'"),  # UTF-8 c3 a0: a0 is a blank to the kernel's isspace()
    ],
)
def test_iface_names_linux_refuses_are_refused(name: str, named: str) -> None:
    """The kernel's dev_valid_name takes 1-15 bytes, not "." or "..", without "/", ":" or an
    isspace() byte: `iface=eth0:1` (an address label, not an interface) was taken and matched
    nothing, ever. The message names the word, what is wrong and what to write."""
    with pytest.raises(RuleError, match="invalid iface") as info:
        parse_rule(f"allow {shlex.quote('iface=' + name)}")
    message = str(info.value)
    assert repr(name) in message and named in message and "ip link" in message


@pytest.mark.parametrize(
    "name", ["lo", "eth0", "wlp0s20f3", "veth1234567890a", "br-0.1_x@y", "wlpäöüß"]
)
def test_iface_names_linux_takes_are_taken(name: str) -> None:
    assert parse_rule(f"allow iface={name}").iface == name


def test_user_name_with_nul_is_refused_not_crashed_on() -> None:
    """`pwd.getpwnam` raises ValueError on an embedded NUL; that is a bad user, not a crash."""
    with pytest.raises(RuleError, match="user"):
        parse_rule("allow 'user=ro\x00ot'")


def test_host_with_trailing_newline_is_refused() -> None:
    """`$` in a regex also matches before a final newline; a host "example.org\\n" can never match
    a name, and it prints unquoted so it would not even survive a round trip."""
    with pytest.raises(RuleError, match=r"example\.org"):
        parse_rule("allow 'to=example.org\n'")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_until_must_be_a_finite_time(value: str) -> None:
    """`until=nan` never expires (every comparison with nan is false) and breaks
    `parse_rule(str(r)) == r`; a point in time is a finite number."""
    with pytest.raises(RuleError, match=value):
        parse_rule(f"allow app=/bin/x for=5m until={value}")


@pytest.mark.parametrize("key", ["until", "start"])
@pytest.mark.parametrize(
    "value",
    [
        *("1e999", "-1e999", "NaN", "infinity", "1_000", " 12 ", "12\n", "\u0661\u0662", "+5"),
        *(".5", "5.", "1E+16", "1e16", "0x10", "1,5", "5.0.0"),
    ],
)
def test_until_and_start_take_only_the_numbers_snitch_writes(key: str, value: str) -> None:
    """They were read with float(), which also takes "1_000", " 12 ", Arabic-Indic digits and
    more that snitch never prints (and `1e999`, infinity): a typo became a time. The message
    names the word and shows the form to use."""
    head = "allow app=/bin/x " + ("for=5m" if key == "until" else "for=process pid=1")
    with pytest.raises(RuleError, match=rf"invalid {key} .*seconds since the epoch") as info:
        parse_rule(f"{head} {shlex.quote(f'{key}={value}')}")
    assert repr(value) in str(info.value)


@pytest.mark.parametrize(
    "value",
    [0.0, -0.0, 0.5, 1700000000.0, 1795701900.25, 1e16, 1.5e-05, 5e-324, 1.7976931348623157e308],
)
def test_every_time_snitch_writes_reads_back(value: float) -> None:
    """What `str(rule)` writes (repr of the float: fixed or with an exponent) parses, and whole
    seconds as a person types them."""
    rule = parse_rule(f"allow app=/bin/x for=5m until={value!r}")
    assert rule.until == value and parse_rule(str(rule)) == rule
    assert parse_rule("allow app=/bin/x for=process pid=1 start=1700000000").start == 1.7e9


# ---------------------------------------------------------------------------------------------
# Durations and stamping.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("once", (Lifetime.ONCE, None)),
        ("process", (Lifetime.PROCESS, None)),
        ("1m", (Lifetime.MINUTES, 1)),
        ("15m", (Lifetime.MINUTES, 15)),
        ("525600m", (Lifetime.MINUTES, 525600)),
        ("restart", (Lifetime.RESTART, None)),
        ("forever", (Lifetime.FOREVER, None)),
    ],
)
def test_parse_duration_accepts_the_documented_forms(
    text: str, expected: tuple[Lifetime, int | None]
) -> None:
    """The prompt's duration menu and `snitchctl --for` both go through this function."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        *("", "0m", "15", "15M", "15 m", "1h", "minutes", "Forever", "-5m"),
        *("\u0661\u0665m", "15m\n", "+15m", "1_5m", "99999999999999999999m"),
    ],
)
def test_parse_duration_refuses_everything_else(text: str) -> None:
    """Only the documented forms: a typo like "1h" must not silently mean forever."""
    with pytest.raises(RuleError):
        parse_duration(text)


def test_stamping_fixes_minutes_to_a_point_in_time() -> None:
    """A 15-minute rule must expire 15 minutes after it was added, not 15 minutes after each
    restart: the store keeps `until`, computed once."""
    rule = parse_rule("allow app=/bin/x for=15m")
    stamped = rule.stamped(1000.0)
    assert stamped.until == 1000.0 + 15 * 60
    assert parse_rule(str(stamped)) == stamped
    assert stamped.stamped(5000.0) == stamped


@pytest.mark.parametrize(
    "text", ["allow", "allow app=/bin/x for=process", "allow for=restart", "allow for=once"]
)
def test_stamping_leaves_other_lifetimes_alone(text: str) -> None:
    """Only a minutes rule has a clock; stamping anything else must not invent an expiry."""
    rule = parse_rule(text)
    assert rule.stamped(1000.0) == rule


@pytest.mark.parametrize(
    ("lifetime", "stored"),
    [
        (Lifetime.ONCE, False),
        (Lifetime.RESTART, False),
        (Lifetime.PROCESS, True),
        (Lifetime.MINUTES, True),
        (Lifetime.FOREVER, True),
    ],
)
def test_only_lasting_rules_are_stored(lifetime: Lifetime, stored: bool) -> None:
    """ "Until restart" must not survive a restart, so those rules never reach the database."""
    rule = replace(Rule(Action.ALLOW, exe="/bin/x"), lifetime=lifetime)
    assert rule.is_stored is stored


def test_ipv6_network_round_trips() -> None:
    """IPv6 destinations are first-class: the printed network parses to the same object type."""
    rule = parse_rule("deny to=2001:db8:1::/48")
    assert rule.dst == IPv6Network("2001:db8:1::/48")
    assert parse_rule(str(rule)) == rule


@pytest.mark.parametrize(
    ("text", "warned"),
    [
        ("allow app=/usr/bin/python3.11", True),
        ("allow app=/usr/bin/bash to=example.org", True),
        ("deny app=/usr/bin/perl", True),
        ("allow app=/usr/bin/python3 script=/home/u/ok.py", False),
        ("allow app=/usr/bin/curl", False),
        ("allow app=/usr/bin/pythonista", False),
        ("allow port=443", False),
    ],
)
def test_list_rules_warns_that_an_interpreter_rule_without_script_covers_every_script(
    text: str, warned: bool
) -> None:
    """`allow app=/usr/bin/python3` lets every Python program through (issue 14): list-rules
    says so, so nobody mistakes it for a rule about one script."""
    warnings = rule_warnings(text)
    assert bool(warnings) is warned
    assert all("every script" in w for w in warnings)
