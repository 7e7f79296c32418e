"""One notifier per session: the launcher's second start asks the running one to show its
waiting list (the small window where there is no tray) instead of registering a second
agent of the same user."""

from __future__ import annotations

from pathlib import Path

from snitch_notifier.instance import Instance, ask_running, instance_path


def test_a_second_start_shows_the_running_one_s_window(qtbot, tmp_path: Path) -> None:
    path = str(tmp_path / "snitch-notifier.sock")
    assert not ask_running(path), "nothing runs yet"
    shown: list[bool] = []
    running = Instance(path, lambda: shown.append(True))
    try:
        assert ask_running(path)
        qtbot.waitUntil(lambda: shown == [True], timeout=3000)
    finally:
        running.close()
    assert not ask_running(path)


def test_the_rendezvous_is_in_the_user_s_runtime_dir(monkeypatch, tmp_path: Path) -> None:
    """Not a name in /tmp that another user could take first."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert instance_path() == str(tmp_path / "snitch-notifier.sock")
