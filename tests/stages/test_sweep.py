"""Hydra multirun → one MLflow parent + a child per job → report; runs readable over `mlflow server`'s REST API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.helpers.device import free_port
from tests.helpers.pipeline import REPO

pytestmark = pytest.mark.timeout(400)


def test_two_by_two_multirun_parent_children_report_and_rest(virtual_device, tmp_path, stage_cache):
    db = tmp_path / "mlflow.db"
    sweep_dir = tmp_path / "sweep-2x2"
    cmd = [sys.executable, "-m", "pipeline", "-m", "model=tiny-fp,tiny-w4", "prompts=qa,smoke", "prompts.limit=2",
           f"device.virtual.root={virtual_device.root}", f"device.virtual.port={virtual_device.port}",
           f"paths.cache={stage_cache}", f"tracking.tracking_uri=sqlite:///{db}", f"hydra.sweep.dir={sweep_dir}"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / "metrics" / "score.json").exists())
    assert len(jobs) == 4  # each job wrote into its own dir

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("odeval").experiment_id])
    parents = [x for x in runs if x.data.tags.get("odeval.role") == "sweep-parent"]
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {c.data.tags["sweep_id"] for c in children} == {"sweep-2x2"}
    # the parent row carries the sweep's outcome: jobs complete/failed and the best/worst job per headline number
    pm, pt = parents[0].data.metrics, parents[0].data.tags
    assert pm["jobs_complete"] == 4 and pm["jobs_failed"] == 0
    qualities = [c.data.metrics["quality"] for c in children]
    assert pm["quality.best"] == max(qualities) and pm["quality.worst"] == min(qualities)
    assert pt["odeval.best.quality"].startswith("job") and "=" in pt["odeval.best.quality"]  # the job, its overrides
    assert "4 of 4 jobs complete" in pt["mlflow.note.content"] and "| `quality` |" in pt["mlflow.note.content"]
    # the terminal says where the jobs are and which was best
    assert f"job directories: {sweep_dir}/job<N> (job0 … job3)" in r.stderr, r.stderr[-2000:]
    for name in ("quality", "decode_tok_s"):  # jobs that tie (tiny models can) are said to tie, not ranked
        line = next((x for x in r.stderr.splitlines() if x.startswith(f"  {name}: ")), "")
        if name == "decode_tok_s" and f"{name}.best" not in pm:
            # the tiny models' answers can all be too short or too fast to time (decode null in every job): then
            # no job is ranked on it, on the terminal or the parent
            measured = [v for c in children if (v := c.data.metrics.get(name)) is not None and v == v]  # not NaN
            assert line == "" and not measured, r.stderr[-2000:]
            continue
        said = "in every job" if pm[f"{name}.best"] == pm[f"{name}.worst"] else "best "
        assert said in line and ("worst " in line) == (said == "best "), r.stderr[-2000:]
    assert {(c.data.params["model.name"], c.data.params["prompts.name"]) for c in children} == {
        ("tiny-fp", "qa"), ("tiny-fp", "smoke"), ("tiny-w4", "qa"), ("tiny-w4", "smoke")}

    out = tmp_path / "report"
    rep = subprocess.run([sys.executable, "-m", "pipeline.report", "--sweep", "sweep-2x2", "--tracking-uri",
                          f"sqlite:///{db}", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
    lines = (out / "report.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("| ") and "virtual" in line]
    assert len(table) == 4 and all("virtual (host CPU)" in line for line in table)

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/experiments/get-by-name?experiment_name=odeval", timeout=5) as f:
                    exp_id = json.load(f)["experiment"]["experiment_id"]
                break
            except OSError:
                assert time.monotonic() < deadline, "mlflow server did not come up"
                time.sleep(0.5)
        body = json.dumps({"experiment_ids": [exp_id], "filter": "tags.sweep_id = 'sweep-2x2'"}).encode()
        req = urllib.request.Request(f"{base}/runs/search", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as f:
            found = json.load(f)["runs"]
        kinds = {t["value"] for run in found for t in run["data"]["tags"] if t["key"] == "device.kind"}
        assert len(found) == 5 and kinds == {"virtual"}  # the parent + 4 children, all labelled virtual
    finally:  # the server has children (uvicorn, a job runner): end the whole group, forcefully if it lingers
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)



def test_a_failing_job_fails_alone_and_is_named(virtual_device, tmp_path, stage_cache):
    db = tmp_path / "mlflow.db"
    sweep_dir = tmp_path / "sweep-bad"
    cmd = [sys.executable, "-m", "pipeline", "-m", "prompts.limit=1,0,2",
           f"device.virtual.root={virtual_device.root}", f"device.virtual.port={virtual_device.port}",
           f"paths.cache={stage_cache}", f"tracking.tracking_uri=sqlite:///{db}", f"hydra.sweep.dir={sweep_dir}"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "2 of 3 jobs complete" in r.stderr and "job1 (prompts.limit=0): failed" in r.stderr, r.stderr[-3000:]
    assert "prompts.limit=0" in r.stderr and "must be ≥ 1" in r.stderr
    assert (sweep_dir / "job0" / "metrics" / "score.json").exists()  # the jobs before and after it ran
    assert (sweep_dir / "job2" / "metrics" / "score.json").exists()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("odeval").experiment_id])
    parent = next(x for x in runs if x.data.tags.get("odeval.role") == "sweep-parent")
    assert parent.info.status == "FAILED" and "job1" in parent.data.tags["odeval.failed_jobs"]
    failed = [x for x in runs if x.info.status == "FAILED" and x.data.tags.get("odeval.job") == "job1"]
    assert len(failed) == 1 and "must be ≥ 1" in failed[0].data.tags["error"]
    finished = [x for x in runs if x.data.tags.get("mlflow.parentRunId") and x.info.status == "FINISHED"]
    assert len(finished) == 2
