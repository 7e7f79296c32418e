#!/bin/sh
# test.sh: install what the tests need, then run the whole suite: ruff, mypy, pytest.
# As root (integration tests make network namespaces). Extra arguments go to pytest.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"
if [ "$(id -u)" != 0 ]; then
    echo "test.sh: run as root (the integration tests use network namespaces)" >&2
    exit 1
fi
# install.sh --deps-only brings snitch's own packages (the Qt libraries included); then
# iputils-ping: the ICMP tests; util-linux: setpriv for the unprivileged-caller tests;
# systemd: systemd-analyze for the unit checks; bpftool: what BPF is attached to a cgroup;
# strace: a tracer attached to an allowed binary (the code-injection test);
# desktop-file-utils: desktop-file-validate for the launchers.
# podman netavark runc docker.io busybox-static: real container runtimes for
# tests/integration/test_podman.py and test_dockerd.py (issue 16; each skips where its runtime
# is missing). Measured on Debian 12, after apt-get update: podman + netavark ~18 s (29 MB
# download, 115 MB on disk), docker.io (+ containerd) ~11 s (64 MB, 260 MB), runc 4 s,
# busybox-static (the containers' root filesystem: no registry) 7 s. runc: crun refuses a
# hybrid cgroup host. The Docker test found a bug the fake runtime could not show.
./install.sh --deps-only
# docker.io would start dockerd on a systemd host, which rewrites the host's iptables (FORWARD
# policy DROP, its own chains): where it is not installed yet, its units are masked first; the
# Docker test starts its own dockerd inside the lab's network namespace.
if ! dpkg -s docker.io >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl mask docker.service docker.socket containerd.service >/dev/null 2>&1 || true
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    iputils-ping util-linux systemd bpftool strace desktop-file-utils \
    podman netavark runc docker.io busybox-static >/dev/null
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[test]"
echo "== ruff"; .venv/bin/ruff check daemon notifier tests bench
echo "== mypy"; .venv/bin/mypy
# Tests marked `slow` (extra variants, real container runtimes, the staging install) are left to
# .ci/run, which runs them after this: the suite here stays under 15 minutes.
echo "== pytest"
if [ "$#" -gt 0 ]; then exec .venv/bin/pytest -m "not slow" "$@"; fi
# The integration tests mostly wait on the kernel, daemons and timeouts: two pytest processes
# share them out (--shard), each lab being namespaces, a bus and pins of its own. The unit and
# notifier tests (CPU-bound, ~2 minutes) run beside them. Reports follow in that order.
unit_log=$(mktemp)
half_log=$(mktemp)
.venv/bin/pytest -m "not slow" -p no:cacheprovider tests/unit tests/notifier >"$unit_log" 2>&1 &
unit_pid=$!
.venv/bin/pytest -m "not slow" -p no:cacheprovider --durations=10 --shard 1/2 \
    tests/integration >"$half_log" 2>&1 &
half_pid=$!
status=0
.venv/bin/pytest -m "not slow" --durations=10 --shard 0/2 tests/integration || status=$?
half_status=0
wait "$half_pid" || half_status=$?
echo "== pytest: tests/integration, the other half (ran beside the first)"
cat "$half_log"
unit_status=0
wait "$unit_pid" || unit_status=$?
echo "== pytest: tests/unit tests/notifier (ran beside the integration tests)"
cat "$unit_log"
rm -f "$unit_log" "$half_log"
[ "$status" -eq 0 ] && [ "$half_status" -eq 0 ] && [ "$unit_status" -eq 0 ]
