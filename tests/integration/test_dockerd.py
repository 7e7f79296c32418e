"""A real Docker container's flows (issue 16), where dockerd is installed; skipped elsewhere.

The test starts its own dockerd (which starts its own containerd) inside the lab's client
namespace (`nsenter --net`: `ip netns exec` remounts /sys and hides the cgroup tree), with its
data root, exec root, pidfile and API socket in a temp dir, and stops it by its pid. The image
is imported from a tar of a busybox-static root filesystem: no registry. docker0 is on
documentation addresses (`--bip`); dockerd adds the NAT and the published port's DNAT in the
lab's namespace. snitchd asks the test's Docker API for the name (`docker_socket`).
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import HERE, PYTHON, Lab
from tests.support.lab import run

NAME = "web-1"
BRIDGE = "203.0.113.129/26"
SERVER = "203.0.113.7"
PUBLISHED = 8080
DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"  # the docker.io package's client (another may come first on PATH)
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
IMAGE = "snitchlab/busybox:1"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(DOCKERD).is_file(), reason="dockerd is not installed"),
    pytest.mark.skipif(not Path(DOCKER).is_file(), reason="docker.io's client is not installed"),
    pytest.mark.skipif(
        not Path(BUSYBOX).is_file(), reason="busybox-static (the container's rootfs) is missing"
    ),
]


class Docker:
    """A dockerd of the test's own, in the lab's client namespace."""

    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab = lab
        self.tmp = tmp
        self.socket = tmp / "docker.sock"
        self.pidfile = tmp / "dockerd.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.tmp / "dockerd.log", "wb")  # noqa: SIM115 - dockerd's, closed by it
        self.proc = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{self.lab.client}",
                DOCKERD,
                "--data-root",
                str(self.tmp / "data"),
                "--exec-root",
                str(self.tmp / "exec"),
                "--pidfile",
                str(self.pidfile),
                "-H",
                f"unix://{self.socket}",
                "--bip",
                BRIDGE,
                # Sandboxes without CAP_SYS_RESOURCE cannot raise rlimits: keep the usual ones.
                "--default-ulimit",
                "nofile=1024:1024",
                "--default-ulimit",
                "nproc=4096:4096",
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 60
        while self("info", check=False) is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError((self.tmp / "dockerd.log").read_text()[-2000:])
            time.sleep(0.2)
        self.import_image()

    def __call__(self, *argv: str, check: bool = True, stdin: bytes | None = None) -> str | None:
        done = subprocess.run(
            [DOCKER, "-H", f"unix://{self.socket}", *argv],
            capture_output=True, input=stdin, timeout=60, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            if check:
                raise AssertionError(f"docker {' '.join(argv)}: {done.stderr.decode()}")
            return None
        return done.stdout.decode()

    def import_image(self) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for d in ("bin", "etc", "proc", "sys", "dev", "tmp"):
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            tar.add(BUSYBOX, "bin/busybox")
            for applet in ("sh", "nc", "sleep", "cat", "true"):
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)
        self("import", "-", IMAGE, stdin=buf.getvalue())

    def connect(self, name: str, port: int) -> str:
        """A container's one connect to the server: "connected" or "failed" (timed out)."""
        out = self(
            "run", "--rm", "--name", name, IMAGE,
            "sh", "-c", f"nc -w 3 {SERVER} {port} -e /bin/true && echo connected || echo failed",
        )  # fmt: skip
        assert out is not None
        return out.strip().splitlines()[-1]

    def stop(self) -> None:
        if self.proc is None:
            return
        self("rm", "--force", *(self("ps", "-aq", check=False) or "").split(), check=False)
        self.proc.terminate()  # dockerd itself (nsenter execs it): its containerd goes with it
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        # Storage mounts (overlay2, the netns and shm mounts) must go before the temp dir does.
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        for line in reversed(mounts):
            point = line.split()[1]
            if point.startswith(str(self.tmp)):
                run("umount", "-l", point, check=False)


@pytest.fixture
def docker(lab: Lab) -> Iterator[Docker]:
    tmp = Path(tempfile.mkdtemp(prefix="snitch-dk-", dir="/tmp"))  # unix socket paths are short
    dk = Docker(lab, tmp)
    try:
        dk.start()
        yield dk
    finally:
        dk.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def container_rows(lab: Lab, name: str) -> list[dict[str, Any]]:
    return [r for r in lab.log_rows() if r.get("container") == name]


def test_a_docker_container_is_held_named_by_the_api_and_ruled_by_name(
    lab: Lab, docker: Docker
) -> None:
    """dockerd's cgroupfs cgroup (`/docker/<id>`) and its API's name: the flow is held, logged as
    "container web-1 (docker)", allowed by `container=web-1`; another container is denied; a
    published port answers without reaching the queue."""
    lab.start_daemon(docker_socket=str(docker.socket))
    assert docker.connect(NAME, 80) == "failed"
    row = container_rows(lab, NAME)[0]
    assert (row["action"], row.get("runtime")) == ("deny", "docker"), row
    assert re.search(rf"\[container {NAME} \(docker\), process \S+", row["reason"]), row
    rule = lab.add_rule(f"allow container={NAME} runtime=docker port=80")
    assert docker.connect(NAME, 80) == "connected"
    assert [r.get("rule_id") for r in container_rows(lab, NAME) if r["action"] == "allow"] == [rule]
    assert docker.connect("db-1", 80) == "failed"
    # db-1 gets the address web-1 had (--rm): before, it was named to nobody for a second (the
    # address still pointed at web-1's dead namespace, which our sockets keep).
    assert [r["action"] for r in container_rows(lab, "db-1")] == ["deny"], lab.log_rows()
    queued = lab.forward_queued()
    docker(
        "run", "-d", "--name", "srv", "-p", f"{PUBLISHED}:{PUBLISHED}", IMAGE,
        "nc", "-ll", "-p", str(PUBLISHED), "-e", "sh", "-c", "echo hello; cat",
    )  # fmt: skip
    inbound: list[str] = []
    for _ in range(20):  # nc listens a moment after `docker run -d` returns
        inbound = run(
            "ip", "netns", "exec", lab.server, PYTHON, str(HERE / "netclient.py"), "tcp",
            "192.0.2.1", str(PUBLISHED), "--hold", "1", check=False,
        ).stdout.split()  # fmt: skip
        if inbound != ["refused"]:
            break
        time.sleep(0.2)
    assert inbound == ["connected", "held"]
    assert lab.forward_queued() == queued
