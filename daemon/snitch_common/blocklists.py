"""Block lists (and allow lists): their names, formats, and the parsed form that crosses programs.

A list is downloaded and parsed by `snitch-lists` (an unprivileged updater: snitchd never speaks
IP), which writes the *parsed* list, one entry a line, to its directory; snitchd reads that file
again, checks every line once more (it trusts no file it did not write), and builds its lookup
structure in a worker thread. Both sides speak through this module: the formats people download
(`parse_source`), and the parsed form (`write_parsed`, `read_parsed`, `ListStatus`). Pure but for
the files named by the caller.
"""

from __future__ import annotations

import enum
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from ipaddress import ip_network
from pathlib import Path

from snitch_common.errors import ListError

__all__ = [
    "LIST_NAME_RE",
    "MAX_ENTRIES",
    "MIN_PREFIX",
    "ListFormat",
    "ListSpec",
    "ListStatus",
    "ParsedList",
    "check_list_name",
    "check_list_source",
    "iter_parsed",
    "parse_source",
    "read_parsed",
    "read_status",
    "specs_from_json",
    "specs_json",
    "write_parsed",
    "write_status",
]

LIST_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_DOMAIN_RE = re.compile(
    r"([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
)
# A download of which more than this share of lines is not an entry is not the list (a captive
# portal's HTML page, an error page, a different format): it is refused whole.
_BAD_SHARE = 0.01
# Hosts files list these names for the machine itself; they are not blocked names.
_HOSTS_SELF = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "local",
        "broadcasthost",
        "ip6-localhost",
        "ip6-loopback",
        "ip6-localnet",
        "ip6-mcastprefix",
        "ip6-allnodes",
        "ip6-allrouters",
        "ip6-allhosts",
        "0.0.0.0",
    }
)
_HEADER = "# snitch-list 1"
# Entries a list may have: 5x the largest lists in use (~1M names). A compromised list server
# must not make snitchd hold what it likes (each name costs ~60 bytes while a copy loads).
MAX_ENTRIES = 5_000_000


class ListFormat(enum.Enum):
    HOSTS = "hosts"  # "0.0.0.0 name [name...]", as /etc/hosts and StevenBlack's lists
    DOMAINS = "domains"  # one name a line, "*." optional
    IPS = "ips"  # one address or CIDR network a line (FireHOL style)


def check_list_name(name: str) -> str:
    """A list name is what `to=list:NAME` says and a file name: lowercase, digits, - and _."""
    if not LIST_NAME_RE.fullmatch(name):
        raise ListError(
            f"invalid list name {name!r}: use 1-63 lowercase letters, digits, - or _, "
            "starting with a letter or digit"
        )
    return name


def check_list_source(source: str) -> str:
    """A list comes from an https:// URL or a local file (an absolute path). Over plain http,
    anyone on the path can rewrite a list in flight: drop the entries that block their own
    names, or add ones that block what the user needs. snitchd refuses such a source when a
    list is added; snitch-lists refuses it too, for a list an earlier version took."""
    if not source.startswith(("https://", "/")):
        raise ListError(
            f"cannot use list source {source!r}: not an https:// URL or an absolute path "
            "(over plain http anyone on the path can rewrite a list): use https:// or the "
            "absolute path of a local file"
        )
    return source


@dataclass(frozen=True, slots=True)
class ListSpec:
    """A list as snitchd registers it: its name, where it comes from, how to read it."""

    name: str
    source: str  # an https:// URL or an absolute path (see `check_list_source`)
    format: ListFormat
    added: float = 0.0


@dataclass(frozen=True, slots=True)
class ParsedList:
    """The entries of a list: domains (lowercase, no "*.", each also covers its subdomains) and
    networks (CIDR text, host bits cleared). `skipped`: lines that were no entry."""

    domains: tuple[str, ...]
    networks: tuple[str, ...]
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.domains) + len(self.networks)


@dataclass(frozen=True, slots=True)
class ListStatus:
    """What the updater last did with a list, next to the parsed file (`NAME.status`).

    `ok` False: the last attempt failed (`error` says why) and the parsed file is the last good
    copy. `etag`/`last_modified` are what the server sent with that copy (for the next request).
    """

    name: str
    ok: bool
    checked: float  # when the updater last tried
    updated: float  # when the parsed file last changed (0: never)
    entries: int = 0
    error: str = ""
    etag: str = ""
    last_modified: str = ""
    source: str = ""


# The widest network an entry may name: a list server may be compromised, and one
# line of `0.0.0.0/0` or `::/0` among a thousand (under the 1 % of bad lines a list may have)
# made `allow app=X to=list:NAME` hold everywhere, or a deny list block everything.
MIN_PREFIX = {4: 8, 6: 16}


def _domain(word: str) -> str | None:
    """A domain entry; none of one label (`com` would cover every .com name)."""
    word = word.strip().lower().rstrip(".")
    if word.startswith("*."):
        word = word[2:]
    if not word or len(word) > 253 or not _DOMAIN_RE.fullmatch(word) or "." not in word:
        return None
    if word.replace(".", "").isdigit():  # an IPv4 address is not a name
        return None
    return word


