"""pipeline.apps.launch.wait_gone: a killed app counts as stopped only once the device no longer has its pid."""

from __future__ import annotations

from types import SimpleNamespace

from pipeline.apps import launch


class _Device:
    """`kill -0 <pid>` succeeds `alive_for` times (the process is not reaped yet), then fails."""

    serial = "fake:1"

    def __init__(self, alive_for: int) -> None:
        self.alive_for = alive_for
        self.cmds: list[str] = []

    def shell2(self, cmd: str, timeout: float, v2: bool) -> SimpleNamespace:
        self.cmds.append(cmd)
        alive = len(self.cmds) <= self.alive_for
        return SimpleNamespace(returncode=0 if alive else 1)


def test_waits_until_the_pid_is_gone():
    dev = _Device(alive_for=3)
    assert launch.wait_gone(dev, 1234, timeout_s=5) is True
    assert dev.cmds == ["kill -0 1234"] * 4


def test_gives_up_with_a_warning(capsys):
    dev = _Device(alive_for=10**6)
    assert launch.wait_gone(dev, 77, timeout_s=0.2) is False
    assert "app pid 77 on fake:1 still exists 0.2 s after kill -9" in capsys.readouterr().err
