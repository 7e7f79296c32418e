"""The bench's lab: a client and a server network namespace over one veth pair, a private
system bus, and the processes started in them, all removed by `close()` even after a failure.
Built from the tests' own lab pieces (`tests.support.lab`).

    client netns (load client, firewall)       server netns (connload server)
      veth0 192.0.2.1/24                  <->    veth0 192.0.2.2/24

The load client also runs in a cgroup of the lab's own (`hooked`), so that a firewall
attributing flows with cgroup BPF hooks (snitchd's default) attaches them there: nothing
outside the lab is hooked. `ip netns exec` hides the cgroup mount, so a firewall in the client
namespace reaches the cgroup as `bpf_cgroup_path` (through kthreadd's root, the machine's).

Documentation addresses only; nothing leaves the machine. Queue rules are only ever installed
inside the client namespace (by the firewall under test, which runs there). Only processes this
module started are ended, by their Popen handle.
"""

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from snitchd.procs.bpf import cgroup2_root
from tests.support.lab import Bus, add_veth, run, stop_process

CLIENT_ADDR = "192.0.2.1"
SERVER_ADDR = "192.0.2.2"
PORT = 9000

# Client namespace: enough ephemeral ports, and conntrack entries of finished flows that go
# quickly (a closed TCP entry lives 10 s and a UDP one 30 s by default: at ~40k flows/s the
# table, 262144 entries here, would fill and the kernel would drop new flows).
CLIENT_SYSCTLS = {
    "net.ipv4.ip_local_port_range": "1024 65535",
    "net.ipv4.tcp_tw_reuse": "1",
    "net.netfilter.nf_conntrack_tcp_timeout_close": "1",
    "net.netfilter.nf_conntrack_tcp_timeout_time_wait": "1",
    "net.netfilter.nf_conntrack_udp_timeout": "1",
    "net.netfilter.nf_conntrack_udp_timeout_stream": "1",
}
SERVER_SYSCTLS = {"net.core.somaxconn": "65535"}


class NetLab:
    def __init__(self, linger=1):
        """`linger`: seconds conntrack keeps a finished flow's entry (TCP TIME_WAIT and close,
        UDP); 1 keeps the table small, the kernel's own are 120, 10 and 30."""
        self.linger = linger
        tag = secrets.token_hex(3)
        self.client = f"snb-{tag}-c"
        self.server = f"snb-{tag}-s"
        self.tmp = Path(tempfile.mkdtemp(prefix="snitch-bench-"))
        os.chmod(self.tmp, 0o755)
        self.bus_address = ""
        self._bus: Bus | None = None
        self._made: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self.sysctl_missing: list[str] = []
        self.server_pid = 0
        root = cgroup2_root()
        self.cgroup = Path(root) / f"snitch-bench-{tag}" if root else None

    @property
    def bpf_cgroup_path(self):
        """The lab's cgroup as a firewall in the client namespace reaches it; "" if none."""
        return f"/proc/2/root{self.cgroup}" if self.cgroup is not None else ""

    # -- set-up -------------------------------------------------------------------------------
    def build(self, connload):
        c, s = self.client, self.server
        for ns in (c, s):
            run("ip", "netns", "add", ns)
            self._made.append(ns)
        add_veth(c, s, "veth0", CLIENT_ADDR, SERVER_ADDR)
        if self.cgroup is not None:
            self.cgroup.mkdir()
        for ns in (c, s):
            self.ns(ns, "ip", "link", "set", "lo", "up")
        self.set_sysctls()
        for key, value in SERVER_SYSCTLS.items():
            self.ns(s, "sysctl", "-q", "-w", f"{key}={value}")
        server = self.popen(s, [str(connload), "server", SERVER_ADDR, str(PORT), "2"])
        self.server_pid = server.pid
        line = server.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"load server did not start: {line!r}")
        self._bus = Bus()
        self.bus_address = self._bus.address

    def set_sysctls(self):
        """Conntrack's sysctls exist once nf_conntrack is loaded (the first firewall loads it):
        call again after a firewall started if some were missing."""
        self.sysctl_missing = []
        for key, default in CLIENT_SYSCTLS.items():
            value = str(self.linger) if "conntrack" in key else default
            done = self.ns(self.client, "sysctl", "-q", "-w", f"{key}={value}", check=False)
            if done.returncode != 0:
                self.sysctl_missing.append(key)

    # -- acting -------------------------------------------------------------------------------
    def ns(self, ns, *argv, check=True, timeout=60):
        return run("ip", "netns", "exec", ns, *argv, check=check, timeout=timeout)

    def hooked(self, ns, *argv, check=True, timeout=60):
        """`ns` with the command in the lab's cgroup from its first instruction (it joins
        before `ip netns exec`, which hides the cgroup mount)."""
        if self.cgroup is None:
            return self.ns(ns, *argv, check=check, timeout=timeout)
        join = f'echo $$ > {self.cgroup}/cgroup.procs && exec "$@"'
        return run("sh", "-c", join, "sh", "ip", "netns", "exec", ns, *argv, check=check,
                   timeout=timeout)  # fmt: skip

    def popen(self, ns, argv, env=None, stderr=subprocess.DEVNULL):
        """Start a long-lived process in a namespace. `ip netns exec` execs the command, so the
        Popen pid is the process's own pid (its /proc/<pid>/stat is the daemon's)."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
        self._procs.append(proc)
        return proc

    @property
    def env(self):
        return {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.bus_address}

    # -- tear-down ----------------------------------------------------------------------------
    def close(self):
        errors = []
        for proc in reversed(self._procs):
            try:
                stop_process(proc, 5)
                if proc.stdout is not None:
                    proc.stdout.close()
            except Exception as exc:
                errors.append(f"pid {proc.pid}: {exc}")
        if self._bus is not None:
            self._bus.stop()
        for ns in self._made:
            done = run("ip", "netns", "del", ns, check=False)
            if done.returncode != 0:
                errors.append(f"netns {ns}: {done.stderr.strip()}")
        if self.cgroup is not None and self.cgroup.exists():
            try:
                self.cgroup.rmdir()  # its processes (the load clients) have all exited
            except OSError as exc:
                errors.append(f"cgroup {self.cgroup}: {exc}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        if errors:
            raise RuntimeError("lab clean-up incomplete: " + "; ".join(errors))
