"""Results never go stale under `dvc repro` (issue 26 acceptance), in a user's clone with real DVC and MLflow:

1. a code change that changes every answer (the engine's logits negated) → `run` starts afresh and says why;
   rows, metrics/score.json and MLflow show the new answers (the old MLflow run is marked superseded);
2. `dvc exp run -S model.max_seq_len=…` re-runs `run` (a key DVC once did not know) and names the change;
3. one prompt of prompts/qa.jsonl edited and another deleted → only the edited prompt is asked again, and 43
   rows are scored for 43 prompts.

Slow (four `dvc repro`s of the 44-prompt qa set): `pytest -m slow tests/stages/test_dvc_stale.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.device import free_port
from tests.helpers.pipeline import repo_copy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
ENGINE_OUT = "return self.lm_head @ self._rms(x, self.norm)"


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _rows(repo: Path) -> dict[str, dict]:
    lines = (repo / "artifacts" / "run" / "responses.jsonl").read_text().splitlines()
    return {r["prompt_id"]: r for r in map(json.loads, lines)}


def _score(repo: Path) -> dict:
    return json.loads((repo / "metrics" / "score.json").read_text())


def _mlflow_runs(repo: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name("odeval").experiment_id],
                              order_by=["attributes.start_time ASC"])


def _line(out: str, start: str) -> str:
    lines = [x for x in out.splitlines() if x.startswith(start)]
    assert len(lines) == 1, out[-4000:]
    return lines[0]


def test_code_param_and_prompt_changes_reach_the_results(adb_server, tmp_path):
    repo = tmp_path / "clone"
    repo.mkdir()
    repo_copy(repo)
    (repo / "conf" / "local").mkdir(exist_ok=True)
    (repo / "conf" / "local" / "default.yaml").write_text(  # machine-specific settings (gitignored)
        f"# @package _global_\ndevice:\n  virtual:\n    port: {free_port()}\n")
    env = {**os.environ, "PYTHONPATH": str(repo), "DVC_NO_ANALYTICS": "1", "ODEVAL_QUIET": "1",
           "ANDROID_ADB_SERVER_PORT": str(adb_server.port),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    env.pop("ODEVAL_ROOT", None)
    py, dvc = sys.executable, [sys.executable, "-m", "dvc"]
    try:
        _run([py, "-m", "pipeline.params"], repo, env)
        _run([*dvc, "repro"], repo, env)
        rows1, score1 = _rows(repo), _score(repo)
        assert len(rows1) == 44 and score1["quality"]["score"] > 0.5

        # 1. the engine changes every answer
        engine = repo / "pipeline" / "guest" / "npllama.py"
        assert ENGINE_OUT in engine.read_text()
        engine.write_text(engine.read_text().replace(ENGINE_OUT, f"return -({ENGINE_OUT.removeprefix('return ')})"))
        out = _run([*dvc, "repro"], repo, env)
        line = _line(out, "run: starting afresh")
        assert "code (" in line and "pipeline/guest/npllama.py" in line, line
        rows2, score2 = _rows(repo), _score(repo)
        assert len(rows2) == 44
        assert sum(rows2[k]["response"] != rows1[k]["response"] for k in rows1) > 40
        assert score2["quality"]["score"] < score1["quality"]["score"]
        runs = _mlflow_runs(repo)
        assert len(runs) == 2
        assert runs[1].data.metrics["quality.score"] == pytest.approx(score2["quality"]["score"])
        assert runs[0].data.tags["odeval.superseded_by"] == runs[1].info.run_id
        assert "npllama.py" in runs[1].data.tags["odeval.replaces"]

        # 2. a key `run` reads, set the way the README teaches
        out = _run([*dvc, "exp", "run", "-S", "model.max_seq_len=512"], repo, env)
        assert "Running stage 'run'" in out
        assert "changed: config (model.max_seq_len)" in _line(out, "run: starting afresh")

        # 3. one prompt edited, one deleted
        qa = repo / "prompts" / "qa.jsonl"
        items = [json.loads(x) for x in qa.read_text().splitlines()]
        assert items[0]["id"] == "capital-france" and items[3]["id"] == "capital-egypt"
        items[0].update(prompt="What is the capital of Japan?", reference=["Tokyo"])
        del items[3]
        qa.write_text("".join(json.dumps(i) + "\n" for i in items))
        before = _rows(repo)
        out = _run([*dvc, "repro"], repo, env)
        assert _line(out, "run: resuming") == (
            "run: resuming — 42 finished rows kept; re-asking 1 changed prompt(s) (capital-france); dropped the rows "
            "of 1 prompt(s) no longer in the set (capital-egypt)")
        after = _rows(repo)
        assert len(after) == 43 and "capital-egypt" not in after
        assert all(after[k] == before[k] for k in after if k != "capital-france")
        assert after["capital-france"]["sent_text"] == "What is the capital of Japan?"
        score = _score(repo)
        assert score["n_prompts"] == 43 and score["n_rows"] == 43
    finally:
        subprocess.run([py, "-m", "pipeline.virtual", "stop", "--root", str(repo / ".odeval" / "virtual")], cwd=repo,
                       env=env, capture_output=True, timeout=60)
