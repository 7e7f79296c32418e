#!/bin/sh
# install.sh: install snitch on Debian 12 (or later) as root, then start it.
#
#   ./install.sh               install everything and start the firewall
#                              (systemd: enable + start the service; no systemd as PID 1: run
#                              snitchd in the foreground, Ctrl-C stops it and removes its rules)
#   ./install.sh --no-start    install everything, start nothing
#   ./install.sh --uninstall   stop snitch and remove every file it installed
#                              (add --purge to remove its config and database too)
#   ./install.sh --deps-only   only the Debian packages (used by test.sh)
#   ./install.sh --root DIR    place files under DIR (staging; implies --no-start, no apt)
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=""
START=1 UNINSTALL=0 PURGE=0 DEPS_ONLY=0 APT=1
PREFIX=/opt/snitch
AGENT_GROUP=snitch-agent

APT_PACKAGES="python3 python3-venv python3-dev gcc libnetfilter-queue-dev iptables nftables
conntrack dbus iproute2 curl ca-certificates procps bash-completion man-db
clang libbpf-dev libbpf1
libglib2.0-0 libegl1 libgl1 libfontconfig1 libxkbcommon0 libxkbcommon-x11-0 libx11-xcb1
libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0 libxcb-randr0 libxcb-render-util0
libxcb-image0 libxcb-xkb1 libwayland-client0 libwayland-cursor0 libwayland-egl1 libdbus-1-3
fonts-dejavu-core"

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case $1 in
        --no-start) START=0 ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        --deps-only) DEPS_ONLY=1 ;;
        --root) ROOT=${2:?--root needs a directory}; START=0; APT=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

say() { echo "snitch: $*"; }

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (it installs packages, a system service and kernel rules)" >&2
    exit 1
fi

# Every path this script creates, so that --uninstall removes exactly these.
FILES="/usr/share/dbus-1/system.d/org.snitch.Firewall1.conf
/usr/share/polkit-1/actions/org.snitch.policy
/etc/systemd/system/snitchd.service
/etc/systemd/system/snitch-lists.service
/etc/systemd/system/snitch-lists.timer
/etc/systemd/system/snitch-lists@.service
/usr/local/bin/snitch-lists
/usr/local/bin/snitchd
/usr/local/bin/snitchctl
/usr/local/bin/snitch-notifier
/etc/systemd/user/snitch-notifier.service
/etc/xdg/autostart/snitch-notifier.desktop
/usr/local/share/applications/snitch.desktop
/usr/local/share/applications/snitch-monitor.desktop
/usr/local/share/icons/hicolor/scalable/apps/snitch.svg
/usr/local/share/man/man1/snitchctl.1
/usr/local/share/man/man8/snitchd.8
/usr/local/share/man/man1/snitch-notifier.1
/usr/local/share/man/man5/snitchd.toml.5
/usr/local/share/man/man5/snitch-rules.5
/usr/share/bash-completion/completions/snitchctl
/usr/share/zsh/vendor-completions/_snitchctl
/usr/share/fish/vendor_completions.d/snitchctl.fish
/usr/lib/systemd/catalog/snitch.catalog"

OLD_ACTIVATION=/usr/share/dbus-1/system-services/org.snitch.Firewall1.service

systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }

uninstall() {
    if systemd_running; then
        systemctl disable --now snitchd.service snitch-lists.timer 2>/dev/null || true
    fi
    if command -v systemctl >/dev/null; then
        systemctl --root="${ROOT:-/}" --global disable snitch-notifier.service 2>/dev/null || true
    fi
    for f in $FILES $OLD_ACTIVATION; do rm -f "$ROOT$f"; done
    # The catalog's index is the machine's (/var/lib/systemd/catalog): not made when staging.
    if [ -z "$ROOT" ] && command -v journalctl >/dev/null; then
        journalctl --update-catalog 2>/dev/null || true
    fi
    rm -rf "$ROOT$PREFIX"
    if [ -z "$ROOT" ] && getent group "$AGENT_GROUP" >/dev/null; then
        groupdel "$AGENT_GROUP" || true
    fi
    if [ "$PURGE" = 1 ]; then
        rm -rf "$ROOT/etc/snitch" "$ROOT/var/lib/snitch"
    fi
    if systemd_running; then systemctl daemon-reload; fi
    say "uninstalled$( [ "$PURGE" = 1 ] && echo ', config and database removed' || echo ' (config in /etc/snitch and database in /var/lib/snitch kept; --purge removes them)')"
}

