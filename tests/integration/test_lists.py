"""Block lists and destination classes on the real kernel (issue 18).

An https server in the server namespace (listserver.py, with a certificate made for the test)
serves a hosts file and a CIDR list; `snitch-lists` (the updater) runs in the client namespace
as an unprivileged user, as its systemd unit would, trusting that certificate alone
(SSL_CERT_FILE), downloads through snitchd's own filter, and leaves the parsed copies for
snitchd. Clients then resolve names with the lab's DNS server and connect.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import AS_NOBODY, HERE, PYTHON, VENV_BIN, Lab
from tests.integration.readerparams import READERS
from tests.support.lab import run, wait_for

# Each test with one queue reader and with two (issue 21): a list loaded applies to the next
# flow in every reader, as a rule change does.
pytestmark = pytest.mark.parametrize("lab", READERS, indirect=True)

NOBODY = 65534
HTTPS_PORT = 8443
HTTP_PORT = 8081  # plain http, only where a test shows it refused
BASE = f"https://192.0.2.2:{HTTPS_PORT}"
HOSTS_V1 = "# test list\n127.0.0.1 localhost\n0.0.0.0 api.example.org\n"
HOSTS_V2 = HOSTS_V1 + "0.0.0.0 cdn.example.net\n"
NETS = "# firehol style\n203.0.113.9/32\n"


@dataclass(frozen=True, slots=True)
class Web:
    """The list host: the files it serves, and its certificate (readable by the updater)."""

    root: Path
    cert: Path


@pytest.fixture
def web(lab: Lab, tmp_path: Path, nobody_dir: Path) -> Iterator[Web]:
    """An https server on 192.0.2.2:8443 in the server namespace, serving `root`, with a
    self-signed certificate for 192.0.2.2 made now (no CA: it is its own trust anchor).
    `/moved.txt` redirects to /hosts.txt over plain http, `/elsewhere.txt` over https."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "hosts.txt").write_text(HOSTS_V1)
    (root / "nets.txt").write_text(NETS)
    key, cert = tmp_path / "server.key", nobody_dir / "server.pem"
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-days", "1", "-subj", "/CN=192.0.2.2", "-addext", "subjectAltName=IP:192.0.2.2",
        "-keyout", str(key), "-out", str(cert))  # fmt: skip
    cert.chmod(0o644)
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab.server, PYTHON, str(HERE / "listserver.py"),
         "--bind", "192.0.2.2", "--port", str(HTTPS_PORT), "--directory", str(root),
         "--cert", str(cert), "--key", str(key),
         "--redirect", f"/moved.txt=http://192.0.2.2:{HTTP_PORT}/hosts.txt",
         "--redirect", f"/elsewhere.txt={BASE}/hosts.txt"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.strip() == "ready", f"the list server did not start: {line!r}"
        yield Web(root, cert)
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


