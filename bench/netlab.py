"""The bench's lab: a client and a server network namespace over one veth pair, a private
system bus, and the processes started in them, all removed by `close()` even after a failure.

    client netns (load client, firewall)       server netns (connload server)
      veth0 192.0.2.1/24                  <->    veth0 192.0.2.2/24

Documentation addresses only; nothing leaves the machine. Queue rules are only ever installed
inside the client namespace (by the firewall under test, which runs there). Only processes this
module started are ended, by their Popen handle.
"""

import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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


def run(*argv, check=True, timeout=60, **kw):
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout, **kw)


def wait_for(predicate, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def stop_process(proc, timeout=15.0):
    """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class NetLab:
    def __init__(self):
        tag = secrets.token_hex(3)
        self.client = f"snb-{tag}-c"
        self.server = f"snb-{tag}-s"
        self.tmp = Path(tempfile.mkdtemp(prefix="snitch-bench-"))
        os.chmod(self.tmp, 0o755)
        self.bus_address = ""
        self._made: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self.sysctl_missing: list[str] = []
        self.server_pid = 0

    # -- set-up -------------------------------------------------------------------------------
    def build(self, connload):
        c, s = self.client, self.server
        for ns in (c, s):
            run("ip", "netns", "add", ns)
            self._made.append(ns)
        veth = ("veth0", "netns", c, "type", "veth", "peer", "name", "veth0", "netns", s)
        run("ip", "link", "add", *veth)
        for ns, addr in ((c, CLIENT_ADDR), (s, SERVER_ADDR)):
            self.ns(ns, "ip", "addr", "add", f"{addr}/24", "dev", "veth0")
            self.ns(ns, "ip", "link", "set", "veth0", "up")
            self.ns(ns, "ip", "link", "set", "lo", "up")
        self.set_sysctls()
        for key, value in SERVER_SYSCTLS.items():
            self.ns(s, "sysctl", "-q", "-w", f"{key}={value}")
        server = self.popen(s, [str(connload), "server", SERVER_ADDR, str(PORT), "2"])
        self.server_pid = server.pid
        line = server.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"load server did not start: {line!r}")
        self._start_bus()

    def set_sysctls(self):
        """Conntrack's sysctls exist once nf_conntrack is loaded (the first firewall loads it):
        call again after a firewall started if some were missing."""
        self.sysctl_missing = []
        for key, value in CLIENT_SYSCTLS.items():
            done = self.ns(self.client, "sysctl", "-q", "-w", f"{key}={value}", check=False)
            if done.returncode != 0:
                self.sysctl_missing.append(key)

    def _start_bus(self):
        """A private "system" bus with only the project's policy file (as tests/integration)."""
        bus = self.tmp / "bus"
        policy = bus / "policy"
        policy.mkdir(parents=True)
        shutil.copy(ROOT / "systemd" / "org.snitch.Firewall1.conf", policy)
        text = Path("/usr/share/dbus-1/system.conf").read_text()
        for tag in ("user", "pidfile", "listen", "includedir"):
            text = re.sub(rf"\s*<{tag}>.*?</{tag}>", "", text, flags=re.S)
        text = re.sub(r"\s*<fork\s*/>", "", text)
        text = re.sub(r"\s*<include [^>]*>.*?</include>", "", text, flags=re.S)
        sock = bus / "system_bus_socket"
        extra = f"<listen>unix:path={sock}</listen>\n<includedir>{policy}</includedir>\n"
        conf = bus / "system.conf"
        conf.write_text(text.replace("</busconfig>", extra + "</busconfig>"))
        self._procs.append(
            subprocess.Popen(
                ["dbus-daemon", f"--config-file={conf}", "--nofork", "--nosyslog"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for(sock.exists, 10, "the private bus socket")
        self.bus_address = f"unix:path={sock}"

    # -- acting -------------------------------------------------------------------------------
    def ns(self, ns, *argv, check=True, timeout=60):
        return run("ip", "netns", "exec", ns, *argv, check=check, timeout=timeout)

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
        for ns in self._made:
            done = run("ip", "netns", "del", ns, check=False)
            if done.returncode != 0:
                errors.append(f"netns {ns}: {done.stderr.strip()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        if errors:
            raise RuntimeError("lab clean-up incomplete: " + "; ".join(errors))
