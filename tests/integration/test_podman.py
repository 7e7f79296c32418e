"""A real Podman container's flows (issue 16), where Podman is installed; skipped elsewhere.

Podman runs rootful inside the lab's client namespace (`nsenter --net`, not `ip netns exec`:
that remounts /sys, which hides the cgroup tree the runtime needs), with its storage, run and
network-config directories in the test's temp dir, so nothing of the machine's own Podman
(or its network namespace) is touched. The image is a root filesystem of busybox-static
(`--rootfs`): no registry. Its network is a bridge of its own on documentation addresses;
netavark adds the NAT and the published port's DNAT in the lab's namespace.

What the fake runtime of test_containers.py could not show: the cgroup Podman's cgroupfs
manager really makes (`/libpod_parent/libpod-<id>`), that no API socket runs (Podman has no
daemon) so the name comes from conmon, and that netavark's bridge and DNAT meet snitch's chains.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import HERE, PYTHON, Lab
from tests.support.lab import run

NAME = "web-1"
SUBNET = "203.0.113.128/26"
ADDR = "203.0.113.130"
OTHER_ADDR = "203.0.113.131"
SERVER = "203.0.113.7"
PUBLISHED = 8080
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
# The host's runtime: crun refuses a hybrid cgroup host whose v2 tree has a controller
# ("cgroups in hybrid mode not supported"); runc does not. Either works on a pure v2 host.
RUNTIME = shutil.which("runc")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed"),
    pytest.mark.skipif(
        not Path(BUSYBOX).is_file(), reason="busybox-static (the container's rootfs) is missing"
    ),
]


class Podman:
    """`podman` for the lab: rootful, in the client namespace, every directory its own."""

    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab = lab
        self.tmp = tmp
        self.rootfs = tmp / "rootfs"
        self.base = [
            "nsenter", f"--net=/run/netns/{lab.client}", "podman",
            "--root", str(tmp / "root"), "--runroot", str(tmp / "run"),
            "--tmpdir", str(tmp / "tmp"), "--network-config-dir", str(tmp / "net"),
            "--cgroup-manager", "cgroupfs", "--events-backend", "file",
        ]  # fmt: skip
        if RUNTIME is not None:
            self.base += ["--runtime", RUNTIME]

    def __call__(self, *argv: str, check: bool = True, timeout: float = 60) -> str:
        done = subprocess.run(
            [*self.base, *argv], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(argv)}: {done.returncode}: {done.stderr}")
        return done.stdout

    def build(self) -> None:
        (self.rootfs / "bin").mkdir(parents=True)
        for d in ("etc", "proc", "sys", "dev", "tmp"):
            (self.rootfs / d).mkdir()
        shutil.copy(BUSYBOX, self.rootfs / "bin" / "busybox")
        for applet in ("sh", "nc", "sleep", "cat", "true"):
            (self.rootfs / "bin" / applet).symlink_to("busybox")
        self("network", "create", "--subnet", SUBNET, "snitchlab")

    def run_args(self, name: str, addr: str, *extra: str) -> list[str]:
        # The sandbox this was verified in has no CAP_SYS_RESOURCE: Podman's default rlimits
        # (raised above the caller's) would fail, so they are set at or below the usual ones.
        return [
            "run", "--name", name, "--network", "snitchlab", "--ip", addr,
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
            *extra, "--rootfs", str(self.rootfs),
        ]  # fmt: skip

    def connect(self, name: str, addr: str, port: int) -> str:
        """A container's one connect to the server: "connected" or "failed" (timed out)."""
        out = self(
            *self.run_args(name, addr, "--rm"),
            "sh", "-c", f"nc -w 3 {SERVER} {port} -e /bin/true && echo connected || echo failed",
        )  # fmt: skip
        return out.strip().splitlines()[-1]

    def destroy(self) -> None:
        self("rm", "--all", "--force", "--time", "0", check=False)
        self("network", "rm", "--force", "snitchlab", check=False)
        # Podman's overlay mounts (storage) must go before the temp dir does.
        run("umount", "-R", str(self.tmp / "root" / "overlay"), check=False)


@pytest.fixture
def podman(lab: Lab) -> Iterator[Podman]:
    # Podman refuses a run root longer than 50 characters: pytest's tmp_path is longer.
    tmp = Path(tempfile.mkdtemp(prefix="snitch-pm-", dir="/tmp"))
    pm = Podman(lab, tmp)
    try:
        pm.build()
        yield pm
    finally:
        pm.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


def rows_from(lab: Lab, addr: str) -> list[dict[str, Any]]:
    return [r for r in lab.log_rows() if r.get("src") == addr]


def start(lab: Lab) -> None:
    # No API socket: Podman has no daemon unless podman.socket runs; the name comes from conmon.
    lab.start_daemon(podman_socket="", docker_socket="")


def test_a_podman_container_is_held_named_and_ruled_by_name(lab: Lab, podman: Podman) -> None:
    """A rootful Podman container's new flow is held (denied by default, logged as
    "container web-1 (podman)"), allowed by `container=web-1`; another container is not."""
    start(lab)
    assert podman.connect(NAME, ADDR, 80) == "failed"
    assert lab.forward_queued() >= 1
    row = rows_from(lab, ADDR)[0]
    assert row["action"] == "deny", row
    assert (row.get("container"), row.get("runtime")) == (NAME, "podman"), row
    assert re.search(rf"\[container {NAME} \(podman\), process \S+", row["reason"]), row
    rule = lab.add_rule(f"allow container={NAME} runtime=podman port=80")
    assert podman.connect(NAME, ADDR, 80) == "connected"
    allowed = [r for r in rows_from(lab, ADDR) if r["action"] == "allow"]
    assert [r.get("rule_id") for r in allowed] == [rule]
    assert podman.connect("db-1", OTHER_ADDR, 80) == "failed"
    other = rows_from(lab, OTHER_ADDR)[0]
    assert (other["action"], other.get("container")) == ("deny", "db-1"), other


def test_a_podman_published_port_answers_and_replies_are_not_queued(
    lab: Lab, podman: Podman
) -> None:
    """netavark's DNAT into the container still answers from outside with snitch running, and
    neither it nor an allowed flow's replies reach the queue."""
    start(lab)
    podman(
        *podman.run_args(NAME, ADDR, "-d", "-p", f"{PUBLISHED}:{PUBLISHED}"),
        "nc", "-ll", "-p", str(PUBLISHED), "-e", "sh", "-c", "echo hello; cat",
    )  # fmt: skip
    inbound = run(
        "ip", "netns", "exec", lab.server, PYTHON, str(HERE / "netclient.py"), "tcp",
        "192.0.2.1", str(PUBLISHED), "--hold", "1", check=False,
    ).stdout.split()  # fmt: skip
    assert inbound == ["connected", "held"]
    assert lab.forward_queued() == 0
    lab.add_rule("allow container=web-* runtime=podman")
    before = lab.forward_queued()
    out = podman(
        *podman.run_args("web-2", "203.0.113.132", "--rm"),
        "sh", "-c", f"echo hello | nc -w 2 {SERVER} 9000; echo done",
    )  # fmt: skip
    assert out.strip().splitlines()[-1] == "done"
    assert lab.forward_queued() - before == 1  # the SYN only: not the data, not the replies
    assert rows_from(lab, "203.0.113.132")[0]["action"] == "allow"
