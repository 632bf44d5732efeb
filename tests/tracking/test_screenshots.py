"""The MLflow pages as a user sees them (issue 31): benchmarks/mlflow_screenshots.py renders the runs table, a run
page and a sweep parent in headless Chromium from a real store. Slow (an MLflow UI server and a browser):
`pytest -m slow tests/tracking/test_screenshots.py`; skipped without Chromium."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.score.headline import headline_metrics
from tests.helpers.pipeline import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SCRIPT = REPO / "benchmarks" / "mlflow_screenshots.py"


def _script():
    spec = importlib.util.spec_from_file_location("mlflow_screenshots", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_screenshot_script_renders_the_pages_a_user_opens(tmp_path: Path):
    shots = _script()
    if shots.browser() is None:
        pytest.skip("no Chromium: apt install chromium")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = tracking.get_or_create_parent(tracking_uri=store, experiment="odeval", sweep_id="s1")
    score = {"device_kind": "virtual", "throughput": {"decode_tok_s": {"mean": 21.23456}, "ttft_s": {"p50": 1.2}},
             "quality": {"score": 0.81234, "score_ci95": [0.7, 0.9], "on_topic_rate": 0.9}, "failures": {"failed": 0}}
    head = headline_metrics(score)
    tracking.log_run(tracking_uri=store, experiment="odeval", run_key="k1", params={"model": {"name": "tiny-fp"}},
                     metrics=head, tags={"device.kind": "virtual"}, artifacts=[], parent_run_id=parent,
                     run_name="job0", description=tracking.run_description(score, head))
    tracking.mark_parent(tracking_uri=store, parent_run_id=parent, tags={"odeval.failed_jobs": "none"},
                         failed=False, metrics={"jobs_complete": 1.0, "jobs_failed": 0.0})
    out = shots.main(["--store", store, "--out", str(tmp_path / "shots")])
    assert sorted(p.name for p in out) == ["run-page.png", "runs-table.png", "sweep-parent.png"]
    assert all(p.stat().st_size > 20_000 for p in out)  # a rendered page, not a blank one
