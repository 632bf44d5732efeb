"""Fixtures for tests/run: a simple_app stand-in launched through a real /bin/sh with `app_command`."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.apps.channel import SubprocessChannel
from pipeline.apps.launch import AppProcess
from pipeline.apps.simple_app import app_command

STUB = Path(__file__).with_name("stub_app.py")


def count_tokens(text: str) -> int:
    """The stub's 'tokenizer': a token is optional whitespace plus a run of non-space characters."""
    return len(re.findall(r"\s*\S+", text))


def count_prompt(line: str) -> int:
    """What the stub app 'feeds' for a line: simple_app's template around it, for the stub's tokenizer
    (`<|user|>\\n` = 1 token, the line, `</s>` = 1 id, `\\n<|assistant|>\\n` = 1 token)."""
    return count_tokens(line) + 3


def pid_alive(pid: int) -> bool:
    """True if the pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@dataclass
class StubLauncher:
    """Starts the stub like the stage starts simple_app on a device: `sh -c app_command(...)` over a channel.

    `remote_kill` plays `adb shell kill -9 <pid>`; `killed` records the pids it was asked to kill.
    """

    app_dir: Path
    model_dir: str
    env: dict[str, str] = field(default_factory=dict)
    device_arg: str | None = "8gen3"
    killed: list[int] = field(default_factory=list)
    starts: int = 0

    def remote_kill(self, pid: int) -> None:
        self.killed.append(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __call__(self, n_prompt_tokens: int = 0) -> AppProcess:
        self.starts += 1
        cmd = app_command(str(self.app_dir), self.model_dir, self.device_arg, self.env)
        channel = SubprocessChannel(["/bin/sh", "-c", cmd], env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        return AppProcess(channel, remote_kill=self.remote_kill)

    def log(self) -> list[dict]:
        path = self.app_dir / "stub_log.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def pids(self) -> list[int]:
        return [e["pid"] for e in self.log() if e["event"] == "start"]

    def lines(self) -> list[str]:
        return [e["text"] for e in self.log() if e["event"] == "line"]


@pytest.fixture
def stub(tmp_path: Path):
    """A launcher for the stub app in `<tmp>/app dir` (a space in the path on purpose); asserts at teardown that
    no stub process is left running."""
    app_dir = tmp_path / "app dir"
    app_dir.mkdir()
    exe = app_dir / "simple_app"
    exe.write_text(f"#!{sys.executable}\nimport runpy\nrunpy.run_path({str(STUB)!r}, run_name='__main__')\n")
    exe.chmod(0o755)
    model_dir = tmp_path / "models" / "tiny model"
    model_dir.mkdir(parents=True)
    launcher = StubLauncher(app_dir, str(model_dir), env={"STUB_DELAY": "0.001"})
    yield launcher
    left = [p for p in launcher.pids() if pid_alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"stub processes left running: {left}"