def _network(word: str) -> str | None:
    try:
        net = ip_network(word.strip(), strict=False)
    except ValueError:
        return None
    return str(net) if net.prefixlen >= MIN_PREFIX[net.version] else None


def parse_source(text: str, fmt: ListFormat, *, what: str = "list") -> ParsedList:
    """Parse a downloaded list. Comments (`#`, `;`, `!`) and blank lines are ignored; a list
    with no entry, or of which more than 1 % of the lines are not entries, is refused whole
    (ListError), so that an error page never replaces a good list."""
    domains: dict[str, None] = {}
    networks: dict[str, None] = {}
    bad = lines = 0
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line[0] in ";!":
            continue
        lines += 1
        if fmt is ListFormat.IPS:
            net = _network(line.split()[0])
            if net is None:
                bad += 1
            else:
                networks[net] = None
            continue
        words = line.split()
        if fmt is ListFormat.HOSTS:
            if len(words) < 2 or _network(words[0]) is None:
                bad += 1
                continue
            words = words[1:]
        elif len(words) != 1:
            bad += 1
            continue
        for word in words:
            if word.lower() in _HOSTS_SELF:
                continue
            name = _domain(word)
            if name is None:
                bad += 1
                break
            domains[name] = None
    if not domains and not networks:
        raise ListError(f"cannot use {what}: no entry in it (is it a {fmt.value} list?)")
    if len(domains) + len(networks) > MAX_ENTRIES:
        raise ListError(f"cannot use {what}: more than {MAX_ENTRIES} entries")
    if bad > _BAD_SHARE * lines:
        raise ListError(
            f"cannot use {what}: {bad} of {lines} lines are not {fmt.value} entries "
            "(an error page? the wrong --format?); the last good copy stays"
        )
    return ParsedList(tuple(domains), tuple(networks), bad)


def write_parsed(path: Path, parsed: ParsedList) -> None:
    """Write the parsed form atomically (a reader sees the old file or the new one, whole)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="ascii") as f:
        f.write(_HEADER + "\n")
        for name in parsed.domains:
            f.write(name + "\n")
        for net in parsed.networks:
            f.write(net + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def iter_parsed(path: Path) -> Iterator[tuple[bool, str]]:
    """The entries of a parsed file, each checked again, as (is a domain, entry): snitchd
    trusts only what it checked, and a caller that hashes the names as they come never holds
    1M of them at once. A line that is no entry raises ListError (the whole copy is refused)."""
    try:
        with open(path, encoding="ascii") as f:
            header = f.readline().rstrip("\n")
            if header != _HEADER:
                raise ListError(f"cannot read list {path}: not a parsed snitch list")
            for number, line in enumerate(f, start=2):
                if number > MAX_ENTRIES + 1:
                    raise ListError(f"cannot read list {path}: more than {MAX_ENTRIES} entries")
                entry = line.rstrip("\n")
                if _domain(entry) == entry:  # as `parse_source` took it
                    yield True, entry
                elif (net := _network(entry)) is not None:
                    yield False, net
                else:
                    raise ListError(f"cannot read list {path}: line {number} is no entry")
    except (OSError, UnicodeDecodeError) as exc:
        raise ListError(f"cannot read list {path}: {exc}") from None


def read_parsed(path: Path) -> ParsedList:
    """A parsed file, whole (see `iter_parsed`)."""
    domains: list[str] = []
    networks: list[str] = []
    for is_domain, entry in iter_parsed(path):
        (domains if is_domain else networks).append(entry)
    return ParsedList(tuple(domains), tuple(networks))


def write_status(path: Path, status: ListStatus) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(status), sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_status(path: Path) -> ListStatus:
    """The updater's note on a list; a file that is not one is a ListError."""
    try:
        data = json.loads(path.read_text())
        fields = {f: data[f] for f in ListStatus.__dataclass_fields__ if f in data}
        status = ListStatus(**fields)
    except (OSError, ValueError, TypeError) as exc:
        raise ListError(f"cannot read list status {path}: {exc}") from None
    if not isinstance(status.ok, bool) or not isinstance(status.checked, int | float):
        raise ListError(f"cannot read list status {path}: bad fields")
    return status


def specs_json(specs: Iterable[ListSpec]) -> str:
    """The registry as JSON (snitchd's `lists.json`, and the `Lists` D-Bus reply)."""
    return json.dumps(
        [
            {"name": s.name, "source": s.source, "format": s.format.value, "added": s.added}
            for s in specs
        ],
        sort_keys=True,
    )


def specs_from_json(text: str) -> list[ListSpec]:
    try:
        rows = json.loads(text)
        return [
            ListSpec(
                check_list_name(str(r["name"])),
                str(r["source"]),
                ListFormat(r["format"]),
                float(r.get("added", 0.0)),
            )
            for r in rows
        ]
    except (ValueError, TypeError, KeyError) as exc:
        raise ListError(f"cannot read the list registry: {exc}") from None
