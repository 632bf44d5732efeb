"""Helpers for stage-level tests: a validated config pointed at the test's virtual device and temp stores."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from pipeline.config import Config, compose, to_config

REPO = Path(__file__).resolve().parents[2]


def stage_config(vd: Any, work: Path, *overrides: str, cache: Path | None = None) -> Config:
    """The default experiment, on `vd` (a tests.helpers.device.VirtualDevice), tracking into work/mlflow.db."""
    base = [
        f"device.virtual.root={vd.root}",
        f"device.virtual.port={vd.port}",
        f"paths.cache={cache or work / 'cache'}",
        f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}",
        f"prompts.path={REPO / 'prompts' / 'qa.jsonl'}",
        "runtime.load_timeout_s=60",
        "runtime.prompt_timeout_s=30",
    ]
    return to_config(compose(base + list(overrides)))


def run_stages(cfg: Config, work: Path, *names: str) -> None:
    from pipeline.stages import fetch, push, run, score

    stages = {"fetch": fetch, "push": push, "run": run, "score": score}
    for name in names or tuple(stages):
        stages[name].run(cfg, work)


def rows(work: Path) -> list[dict]:
    path = work / "artifacts" / "run" / "responses.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def stage_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One built-model cache for every stage test of the session (tiny models build once)."""
    return tmp_path_factory.mktemp("stage-cache")


def repo_copy(dest: Path) -> None:
    """A git repo holding this checkout's files as they are now (tracked + new, not ignored): a user's clone."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for n in filter(None, names):
        if (REPO / n).is_file():
            (dest / n).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / n, dest / n)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "snapshot"], cwd=dest, check=True)


def run_stage_in_background(cfg: Config, work: Path) -> subprocess.Popen:
    """`python -m pipeline.stages.run` on ``cfg`` (written to work/params.yaml) as its own process, as DVC runs it:
    for tests that signal, kill or unplug under a running stage."""
    (work / "params.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    return subprocess.Popen([sys.executable, "-m", "pipeline.stages.run", "--quiet"], cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_rows(path: Path, n: int, proc: subprocess.Popen, timeout: float = 150) -> None:
    """Until ``path`` (a responses.jsonl) holds ``n`` rows; fails when ``proc`` ends or the time is up first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    pytest.fail(f"never reached {n} rows in {path} (exit {proc.poll()}): {proc.stderr.read() if proc.stderr else ''}")


def kill_9_after(cfg: Config, work: Path, n: int) -> list[dict]:
    """Run the run stage as its own process, SIGKILL it once ``n`` rows are on disk; the rows it left."""
    import os
    import signal

    proc = run_stage_in_background(cfg, work)
    wait_rows(work / "artifacts" / "run" / "responses.jsonl", n, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    return rows(work)
