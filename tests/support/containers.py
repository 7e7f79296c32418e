"""A "container" inside the lab's client namespace (issue 16), as Docker would set one up.

Topology (documentation addresses only; nothing leaves the machine)::

    client netns (snitchd)                                       container netns
      br-snt 203.0.113.129/25  ── port vk<n> (veth) ─────────  eth0 203.0.113.<130+n>/25
      2001:db8:c::1/64                                             2001:db8:c::a/64
      MASQUERADE for 203.0.113.128/25 leaving by another interface  default via .129
      DNAT veth0:8081 → 203.0.113.130:8080 (a published port)

The /25 on the bridge is more specific than the lab's 203.0.113.0/24 route to the server, so
the server's hosts (203.0.113.7-9) stay where they were. A process is put "in the container"
by its cgroup: a directory named like a Docker scope (`docker-<64 hex>.scope`) under the cgroup
v2 root, created here and removed at the end. A fake Docker API (`dockerapi`: HTTP on a unix
socket, answering `GET /containers/ID/json`) gives the container its name. No real Docker is
needed.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

from snitchd.procs.bpf import cgroup2_root
from tests.support.lab import run, wait_for

__all__ = ["BRIDGE", "Guest", "GuestNet"]

BRIDGE = "br-snt"
GATEWAY = "203.0.113.129"
GATEWAY6 = "2001:db8:c::1"
PUBLISHED = 8081  # on the client's veth0 (192.0.2.1), DNAT'd to the first guest's port 8080


class Guest:
    """One container: its network namespace, address and cgroup (None: a bare namespace)."""

    def __init__(self, ns: str, addr: str, cgroup: Path | None, ident: str) -> None:
        self.ns = ns
        self.addr = addr
        self.cgroup = cgroup
        self.id = ident
        self.addr6 = ""

    def argv(self, *argv: str, uid: int | None = None) -> list[str]:
        """A command run in this container: in its cgroup (joined before `ip netns exec`, whose
        fresh /sys has no cgroup mount), its namespace, as `uid` if given."""
        inner = ["ip", "netns", "exec", self.ns]
        if uid is not None:
            inner += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        inner += list(argv)
        if self.cgroup is None:
            return inner
        join = f'echo $$ > "{self.cgroup}/cgroup.procs" && exec "$@"'
        return ["sh", "-c", join, "sh", *inner]

    def run(self, *argv: str, uid: int | None = None, timeout: float = 30) -> str:
        done = subprocess.run(
            self.argv(*argv, uid=uid), capture_output=True, text=True, timeout=timeout, check=False
        )
        return done.stdout.strip() or done.stderr.strip()


class GuestNet:
    """The bridge, NAT and published port in the client namespace, and the guests behind it."""

    def __init__(self, client: str) -> None:
        self.client = client
        self.tag = secrets.token_hex(3)
        self.guests: list[Guest] = []
        root = cgroup2_root()
        self.cgroot = Path(root) / f"snitch-test-{self.tag}" if root else None
        self._procs: list[subprocess.Popen[str]] = []

    def _c(self, *argv: str) -> None:
        run("ip", "netns", "exec", self.client, *argv)

    def build(self) -> None:
        self._c("ip", "link", "add", BRIDGE, "type", "bridge")
        self._c("ip", "addr", "add", f"{GATEWAY}/25", "dev", BRIDGE)
        self._c("ip", "link", "set", BRIDGE, "up")
        self._c("ip", "-6", "addr", "add", f"{GATEWAY6}/64", "dev", BRIDGE, "nodad")
        self._c("sysctl", "-qw", "net.ipv4.ip_forward=1")
        self._c("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        self._c("ip6tables", "-t", "nat", "-A", "POSTROUTING", "-s", "2001:db8:c::/64",
                "!", "-o", BRIDGE, "-j", "MASQUERADE")  # fmt: skip
        self._c("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "203.0.113.128/25",
                "!", "-o", BRIDGE, "-j", "MASQUERADE")  # fmt: skip
        self._c("iptables", "-t", "nat", "-A", "PREROUTING", "-i", "veth0", "-p", "tcp",
                "--dport", str(PUBLISHED), "-j", "DNAT", "--to-destination",
                "203.0.113.130:8080")  # fmt: skip

    def add(self, *, docker: bool = True) -> Guest:
        """A new guest: a namespace on the bridge and, for `docker`, a Docker-like cgroup."""
        n = len(self.guests)
        ns, port, addr = f"{self.client}-g{n}", f"vk{n}", f"203.0.113.{130 + n}"
        run("ip", "netns", "add", ns)
        guest = Guest(ns, addr, None, secrets.token_hex(32))
        guest.addr6 = f"2001:db8:c::{10 + n:x}"
        self.guests.append(guest)
        run("ip", "link", "add", port, "netns", self.client, "type", "veth", "peer", "name",
            "eth0", "netns", ns)  # fmt: skip
        self._c("ip", "link", "set", port, "master", BRIDGE, "up")
        for argv in (
            ("ip", "addr", "add", f"{addr}/25", "dev", "eth0"),
            ("ip", "link", "set", "eth0", "up"),
            ("ip", "link", "set", "lo", "up"),
            ("ip", "route", "add", "default", "via", GATEWAY),
            ("ip", "-6", "addr", "add", f"2001:db8:c::{10 + n:x}/64", "dev", "eth0", "nodad"),
            ("ip", "-6", "route", "add", "default", "via", GATEWAY6),
        ):
            run("ip", "netns", "exec", ns, *argv)
        if docker:
            assert self.cgroot is not None, "no cgroup v2 hierarchy mounted"
            guest.cgroup = self.cgroot / f"docker-{guest.id}.scope"
            guest.cgroup.mkdir(parents=True)
        return guest

    def serve(self, guest: Guest, port: int) -> None:
        """netserver.py listening on `port` inside `guest`, until `destroy`."""
        server = Path(__file__).resolve().parents[1] / "integration" / "netserver.py"
        proc = subprocess.Popen(
            guest.argv(sys.executable, str(server), "--tcp", str(port)),
            stdout=subprocess.PIPE,
            text=True,
        )
        self._procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"

    def destroy(self) -> None:
        for proc in self._procs:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        for guest in self.guests:
            run("ip", "netns", "del", guest.ns, check=False)
        if self.cgroot is not None and self.cgroot.exists():
            for guest in self.guests:
                if guest.cgroup is not None and guest.cgroup.exists():
                    # Its processes have ended (killed above, or exited): it empties at once.
                    wait_for(lambda g=guest: _empty(g.cgroup), 10, "the guest's cgroup to empty")
                    guest.cgroup.rmdir()
            self.cgroot.rmdir()


def _empty(cgroup: Path | None) -> bool:
    assert cgroup is not None
    try:
        return not (cgroup / "cgroup.procs").read_text().strip()
    except OSError:
        return True