def update(
    lab: Lab, lists_dir: Path, *names: str, cert: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The updater, as its unit runs it: unprivileged, with network access (the client's);
    trusting `cert` alone, the test's list host, where one is given."""
    env = lab.env if cert is None else lab.env | {"SSL_CERT_FILE": str(cert)}
    return subprocess.run(
        ["ip", "netns", "exec", lab.client, "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
         "--clear-groups", str(VENV_BIN / "snitch-lists"), "--dir", str(lists_dir), *names],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )  # fmt: skip


def shown(lab: Lab, name: str) -> dict[str, Any]:
    row: dict[str, Any] = lab.ctl_json("lists", "show", name)
    return row


def wait_loaded(lab: Lab, name: str, domains: int, networks: int = 0, timeout: float = 20) -> None:
    wait_for(
        lambda: (
            (shown(lab, name).get("domains"), shown(lab, name).get("networks"))
            == (domains, networks)
        ),
        timeout,
        f"list {name} with {domains} domains, {networks} networks",
    )


def resolve(lab: Lab, name: str) -> str:
    return lab.py("resolve", name, 80, "--timeout", "1")


def test_list_blocks_listed_names_and_networks_and_follows_updates(
    lab: Lab, web: Web, nobody_dir: Path
) -> None:
    lab.start_daemon(lists_dir=str(nobody_dir))
    for rule in ("allow port=53 proto=udp", f"allow port={HTTPS_PORT} proto=tcp", "allow port=80"):
        lab.add_rule(rule)
    assert lab.ctl("lists", "add", "ads", f"{BASE}/hosts.txt").returncode == 0
    nets = lab.ctl("lists", "add", "bad-nets", f"{BASE}/nets.txt", "--format", "ips")
    assert nets.returncode == 0
    lab.add_rule("deny to=list:ads")
    lab.add_rule("deny to=list:bad-nets")
    # Not downloaded yet: a list snitchd does not hold matches nothing.
    assert shown(lab, "ads")["format"] == "hosts" and "domains" not in shown(lab, "ads")
    assert resolve(lab, "api.example.org") == "connected"

    done = update(lab, nobody_dir, cert=web.cert)
    assert done.returncode == 0, done.stderr
    wait_loaded(lab, "ads", 1)
    wait_loaded(lab, "bad-nets", 0, 1)
    assert resolve(lab, "api.example.org") == "timeout"  # listed by name
    assert lab.py("tcp", "203.0.113.9", 80, "--timeout", "1") == "timeout"  # listed network
    assert resolve(lab, "www.example.org") == "connected"  # not listed: cdn.example.net, .8
    rows = [r for r in lab.log_rows() if r["dport"] == 80]
    assert rows[-3]["host"] == "api.example.org" and rows[-3]["action"] == "deny"  # by name
    assert rows[-2]["dst"] == "203.0.113.9" and rows[-2]["action"] == "deny"
    assert rows[-1]["action"] == "allow"
    # And for an ordinary user's program (with two queue readers, no name matched a list).
    as_nobody = (*AS_NOBODY, PYTHON, str(HERE / "netclient.py"), "resolve", "api.example.org")
    assert lab.client_run(*as_nobody, "80", "--timeout", "1") == "timeout"

    # An update that adds a name starts blocking it, and cuts its open connection (a held
    # connection to www.example.org, i.e. cdn.example.net, exchanging an echo every 0.2 s).
    held = lab.spawn_client("resolve", "www.example.org", "80", "--hold", "8", "--timeout", "1")
    try:
        assert held.stdout is not None and held.stdout.readline().strip() == "connected"
        (web.root / "hosts.txt").write_text(HOSTS_V2)
        done = update(lab, nobody_dir, "ads", cert=web.cert)
        assert done.returncode == 0, done.stderr
        wait_loaded(lab, "ads", 2)
        outcome = held.stdout.readline().strip()  # its socket reset: ECONNABORTED
        assert outcome in ("cut", "timeout") or outcome.startswith("error:"), outcome
    finally:
        held.kill()
        held.wait()
        if held.stdout is not None:
            held.stdout.close()
    cut = [r for r in lab.log_rows() if "(list ads updated)" in r["reason"]]
    assert cut and cut[-1]["dst"] == "203.0.113.8" and cut[-1]["action"] == "deny"
    assert resolve(lab, "www.example.org") == "timeout"
    assert shown(lab, "ads")["ok"] is True

    # A broken update (an error page where the list was) keeps the last good copy, and alerts.
    lab.expect_log(r"alert list-failed: list ads: cannot use https://192\.0\.2\.2:8443/hosts\.txt")
    (web.root / "hosts.txt").write_text("<html>\n<body>\nportal\n</body>\n</html>\n")
    done = update(lab, nobody_dir, "ads", cert=web.cert)
    assert done.returncode == 1 and "no entry in it" in done.stderr
    wait_for(lambda: "alert list-failed" in lab.log_text(), 10, "the list-failed alert")
    row = shown(lab, "ads")
    assert row["ok"] is False and "no entry in it" in row["error"]
    assert row["domains"] == 2
    assert resolve(lab, "api.example.org") == "timeout"
    assert resolve(lab, "www.example.org") == "timeout"
    text = lab.ctl("lists", "show", "ads").stdout
    assert "FAILED" in text and "2 domains" in text

    # Removed: the rule naming it matches nothing.
    assert lab.ctl("lists", "remove", "ads").returncode == 0
    assert resolve(lab, "api.example.org") == "connected"


def test_unchanged_list_is_not_downloaded_again(lab: Lab, web: Web, nobody_dir: Path) -> None:
    """The second run sends If-None-Match / If-Modified-Since; http.server answers 304."""
    lab.start_daemon(lists_dir=str(nobody_dir))
    lab.add_rule(f"allow port={HTTPS_PORT} proto=tcp")
    lab.ctl("lists", "add", "bad-nets", f"{BASE}/nets.txt", "--format", "ips")
    assert update(lab, nobody_dir, cert=web.cert).returncode == 0
    first = (nobody_dir / "bad-nets.list").stat().st_mtime_ns
    done = update(lab, nobody_dir, cert=web.cert)
    assert done.returncode == 0 and "not modified" in done.stderr
    assert (nobody_dir / "bad-nets.list").stat().st_mtime_ns == first


def test_lists_need_an_admin_and_snitchd_names_no_updater_without_systemd(running: Lab) -> None:
    done = running.ctl("lists", "add", "ads", "https://example.org/h", uid=NOBODY)
    assert done.returncode == 4
    assert running.ctl("lists", "add", "Bad!", "https://example.org/h").returncode == 1
    assert running.ctl("lists", "add", "ads", "ftp://example.org/h").returncode == 1
    assert running.ctl("lists", "add", "ads", "https://example.org/h").returncode == 0
    done = running.ctl("lists", "update", "ads")
    if not os.path.isdir("/run/systemd/system"):
        assert done.returncode == 1 and "systemd is not running here" in done.stderr
    assert running.ctl("lists", "update", "nope").returncode == 1


def test_a_plain_http_list_is_refused_when_added(running: Lab) -> None:
    """Over plain http anyone on the path can rewrite a list: drop the entries that block their
    own names, or add ones that block what the user needs. `lists add` refuses such a source and
    says what to use instead."""
    url = f"http://192.0.2.2:{HTTP_PORT}/hosts.txt"
    done = running.ctl("lists", "add", "ads", url)
    assert done.returncode == 1
    assert url in done.stderr and "https://" in done.stderr and "local file" in done.stderr
    assert running.ctl_json("lists") == []


def test_a_redirect_from_https_to_plain_http_is_refused(
    lab: Lab, web: Web, nobody_dir: Path, tmp_path: Path
) -> None:
    """A list host that redirects to http:// (moved, misconfigured, or its name taken over)
    would hand the list to anyone on the path again: the updater does not follow it, says why,
    and snitchd alerts. A redirect that stays on https is followed, as before."""
    plain_log = tmp_path / "plain.log"
    with open(plain_log, "w") as log:
        plain = subprocess.Popen(
            ["ip", "netns", "exec", lab.server, PYTHON, "-m", "http.server", str(HTTP_PORT),
             "--bind", "192.0.2.2", "--directory", str(web.root)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )  # fmt: skip
    try:
        probe = ["ip", "netns", "exec", lab.server, "curl", "-s", "-o", "/dev/null",
                 f"http://192.0.2.2:{HTTP_PORT}/"]  # fmt: skip
        wait_for(lambda: run(*probe, check=False).returncode == 0, 10, "the plain http server")
        lab.start_daemon(lists_dir=str(nobody_dir))
        # The redirect's target is reachable: only the updater stands in the way.
        lab.add_rule(f"allow port={HTTPS_PORT} proto=tcp")
        lab.add_rule(f"allow port={HTTP_PORT} proto=tcp")
        assert lab.ctl("lists", "add", "moved", f"{BASE}/moved.txt").returncode == 0
        assert lab.ctl("lists", "add", "elsewhere", f"{BASE}/elsewhere.txt").returncode == 0
        lab.expect_log(r"alert list-failed: list moved: .*redirect to http://192\.0\.2\.2:8081/")

        done = update(lab, nobody_dir, cert=web.cert)
        assert done.returncode == 1, done.stderr
        target = f"http://192.0.2.2:{HTTP_PORT}/hosts.txt"
        assert f"redirect to {target}" in done.stderr and "https://" in done.stderr
        wait_loaded(lab, "elsewhere", 1)
        wait_for(lambda: "alert list-failed: list moved" in lab.log_text(), 10, "the alert")
        row = shown(lab, "moved")
        assert row["ok"] is False and f"redirect to {target}" in row["error"]
        assert "domains" not in row
        assert "GET /hosts.txt" not in plain_log.read_text()  # not even asked
    finally:
        plain.kill()
        plain.wait()


@pytest.mark.slow
def test_a_million_domains_load(lab: Lab, nobody_dir: Path) -> None:
    """1M names from a local file: parsed by the updater, loaded by snitchd off the packet
    loop. The time it took is printed (bench/bench_lists.py has the lookup figures)."""
    big = nobody_dir / "big.txt"
    with open(big, "w") as f:
        for i in range(1_000_000):
            f.write(f"host{i}.d{i % 5000}.example.org\n")
    big.chmod(0o644)
    lab.start_daemon(lists_dir=str(nobody_dir))
    lab.add_rule("deny to=list:big")
    lab.ctl("lists", "add", "big", str(big), "--format", "domains")
    start = time.monotonic()
    done = update(lab, nobody_dir)
    assert done.returncode == 0, done.stderr
    parsed = time.monotonic()
    wait_loaded(lab, "big", 1_000_000, timeout=120)
    print(
        f"\n1M domains: updater {parsed - start:.1f} s, snitchd load "
        f"{time.monotonic() - parsed:.1f} s, {shown(lab, 'big')['bytes'] / 1e6:.1f} MB of tables"
    )


def test_lan_allows_the_connected_subnets_and_follows_them(lab: Lab) -> None:
    lab.start_daemon()
    lab.add_rule("allow to=lan")
    assert lab.py("tcp", "192.0.2.2", 80, "--timeout", "1") == "connected"  # veth0's subnet
    assert lab.py("tcp", "198.51.100.2", 80, "--timeout", "1") == "connected"  # veth1's
    assert lab.py("tcp", "203.0.113.7", 80, "--timeout", "1") == "timeout"  # routed, not lan

    def verdict(dst: str) -> str:
        return str(lab.ctl_json("explain", "--dst", dst, "--port", "80")["verdict"])

    assert verdict("203.0.113.140") != "allow"
    lab.ns(lab.client, "ip", "addr", "add", "203.0.113.130/25", "dev", "veth1")
    wait_for(lambda: verdict("203.0.113.140") == "allow", 10, "the new subnet to be lan")
    lab.ns(lab.client, "ip", "addr", "del", "203.0.113.130/25", "dev", "veth1")
    wait_for(lambda: verdict("203.0.113.140") != "allow", 10, "the subnet to leave lan")
