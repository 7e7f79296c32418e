"""`snitchctl explain`: which rule a flow would meet, judged as the packet path judges it.

Its answer must be the live verdict, or it lies when it matters most ("why was this allowed?"):
it said "no matching rule" for a flow the log showed allowed by a host rule (issue 15), because
it looked at no names. So it builds the flow and the process the way the packet path sees them,
labels the flow with the names the packet path would (`DnsWatch.names_for`: the process's own,
its user's, the shared ones), and decides with the same `decide` on the same held `RuleSet`;
the list of every matching rule (`RuleSet.explain`) is for reading, its first is the winner.

A destination may be a name (`--dst api.example.org`): the address it was last resolved to for
that user (or for everyone) is the flow's, and the names learnt with it (its CNAME chain) label
it, as they label the flow of the process that resolved it. `--host NAME` with an address
judges the flow as if the app had resolved NAME to it. The executable's sha256 is read (in a
worker, a world-readable regular file up to `max_hash_bytes`), so rules pinning a digest are
judged too. What it cannot know of a live process: its parents, a failed verification,
injected code, a late lookup; and a prompt's retry memory (`attempts`) is not consulted.

`--container NAME` (issue 16) judges the flow as one forwarded from that container, as the
packet path judges a container's flow: `container=` and `runtime=` rules apply, app rules do
not (its executable is the container's file, so none is hashed), and `user=` names the
container's owner (`--uid`; none: a system container). Without `--runtime` it is judged under
every runtime, and answered only if they all agree: a `runtime=` rule may make them differ, and
then the answer says so and asks for the runtime rather than guess one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from dataclasses import dataclass
from ipaddress import ip_address

from snitch_common.errors import RuleError
from snitch_common.records import (
    Attribution,
    Container,
    Flow,
    IPAddress,
    Process,
    Proto,
    Runtime,
)
from snitchd.decide import Explanation, Verdict, decide
from snitchd.firewall import Firewall
from snitchd.regularfile import open_regular

__all__ = ["ExplainQuery", "Explained", "explain_flow"]


@dataclass(frozen=True, slots=True)
class ExplainQuery:
    """A flow to explain, as `snitchctl explain` gives it: `dst` is an address or a name."""

    dst: str
    port: int = 0
    proto: Proto = Proto.TCP
    exe: str | None = None
    uid: int | None = None
    pid: int | None = None
    iface: str = ""
    host: str | None = None
    script: str | None = None
    sha256: str | None = None
    container: str | None = None  # judged as forwarded from this container (issue 16)
    runtime: Runtime | None = None  # its runtime; None: every runtime, if they agree


# The longest container name `--container` takes: as long as a name the packet path keeps.
_CONTAINER_NAME_MAX = 128


@dataclass(frozen=True, slots=True)
class Explained:
    """The flow judged (its address and names), every matching rule best first, and the
    verdict the packet path gives it: None when no rule covers it (a prompt, or the default).
    `note` says what was assumed."""

    dst: IPAddress
    names: frozenset[str]
    explanation: Explanation
    verdict: Verdict | None
    sha256: str | None
    note: str = ""


async def explain_flow(firewall: Firewall, query: ExplainQuery) -> Explained:
    """Raises RuleError for a destination that is neither an address nor a name resolved
    lately by that user (or by everyone)."""
    now = firewall.clock()
    host = query.host
    notes = []
    chain: frozenset[str] = frozenset()
    try:
        dst = ip_address(query.dst)
    except ValueError:
        name = query.dst.lower().rstrip(".")
        if host is not None and host.lower().rstrip(".") != name:
            raise RuleError(f"explain: --dst {query.dst} and --host {host} differ") from None
        host = None
        found = await _resolved(firewall, name, now, query.uid, query.pid)
        if found is None:
            raise RuleError(
                f"explain: {query.dst} is not an address, and no address is known for it (it "
                "was not resolved lately by this user or a system service; give its address: "
                f"--dst ADDRESS --host {query.dst})"
            ) from None
        dst, chain = found
        notes.append(f"{query.dst} was last resolved to {dst}")
    src = ip_address("0.0.0.0") if dst.version == 4 else ip_address("::")
    flow = Flow(query.proto, src, 0, dst, query.port, query.iface)
    if query.container is not None:
        return _explain_container(firewall, query, flow, host, chain, notes, now)
    digest = query.sha256
    if digest is None and query.exe is not None:
        digest = await asyncio.to_thread(_digest, query.exe, firewall.config.max_hash_bytes)
        if digest is None:
            notes.append(f"{query.exe} was not hashed: rules pinning a digest do not match")
    proc = Process(
        Attribution.PROCESS,
        pid=query.pid,
        uid=query.uid,
        exe=query.exe,
        sha256=digest,
        interpreted=query.script is not None,
        script=query.script,
    )
    names = _names(firewall, flow, proc, host, chain, notes, now)
    outcome = decide(flow, proc, firewall.rules, now, names)
    return Explained(
        dst,
        names,
        firewall.rules.explain(flow, proc, names, now),
        outcome if isinstance(outcome, Verdict) else None,
        digest,
        "; ".join(notes),
    )


def _names(
    firewall: Firewall,
    flow: Flow,
    proc: Process,
    host: str | None,
    chain: frozenset[str],
    notes: list[str],
    now: float,
) -> frozenset[str]:
    """The names the packet path would label the flow with, and `--host`'s."""
    names, _ = firewall.dns.names_for(flow.dst, proc, now)
    names |= chain
    if host is not None:
        names |= {host.lower().rstrip(".")}
        notes.append(f"as if the app had resolved {host} to {flow.dst}")
    return names


