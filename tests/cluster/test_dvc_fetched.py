"""Fetched files shared through DVC: a second clone runs the pipeline from `dvc pull`, with no Hub.

Slow (two clones, a real `dvc repro` of all four stages on a virtual device): `pytest -m slow tests/cluster`.
Clone 1 fetches a model from a local Hub look-alike, `dvc push`es to a local-directory remote; clone 2 (a `git
clone` of clone 1, another HF cache, the Hub endpoint dead and HF_HUB_OFFLINE=1) runs `dvc pull` then `dvc repro`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.device import free_port
from tests.helpers.hub_server import DEAD_ENDPOINT
from tests.helpers.pipeline import repo_copy

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _sha256s(fetch_json: Path) -> dict[str, dict[str, str]]:
    data = json.loads(fetch_json.read_text())
    return {k: {f["path"]: f["sha256"] for f in data[k]["files"]} for k in ("model", "app")}


def test_second_clone_pulls_the_fetched_files_and_runs_without_the_hub(hub_server, tiny_model, adb_server,
                                                                       tmp_path: Path):
    sha = hub_server.add_repo("odeval-test/tiny-fp", tiny_model("tiny-fp"))
    one, two, remote = tmp_path / "clone1", tmp_path / "clone2", tmp_path / "dvc-remote"
    one.mkdir()
    repo_copy(one)
    base = {**os.environ, "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1", "ODEVAL_QUIET": "1",
            "ANDROID_ADB_SERVER_PORT": str(adb_server.port),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}  # dvc.yaml: python
    base.pop("ODEVAL_ROOT", None)
    env1 = {**base, "PYTHONPATH": str(one), "HF_ENDPOINT": hub_server.url, "HF_HOME": str(tmp_path / "hf1")}
    overrides = ["model.source=hub", "model.repo_id=odeval-test/tiny-fp", f"model.revision={sha}", "prompts.limit=2",
                 f"device.virtual.port={free_port()}", "tracking=none"]
    dvc = [sys.executable, "-m", "dvc"]
    _run([sys.executable, "-m", "pipeline.params", *overrides], one, env1)
    _run([*dvc, "repro", "fetch"], one, env1)
    assert hub_server.requests, "clone 1 should have fetched from the Hub"
    fetched = one / "artifacts" / "fetched" / "model"
    assert {p.name for p in fetched.iterdir()} >= {"config.json"}
    _run([*dvc, "remote", "add", "-d", "store", str(remote)], one, env1)
    _run([*dvc, "push"], one, env1)
    _run(["git", "add", "-A"], one, env1)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "fetched"], one, env1)

    hub_server.clear_log()
    _run(["git", "clone", "-q", str(one), str(two)], tmp_path, base)
    env2 = {**base, "PYTHONPATH": str(two), "HF_ENDPOINT": DEAD_ENDPOINT, "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(tmp_path / "hf2")}
    _run([*dvc, "pull", "fetch"], two, env2)  # only fetch ran on clone 1
    out = _run([*dvc, "repro"], two, env2)
    assert "Stage 'fetch' didn't change, skipping" in out, out[-2000:]
    assert hub_server.requests == []  # nothing from the Hub
    assert not (tmp_path / "hf2" / "hub").exists() or not any((tmp_path / "hf2" / "hub").iterdir())
    assert _sha256s(two / "artifacts" / "fetch.json") == _sha256s(one / "artifacts" / "fetch.json")
    pushed = json.loads((two / "artifacts" / "push.json").read_text())
    assert pushed["model"]["manifest_sha256"] == json.loads((one / "artifacts" / "fetch.json").read_text())[
        "model"]["manifest_sha256"]
    score = json.loads((two / "metrics" / "score.json").read_text())
    assert score["n_prompts"] == 2
    _run([sys.executable, "-m", "pipeline.virtual", "stop", "--root", str(two / ".odeval" / "virtual")], two, env2)
