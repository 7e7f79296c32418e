"""Issue 14, who connected for sure: an identity malware cannot borrow.

Each test is an attack an ordinary user could make (run as uid 65534 where it matters) or a rule
that names more than the app, against the real daemon in the lab. With the default action deny,
"not matched by the allow rule" shows as a connect that times out, and the log says why.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.integration.conftest import Lab, curl_exe
from tests.integration.readerparams import READERS

# Each test with one queue reader and with two (issue 21).
pytestmark = [pytest.mark.root, pytest.mark.parametrize("lab", READERS, indirect=True)]

AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
URL = "http://192.0.2.2/"
SYSTEM_PYTHON = os.path.realpath("/usr/bin/python3")

# Connects to 192.0.2.2:80 and says what happened; the same code runs as a script and inline.
CONNECT_PY = textwrap.dedent(
    """\
    import socket
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("192.0.2.2", 80))
        print("connected")
    except OSError as exc:
        print("timeout" if isinstance(exc, TimeoutError) else f"error:{exc}")
    """
)

CLIENT_C = r"""
#include <arpa/inet.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/time.h>
int main(void) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(80)};
    inet_pton(AF_INET, "192.0.2.2", &a.sin_addr);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {.tv_sec = 2};
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    puts(connect(s, (struct sockaddr *)&a, sizeof a) == 0 ? "connected" : "timeout");
    puts("VARIANT");
    return 0;
}
"""


def compile_client(source_dir: Path, name: str, variant: str) -> Path:
    """The C client, its last line `variant` (same length, so the same size on disk)."""
    src = source_dir / f"{name}.c"
    src.write_text(CLIENT_C.replace("VARIANT", variant))
    out = source_dir / name
    subprocess.run(["gcc", "-O0", "-o", str(out), str(src)], check=True, timeout=60)
    return out


def rows_of(lab: Lab, exe: str) -> list[dict[str, object]]:
    return [r for r in lab.log_rows() if r["exe"] == exe]


def test_bind_mounted_impostor_is_unverified_and_not_allowed_by_the_curl_rule(
    lab: Lab,
) -> None:
    """In its own user and mount namespace, uid 65534 bind-mounts bash over /usr/bin/curl and
    connects as "/usr/bin/curl". No file at that path here is the one it runs: it is
    unverified, the curl rule does not cover it (default deny), and the log and an alert say
    so. Before issue 14 the other namespace's path was trusted and the flow was allowed."""
    probe = subprocess.run(
        [*AS_NOBODY, "unshare", "-Urm", "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:  # a chrooted caller may not make a user namespace (EPERM)
        pytest.skip(f"no user namespace for uid 65534 here: {probe.stderr.strip()}")
    lab.start_daemon()
    lab.expect_log(r"alert unverified-exe: /usr/bin/curl")
    curl = curl_exe()
    lab.add_rule(f"allow app={curl} to=192.0.2.2 port=80")
    assert lab.curl(URL) == "connected"  # the real curl is allowed
    script = (
        f"mount --bind /usr/bin/bash {curl} && "
        f"exec timeout 5 {curl} -c 'exec 3<>/dev/tcp/192.0.2.2/80 && echo connected'"
    )
    seen = lab.client_run(*AS_NOBODY, "unshare", "-Urm", "sh", "-c", script, timeout=60)
    assert "connected" not in seen
    fake = [r for r in rows_of(lab, curl) if "unverified" in str(r["reason"])]
    assert fake, lab.log_rows()
    assert {r["action"] for r in fake} == {"deny"}
    assert all(r.get("rule_id") is None for r in fake)
    assert "alert unverified-exe" in lab.log_text()


def test_in_place_edit_of_a_pinned_user_owned_executable_breaks_the_pin(
    lab: Lab, nobody_dir: Path
) -> None:
    """uid 65534 owns a client pinned by its sha256, rewrites it in place with other code of the
    same size and puts its mtime back: the digest cache must not answer with the old digest
    (it is keyed by ctime too, which nobody can set back), so the pin no longer matches."""
    lab.start_daemon()
    lab.expect_log(r"alert exe-changed: ")
    good = compile_client(nobody_dir, "client", "good")
    evil = compile_client(nobody_dir, "evil", "evil").read_bytes()
    assert len(evil) == good.stat().st_size
    os.chown(good, 65534, 65534)
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    lab.add_rule(f"allow app={good} sha256={digest} to=192.0.2.2 port=80")
    assert lab.client_run(*AS_NOBODY, str(good)).splitlines() == ["connected", "good"]

    rewrite = (
        "import os, sys; p = sys.argv[1]; st = os.stat(p); "
        "f = open(p, 'r+b'); f.write(open(sys.argv[2], 'rb').read()); f.close(); "
        "os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))"
    )
    os.chmod(nobody_dir / "evil", 0o644)
    subprocess.run(
        [*AS_NOBODY, "/usr/bin/python3", "-c", rewrite, str(good), str(nobody_dir / "evil")],
        check=True,
        timeout=30,
    )
    assert good.stat().st_size == len(evil)
    assert lab.client_run(*AS_NOBODY, str(good)).splitlines() == ["timeout", "evil"]
    assert [r["action"] for r in rows_of(lab, str(good))] == ["allow", "deny"]


def test_script_rule_allows_its_script_and_not_inline_code(lab: Lab, nobody_dir: Path) -> None:
    """`allow app=python3 script=ok.py` lets ok.py through — run by its relative path, resolved
    against the process's cwd — and not `python3 -c` with the very same code, nor another
    script, nor ok.py with PYTHONPATH set (other code may load first)."""
    lab.start_daemon()
    ok = nobody_dir / "ok.py"
    ok.write_text(CONNECT_PY)
    (nobody_dir / "other.py").write_text(CONNECT_PY)
    lab.add_rule(f"allow app={SYSTEM_PYTHON} script={ok} to=192.0.2.2 port=80")

    def run_in_dir(*argv: str, env: str = "") -> str:
        line = " ".join(argv)
        return lab.client_run("sh", "-c", f"cd {nobody_dir} && {env} exec {line}")

    assert run_in_dir("/usr/bin/python3", "ok.py") == "connected"
    assert lab.client_run("/usr/bin/python3", str(ok)) == "connected"
    assert lab.client_run("/usr/bin/python3", "-c", CONNECT_PY) == "timeout"
    assert run_in_dir("/usr/bin/python3", "other.py") == "timeout"
    assert run_in_dir("/usr/bin/python3", "ok.py", env="PYTHONPATH=/nonexistent") == "timeout"
    reasons = [str(r["reason"]) for r in rows_of(lab, SYSTEM_PYTHON)]
    assert any(f"script {ok}" in r for r in reasons)
    assert any("inline code" in r for r in reasons)
    assert any("PYTHONPATH set" in r for r in reasons)


def test_parent_rules_name_an_ancestor_and_parent1_the_direct_parent(
    lab: Lab, nobody_dir: Path
) -> None:
    """`allow app=curl parent=LAUNCHER` lets curl through when LAUNCHER started it, directly or
    not; `parent1=` only when it is the direct parent; curl started otherwise is not."""
    lab.start_daemon()
    curl = curl_exe()
    launcher = nobody_dir / "launcher"
    shutil.copy(
        "/usr/bin/dash", launcher
    )  # root-owned, in a verified place: a parent rule names it
    lab.add_rule(f"allow app={curl} parent={launcher} to=192.0.2.2 port=80")
    lab.add_rule(f"allow app={curl} parent1={launcher} to=192.0.2.2 port=8080")
    get = f"curl -s -o /dev/null --connect-timeout 2 -w '%{{http_code}}' {URL}"
    get8080 = get.replace("192.0.2.2/", "192.0.2.2:8080/")

    def code(*argv: str) -> str:
        return lab.client_run(*argv, timeout=60)

    assert code(str(launcher), "-c", f"{get}; true") != "000"  # direct parent
    assert code(str(launcher), "-c", f'dash -c "{get}; true"; true') != "000"  # grandparent
    assert code("/usr/bin/dash", "-c", f"{get}; true") == "000"  # another parent
    assert code(str(launcher), "-c", f"{get8080}; true") != "000"
    assert code(str(launcher), "-c", f'dash -c "{get8080}; true"; true') == "000"


@pytest.mark.parametrize("how", ["ld_preload", "ptrace"])
def test_code_injected_into_an_allowed_binary_is_flagged_and_not_allowed(
    lab: Lab, nobody_dir: Path, how: str
) -> None:
    """curl is allowed; curl with a library preloaded by uid 65534, or traced by it (strace
    stands for a debugger injecting code), is not curl: flagged in the log, alerted, and not
    allowed by curl's rule (a deny rule would still hold it)."""
    lab.start_daemon()
    lab.expect_log(r"alert injected-code: ")
    curl = curl_exe()
    lab.add_rule(f"allow app={curl} to=192.0.2.2 port=80")
    get = ["curl", "-s", "-o", "/dev/null", "--connect-timeout", "2", "-w", "%{http_code}", URL]
    assert lab.client_run(*AS_NOBODY, *get) == "200"
    if how == "ld_preload":
        src = nobody_dir / "inject.c"
        src.write_text("__attribute__((constructor)) static void hello(void) {}\n")
        lib = nobody_dir / "inject.so"
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
        argv = ["env", f"LD_PRELOAD={lib}", *get]
        note = f"preloaded {lib}"
    else:
        argv = ["strace", "-f", "-qq", "-e", "trace=none", "-o", "/dev/null", *get]
        note = "traced by pid"
    assert lab.client_run(*AS_NOBODY, *argv, timeout=60) == "000"
    flagged = [r for r in rows_of(lab, curl) if note in str(r["reason"])]
    assert flagged and {r["action"] for r in flagged} == {"deny"}
    assert "alert injected-code" in lab.log_text()


def test_an_exec_of_a_same_named_program_is_judged_as_itself(lab: Lab, nobody_dir: Path) -> None:
    """uid 65534 runs a program the rules allow; it connects (snitchd keeps its identity by pid,
    start time and name), waits past the exec window, then execs its own program of the same
    name from another folder, which connects: that flow is the second program's, denied. Before,
    the kept identity still named the first and the second was allowed (proc path: sock_diag,
    /proc and the exec watch)."""
    source = Path(__file__).resolve().parent / "csrc" / "connlater.c"
    good, evil = nobody_dir / "good" / "connlater", nobody_dir / "evil" / "connlater"
    for exe in (good, evil):
        exe.parent.mkdir(mode=0o755)
        subprocess.run(["cc", "-O2", "-o", str(exe), str(source)], check=True, timeout=60)
    lab.start_daemon(attribution="proc", retry_window=0)
    lab.add_rule(f"allow app={good}")
    argv = [str(good), "192.0.2.2", "80", "600", str(evil), "192.0.2.2", "80", "0"]
    assert lab.client_run(*AS_NOBODY, *argv, timeout=30).splitlines() == ["connected", "timeout"]
    assert [r["action"] for r in rows_of(lab, str(good))] == ["allow"]
    assert [r["action"] for r in rows_of(lab, str(evil))] == ["deny"]