def _explain_container(
    firewall: Firewall,
    query: ExplainQuery,
    flow: Flow,
    host: str | None,
    chain: frozenset[str],
    notes: list[str],
    now: float,
) -> Explained:
    """The flow judged as forwarded from `query.container`: under its runtime, or under every
    runtime when none is given, answered only when they all give the same verdict and matches.
    """
    name = query.container or ""
    if not name or len(name) > _CONTAINER_NAME_MAX or not name.isprintable():
        raise RuleError(
            f"explain: invalid container name {name!r}: 1-{_CONTAINER_NAME_MAX} printable "
            "characters (as docker ps or machinectl list shows it)"
        )
    runtimes = [query.runtime] if query.runtime is not None else list(Runtime)
    judged: list[tuple[Runtime, Explanation, Verdict | None]] = []
    names: frozenset[str] = frozenset()
    for runtime in runtimes:
        box = Container(runtime, name, name, owner_uid=query.uid)
        proc = Process(
            Attribution.PROCESS, pid=query.pid, uid=query.uid, exe=query.exe, container=box
        )
        if not judged:
            names = _names(firewall, flow, proc, host, chain, notes, now)
        outcome = decide(flow, proc, firewall.rules, now, names)
        verdict = outcome if isinstance(outcome, Verdict) else None
        judged.append((runtime, firewall.rules.explain(flow, proc, names, now), verdict))
    runtime, explanation, verdict = judged[0]
    if any((e, _said(v)) != (explanation, _said(verdict)) for _, e, v in judged[1:]):
        said = "; ".join(f"{r.value}: {_told(v)}" for r, _, v in judged)
        raise RuleError(
            f"explain: container {name}: the verdict depends on its runtime ({said}); give "
            "--runtime"
        )
    owner = "a system container" if query.uid is None else f"owned by uid {query.uid}"
    what = runtime.value if query.runtime is not None else "any runtime: the same verdict"
    notes.insert(0, f"as forwarded from container {name} ({what}), {owner}")
    return Explained(flow.dst, names, explanation, verdict, None, "; ".join(notes))


def _said(verdict: Verdict | None) -> tuple[object, ...] | None:
    return None if verdict is None else (verdict.action, verdict.rule_id)


def _told(verdict: Verdict | None) -> str:
    if verdict is None:
        return "no rule"
    if verdict.rule_id is None:
        return verdict.action.value
    return f"{verdict.action.value} by rule {verdict.rule_id}"


async def _resolved(
    firewall: Firewall, name: str, now: float, uid: int | None, pid: int | None
) -> tuple[IPAddress, frozenset[str]] | None:
    """The name cache's scan, letting the loop run between its chunks."""
    for found in firewall.dns.names.find(name, now, uid, pid):
        if found is None:
            await asyncio.sleep(0)
            continue
        return found
    return None


def _digest(path: str, max_bytes: int) -> str | None:
    """The sha256 of `path` if it is a regular file anyone may read (so the answer tells the
    caller nothing they could not compute), no larger than `max_bytes`; else None."""
    try:
        fd = open_regular(path)  # never a device: a terminal would become snitchd's
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not st.st_mode & stat.S_IROTH or st.st_size > max_bytes:
            return None
        return hashlib.file_digest(f, "sha256").hexdigest()