apt_deps() {
    say "installing Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $APT_PACKAGES "$@" >/dev/null
}

install_files() {
    say "creating $ROOT$PREFIX/venv"
    mkdir -p "$ROOT$PREFIX"
    python3 -m venv "$ROOT$PREFIX/venv"
    "$ROOT$PREFIX/venv/bin/pip" install -q --upgrade pip
    "$ROOT$PREFIX/venv/bin/pip" install -q "$HERE[gui]"
    # snitchd accepts an agent only from a root-owned venv nobody else can write.
    chown -R root:root "$ROOT$PREFIX"
    chmod -R go-w "$ROOT$PREFIX"
    install_launcher
    install -D -m 0644 "$HERE/systemd/org.snitch.Firewall1.conf" \
        "$ROOT/usr/share/dbus-1/system.d/org.snitch.Firewall1.conf"
    # The polkit action snitchd asks for when answers_need_auth = true (auth_admin_keep).
    install -D -m 0644 "$HERE/systemd/org.snitch.policy" \
        "$ROOT/usr/share/polkit-1/actions/org.snitch.policy"
    # No D-Bus activation file: a call to snitchd must never start it (a stopped firewall
    # stays stopped until systemd or an admin starts it). Earlier versions installed one.
    rm -f "$ROOT$OLD_ACTIVATION"
    install -D -m 0644 "$HERE/systemd/snitchd.service" "$ROOT/etc/systemd/system/snitchd.service"
    # Block lists (issue 18): an unprivileged updater and its daily timer.
    for unit in snitch-lists.service snitch-lists@.service snitch-lists.timer; do
        install -D -m 0644 "$HERE/systemd/$unit" "$ROOT/etc/systemd/system/$unit"
    done
    mkdir -p "$ROOT/usr/local/bin"
    install -D -m 0644 "$HERE/systemd/snitch-notifier.service" \
        "$ROOT/etc/systemd/user/snitch-notifier.service"
    install -D -m 0644 "$HERE/systemd/snitch-notifier.desktop" \
        "$ROOT/etc/xdg/autostart/snitch-notifier.desktop"
    # The launcher (the way to snitch's window where there is no tray) and its shield.
    install -D -m 0644 "$HERE/systemd/snitch.desktop" \
        "$ROOT/usr/local/share/applications/snitch.desktop"
    install -D -m 0644 "$HERE/notifier/snitch_notifier/art/snitch-watching.svg" \
        "$ROOT/usr/local/share/icons/hicolor/scalable/apps/snitch.svg"
    # The Network Monitor's launcher (snitch-notifier --monitor), in the desktop's app menu.
    install -D -m 0644 "$HERE/systemd/snitch-monitor.desktop" \
        "$ROOT/usr/local/share/applications/snitch-monitor.desktop"
    if command -v systemctl >/dev/null; then
        systemctl --root="${ROOT:-/}" --global enable snitch-notifier.service
    fi
    for cmd in snitchd snitchctl snitch-notifier snitch-lists; do
        ln -sf "$PREFIX/venv/bin/$cmd" "$ROOT/usr/local/bin/$cmd"
    done
    if [ ! -e "$ROOT/etc/snitch/snitchd.toml" ]; then
        install -D -m 0644 "$HERE/systemd/snitchd.toml" "$ROOT/etc/snitch/snitchd.toml"
    fi
    mkdir -p -m 0700 "$ROOT/var/lib/snitch"
    install_docs
    # The connect-time recorder (cgroup BPF, issue 14) and the socket match, compiled once here
    # by clang; snitchd builds them at start if they are missing. Without the recorder it
    # attributes flows with sock_diag and /proc; without the match it keeps datagram verdicts
    # per conntrack tuple (it says so in the journal and `snitchctl status`).
    if "$ROOT$PREFIX/venv/bin/python" -m snitchd.procs.bpf build "$ROOT/var/lib/snitch" >/dev/null; then
        say "BPF programs built in $ROOT/var/lib/snitch/bpf"
    else
        say "BPF programs not built: snitchd will attribute flows with sock_diag and /proc"
    fi
    say "installed: snitchd, snitchctl and snitch-notifier in /usr/local/bin"
}

