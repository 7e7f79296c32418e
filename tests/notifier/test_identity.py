"""Naming the app from desktop entries: a tmp XDG tree, never the machine's own files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from snitch_notifier.identity import (
    GENERIC_ICON,
    AppIdentity,
    data_dirs,
    desktop_identity,
    find_identity,
)


def _entry(top: Path, file_id: str, **keys: str) -> Path:
    path = top / "applications" / file_id
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["[Desktop Entry]", "Type=Application", *(f"{k}={v}" for k, v in keys.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def xdg(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "home", tmp_path / "usr"


def test_exec_with_the_full_path_names_the_app(xdg) -> None:
    home, usr = xdg
    path = _entry(
        usr,
        "firefox-esr.desktop",
        Name="Firefox ESR",
        Icon="firefox-esr",
        Exec="/usr/lib/firefox-esr/firefox-esr %u",
    )
    assert find_identity("/usr/lib/firefox-esr/firefox-esr", [home, usr]) == AppIdentity(
        "Firefox ESR", "firefox-esr", path
    )


def test_a_bare_program_name_matches_the_basename(xdg) -> None:
    home, usr = xdg
    _entry(
        usr, "org.gnome.Epiphany.desktop", Name="Web", Icon="org.gnome.Epiphany", Exec="epiphany %U"
    )
    assert find_identity("/usr/bin/epiphany", [home, usr]).name == "Web"


def test_an_exact_path_beats_a_basename_match(xdg) -> None:
    home, usr = xdg
    _entry(usr, "a-other.desktop", Name="Other tool", Exec="tool")
    _entry(usr, "b-tool.desktop", Name="The tool", Exec="/opt/tool/bin/tool --new-window")
    assert find_identity("/opt/tool/bin/tool", [home, usr]).name == "The tool"


def test_a_symlinked_exec_path_matches_the_real_executable(xdg, tmp_path) -> None:
    """/proc/PID/exe is the resolved path; entries often name a symlink in /usr/bin."""
    home, usr = xdg
    real = tmp_path / "lib" / "chromium"
    real.parent.mkdir()
    real.write_text("")
    link = tmp_path / "bin-chromium"
    link.symlink_to(real)
    _entry(usr, "chromium.desktop", Name="Chromium", Exec=f"{link} %U")
    assert find_identity(str(real), [home, usr]).name == "Chromium"


def test_tryexec_names_the_program_too(xdg) -> None:
    home, usr = xdg
    _entry(
        usr,
        "thing.desktop",
        Name="Thing",
        TryExec="/usr/libexec/thing",
        Exec="sh -c '/usr/libexec/thing --x'",
    )
    assert find_identity("/usr/libexec/thing", [home, usr]).name == "Thing"


def test_launchers_running_something_else_name_nothing(xdg) -> None:
    """`sh -c …` or `python3 script.py` entries must not name every shell or Python."""
    home, usr = xdg
    _entry(usr, "script.desktop", Name="Some script", Exec="python3 /usr/share/x/x.py")
    _entry(usr, "shell.desktop", Name="Some shell thing", Exec="sh -c 'echo hi'")
    assert find_identity("/usr/bin/python3", [home, usr]) == AppIdentity("python3", "python3")
    assert find_identity("/bin/sh", [home, usr]).name == "sh"


def test_an_interpreter_alone_is_named_by_its_own_entry(xdg) -> None:
    home, usr = xdg
    _entry(
        usr,
        "python3.11.desktop",
        Name="Python (v3.11)",
        Icon="/usr/share/pixmaps/python3.11.xpm",
        Exec="/usr/bin/python3.11",
    )
    found = find_identity("/usr/bin/python3.11", [home, usr])
    assert (found.name, found.icon) == ("Python (v3.11)", "/usr/share/pixmaps/python3.11.xpm")


def test_env_wrappers_are_looked_through(xdg) -> None:
    home, usr = xdg
    _entry(usr, "gimp.desktop", Name="GIMP", Exec="env GDK_BACKEND=x11 gimp-2.10 %U")
    assert find_identity("/usr/bin/gimp-2.10", [home, usr]).name == "GIMP"


def test_the_users_entry_overrides_the_systems(xdg) -> None:
    """Same desktop-file id in XDG_DATA_HOME and XDG_DATA_DIRS: the first dir wins, even
    when the overriding entry no longer matches (it replaces the system one)."""
    home, usr = xdg
    _entry(home, "editor.desktop", Name="My editor", Icon="mine", Exec="/usr/bin/editor")
    _entry(usr, "editor.desktop", Name="Editor", Icon="theirs", Exec="/usr/bin/editor")
    assert find_identity("/usr/bin/editor", [home, usr]).icon == "mine"


def test_hidden_and_non_application_entries_are_skipped(xdg) -> None:
    home, usr = xdg
    _entry(usr, "gone.desktop", Name="Deleted", Exec="/usr/bin/gone", Hidden="true")
    link = usr / "applications" / "link.desktop"
    link.write_text("[Desktop Entry]\nType=Link\nName=A link\nExec=/usr/bin/gone\n")
    assert find_identity("/usr/bin/gone", [home, usr]).name == "gone"


def test_the_name_is_translated_for_the_session_language(xdg) -> None:
    home, usr = xdg
    _entry(
        usr,
        "files.desktop",
        **{"Name": "Files", "Name[de]": "Dateien", "Name[pt_BR]": "Arquivos", "Exec": "nautilus"},
    )
    assert find_identity("/usr/bin/nautilus", [home, usr], "de_DE.UTF-8").name == "Dateien"
    assert find_identity("/usr/bin/nautilus", [home, usr], "pt_BR.UTF-8").name == "Arquivos"
    assert find_identity("/usr/bin/nautilus", [home, usr], "C").name == "Files"


def test_entries_in_subdirectories_are_found(xdg) -> None:
    home, usr = xdg
    _entry(usr, "kde4/kate.desktop", Name="Kate", Exec="kate -b %U")
    assert find_identity("/usr/bin/kate", [home, usr]).name == "Kate"


def test_no_entry_gives_the_basename_and_a_theme_icon_of_that_name(xdg) -> None:
    home, usr = xdg
    assert find_identity("/usr/bin/curl", [home, usr]) == AppIdentity("curl", "curl")


def test_no_process_gives_a_generic_identity(xdg) -> None:
    assert find_identity(None, list(xdg)) == AppIdentity("unknown program", GENERIC_ICON)


def test_broken_entries_do_not_stop_the_search(xdg) -> None:
    home, usr = xdg
    _entry(usr, "a-broken.desktop", Name="Broken", Exec='"unterminated quote')
    (usr / "applications" / "b-binary.desktop").write_bytes(b"\xff\xfe\x00garbage")
    _entry(usr, "c-good.desktop", Name="Good", Exec="/usr/bin/good")
    assert find_identity("/usr/bin/good", [home, usr]).name == "Good"


def test_data_dirs_follow_the_xdg_variables_and_defaults() -> None:
    env = {"HOME": "/home/a", "XDG_DATA_DIRS": "/x:/y"}
    assert data_dirs(env) == [Path("/home/a/.local/share"), Path("/x"), Path("/y")]
    env = {"HOME": "/home/a", "XDG_DATA_HOME": "/d"}
    assert data_dirs(env) == [Path("/d"), Path("/usr/local/share"), Path("/usr/share")]


def test_the_popup_lookup_reads_xdg_data_dirs(xdg, monkeypatch) -> None:
    """The window's default lookup uses the session's XDG variables, as the issue asks."""
    home, usr = xdg
    _entry(usr, "tool.desktop", Name="Tool from XDG_DATA_DIRS", Exec="/usr/bin/tool")
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    monkeypatch.setenv("XDG_DATA_DIRS", str(usr))
    assert desktop_identity("/usr/bin/tool").name == "Tool from XDG_DATA_DIRS"


def test_unreadable_data_dirs_are_skipped(tmp_path) -> None:
    """Found by the e2e test: run as another user with HOME inherited from root, the notifier
    met a XDG_DATA_HOME it could not read, and every notification failed."""
    readable = Path(tempfile.mkdtemp(prefix="snitch-xdg-"))
    try:
        readable.chmod(0o755)
        entry = _entry(readable, "tool.desktop", Name="Tool", Exec="/usr/bin/tool")
        entry.parent.chmod(0o755)
        entry.chmod(0o644)
        secret = tmp_path / "home"
        _entry(secret, "other.desktop", Name="Other", Exec="/usr/bin/other")
        code = (
            "from pathlib import Path; from snitch_notifier.identity import find_identity; "
            f"print(find_identity('/usr/bin/tool', [Path({str(secret)!r}), "
            f"Path({str(readable)!r})]).name)"
        )
        argv = [sys.executable, "-c", code]
        if os.geteuid() == 0:  # root reads everything: be somebody else
            argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
        else:
            secret.chmod(0)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        assert (done.stdout.strip(), done.returncode) == ("Tool", 0), done.stderr
    finally:
        shutil.rmtree(readable)
