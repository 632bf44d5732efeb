"""The README's `dvc exp show` command fits a 120-column terminal and shows decode tok/s and quality (issue 31).

Real DVC in a user's clone with two saved experiments (`dvc exp save`: the rows DVC draws for `dvc exp run`) and
a headline.json as the score stage writes it; the command is read from the README, so the two cannot drift.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.score.headline import headline
from tests.helpers.pipeline import REPO, repo_copy

pytestmark = pytest.mark.timeout(300)


def readme_command() -> list[str]:
    lines = [x.strip() for x in (REPO / "README.md").read_text().splitlines() if x.strip().startswith("dvc exp show")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def test_the_demo_shows_the_readme_columns():
    from pipeline.demo import EXP_SHOW

    assert list(EXP_SHOW) == readme_command()[3:]  # `dvc exp show` + the README's --drop/--keep, one spelling


def _score(decode: float, quality: float) -> dict:
    return {"device_kind": "virtual", "throughput": {"decode_tok_s": {"mean": decode}, "ttft_s": {"p50": 1.2345678}},
            "quality": {"score": quality, "score_ci95": [quality - 0.0712345, quality + 0.0612345],
                        "on_topic_rate": 0.954545}, "failures": {"failed": 2}, "energy_j_per_token": None}


def test_the_readme_exp_show_fits_120_columns(tmp_path: Path):
    repo = tmp_path / "clone"
    repo.mkdir()
    repo_copy(repo)
    env = {**os.environ, "PYTHONPATH": str(repo), "DVC_NO_ANALYTICS": "1", "COLUMNS": "120",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    spec = __import__("yaml").safe_load((repo / "dvc.yaml").read_text())["stages"]
    for stage in spec.values():  # every output present, as after a run, so that `dvc exp save` accepts the state
        for out in stage.get("outs", []) + stage.get("metrics", []):
            p = repo / (out if isinstance(out, str) else next(iter(out)))
            p.parent.mkdir(parents=True, exist_ok=True)
            if not p.exists():
                p.write_text("{}\n")
    for model, decode, quality in (("smollm2-q4", 123.456789, 0.8912345), ("smollm2-q4a8", 23.4567, 0.701234)):
        params = repo / "params.yaml"
        params.write_text(re.sub(r"(?m)^  name: tiny-fp$", f"  name: {model}", params.read_text(), count=1))
        (repo / "metrics" / "headline.json").write_text(json.dumps(headline(_score(decode, quality))))
        # as `dvc exp run` does, the experiment commits the metrics it wrote (untracked in a fresh clone)
        save = subprocess.run([sys.executable, "-m", "dvc", "exp", "save", "-f", "-I", "metrics/headline.json"],
                              cwd=repo, env=env,
                              capture_output=True, text=True, timeout=120)
        assert save.returncode == 0, save.stderr
        subprocess.run(["git", "checkout", "-q", "--", "params.yaml"], cwd=repo, check=True)
    cmd = readme_command()
    proc = subprocess.run([sys.executable, "-m", "dvc", *cmd[1:], "--no-pager"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(x) for x in lines) <= 120, proc.stdout
    assert "…" not in proc.stdout, proc.stdout  # DVC elides columns that do not fit
    header = next(x for x in lines if "Experiment" in x)
    for col in ("device", "decode_tok_s", "quality", "model.name"):
        assert col in header, header
    assert "smollm2-q4a8" in proc.stdout and "virtual" in proc.stdout
    assert "123.46" in proc.stdout and "0.701" in proc.stdout, proc.stdout  # each experiment's own numbers