# The agent launcher (snitch_common/agentlauncher.c): agents run through it, and snitchd takes
# as an agent only a process the kernel started from it set-group-id (agent_launcher), which
# no program of the user can fake. Compiled here against the venv's Python.
install_launcher() {
    launcher="$PREFIX/venv/libexec/snitch-agent"
    if [ -n "$ROOT" ]; then
        "$ROOT$PREFIX/venv/bin/python" -m snitch_common.launcher build "$ROOT$launcher" \
            --python "$PREFIX/venv/bin/python3"
        say "staging: make $launcher group $AGENT_GROUP, mode 2755, where it is installed"
        return
    fi
    getent group "$AGENT_GROUP" >/dev/null || groupadd --system "$AGENT_GROUP"
    "$PREFIX/venv/bin/python" -m snitch_common.launcher build "$launcher" \
        --python "$PREFIX/venv/bin/python3" --group "$AGENT_GROUP"
    say "agent launcher built: $launcher (set-group-id $AGENT_GROUP)"
}

# Man pages and shell completion, made here from the installed programs' own parsers (so they
# never drift from --help), and the journal's message catalog (issue 20).
install_docs() {
    py="$ROOT$PREFIX/venv/bin/python"
    man="$ROOT/usr/local/share/man"
    "$py" -m snitchctl.manpages "$man/man1" >/dev/null
    "$py" -m snitch_notifier.manpage "$man/man1" >/dev/null
    "$py" -m snitchd.manpage "$man/man8" --man5 "$man/man5" \
        --config "$HERE/systemd/snitchd.toml" --rules "$HERE/docs/rules.md" >/dev/null
    chmod 0644 "$man/man1/snitchctl.1" "$man/man1/snitch-notifier.1" "$man/man8/snitchd.8" \
        "$man/man5/snitchd.toml.5" "$man/man5/snitch-rules.5"
    reg="$ROOT$PREFIX/venv/bin/register-python-argcomplete"
    bash_dir="$ROOT/usr/share/bash-completion/completions"
    zsh_dir="$ROOT/usr/share/zsh/vendor-completions"
    fish_dir="$ROOT/usr/share/fish/vendor_completions.d"
    mkdir -p "$bash_dir" "$zsh_dir" "$fish_dir"
    "$reg" --shell bash snitchctl > "$bash_dir/snitchctl"
    "$reg" --shell zsh snitchctl > "$zsh_dir/_snitchctl"
    "$reg" --shell fish snitchctl > "$fish_dir/snitchctl.fish"
    chmod 0644 "$bash_dir/snitchctl" "$zsh_dir/_snitchctl" "$fish_dir/snitchctl.fish"
    install -D -m 0644 "$HERE/systemd/snitch.catalog" "$ROOT/usr/lib/systemd/catalog/snitch.catalog"
    # The catalog's index is the machine's (/var/lib/systemd/catalog): not made when staging.
    if [ -z "$ROOT" ] && command -v journalctl >/dev/null; then
        journalctl --update-catalog 2>/dev/null || true
    fi
    say "man pages (snitchctl, snitch-notifier, snitchd, snitchd.toml, snitch-rules) and completion (bash, zsh, fish) installed"
}

ensure_system_bus() {
    if [ ! -S /run/dbus/system_bus_socket ]; then
        say "no system bus running: starting dbus-daemon --system"
        mkdir -p /run/dbus
        dbus-daemon --system --fork
    else
        dbus-send --system --type=method_call --dest=org.freedesktop.DBus / \
            org.freedesktop.DBus.ReloadConfig 2>/dev/null || true
    fi
}

if [ "$UNINSTALL" = 1 ]; then uninstall; exit 0; fi
if [ "$APT" = 1 ]; then apt_deps; fi
if [ "$DEPS_ONLY" = 1 ]; then exit 0; fi
install_files

if [ "$START" = 0 ]; then
    say "not started (--no-start). Start it with: systemctl start snitchd (or run: snitchd)"
    exit 0
fi
if systemd_running; then
    systemctl daemon-reload
    systemctl enable --now snitchd.service
    systemctl enable --now snitch-lists.timer
    say "running as the systemd service snitchd; see: snitchctl status"
    exit 0
fi
ensure_system_bus
say "systemd is not PID 1 here: running snitchd in the foreground (Ctrl-C stops it)."
say "in another terminal: snitchctl status, snitchctl list-rules, snitchctl log"
exec /usr/local/bin/snitchd
