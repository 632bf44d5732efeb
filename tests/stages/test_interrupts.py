"""Honest endings: SIGTERM and Ctrl-C end a run `interrupted`, with the rows on disk counted and one line that
resumes this very run — for a DVC stage, for `python -m pipeline`, and for a sweep (MLflow parent + children).

Real processes on a virtual device; the signal arrives while prompts are being answered (a cool-down between
prompts keeps the run going long enough).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys

import pytest

from tests.helpers.pipeline import REPO, rows, run_stage_in_background, run_stages, stage_config, wait_rows

pytestmark = pytest.mark.timeout(300)


def _resume_line(err: str) -> str:
    lines = [x for x in err.splitlines() if "resume this" in x]
    assert len(lines) == 1, err
    return lines[0]


def _pasted(line: str) -> list[str]:
    """The command between the backticks, as the user's shell would split it."""
    cmd = shlex.split(re.search(r"`([^`]+)`", line.split("resume this", 1)[1]).group(1))
    assert cmd[:1] == ["python"]
    return [sys.executable, *cmd[1:]]


def test_sigterm_of_a_stage_records_interrupted_and_says_how_to_resume(virtual_device, workdir, stage_cache):
    """(Ctrl-C takes the same path: see the `python -m pipeline` test below.)"""
    sig, code, said = signal.SIGTERM, 143, "SIGTERM"
    cfg = stage_config(virtual_device, workdir, "prompts.limit=5", "runtime.cooldown_s=1", "tracking=none",
                       cache=stage_cache)
    run_stages(cfg, workdir, "fetch", "push")
    proc = run_stage_in_background(cfg, workdir)
    out = workdir / "artifacts" / "run" / "responses.jsonl"
    wait_rows(out, 1, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    meta = json.loads((workdir / "artifacts" / "run" / "run.json").read_text())
    on_disk = len(rows(workdir))
    assert meta["status"] == "interrupted" and said in meta["error"] and meta["rows"] == on_disk, meta
    line = _resume_line(err)
    assert f"after {on_disk} row(s) on disk" in line and f"in {workdir}" in line
    again = subprocess.run(_pasted(line), cwd=workdir, capture_output=True, text=True, timeout=200)
    assert again.returncode == 0, again.stderr
    assert f"{on_disk} finished rows kept" in again.stdout and len(rows(workdir)) == 5


def test_ctrl_c_of_python_m_pipeline_prints_one_line_that_resumes_its_directory(virtual_device, tmp_path,
                                                                                 stage_cache):
    run_dir = tmp_path / "run1"
    cmd = [sys.executable, "-m", "pipeline", "prompts.limit=4", "runtime.cooldown_s=1", "tracking=none",
           f"prompts.path={REPO / 'prompts' / 'qa.jsonl'}", f"device.virtual.root={virtual_device.root}",
           f"device.virtual.port={virtual_device.port}", f"paths.cache={stage_cache}", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "ODEVAL_ROOT": str(tmp_path)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_rows(run_dir / "artifacts" / "run" / "responses.jsonl", 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    meta = json.loads((run_dir / "artifacts" / "run" / "run.json").read_text())
    assert meta["status"] == "interrupted" and meta["rows"] == len(rows(run_dir))
    line = _resume_line(err)
    assert f"hydra.run.dir={run_dir}" in line and "prompts.limit=4" in line
    kept = len(rows(run_dir))
    again = subprocess.run(_pasted(line), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=200)
    assert again.returncode == 0, again.stderr
    assert f"{kept} finished rows kept" in again.stdout and len(rows(run_dir)) == 4
    assert json.loads((run_dir / "artifacts" / "run" / "run.json").read_text())["status"] == "complete"


def test_sigterm_of_a_sweep_marks_its_mlflow_parent_and_unfinished_child_killed(virtual_device, tmp_path,
                                                                                  stage_cache):
    db, sweep_dir = tmp_path / "mlflow.db", tmp_path / "sweep-int"
    cmd = [sys.executable, "-m", "pipeline", "-m", "model=tiny-fp,tiny-w4", "prompts.limit=4", "runtime.cooldown_s=1",
           f"prompts.path={REPO / 'prompts' / 'qa.jsonl'}", f"device.virtual.root={virtual_device.root}",
           f"device.virtual.port={virtual_device.port}", f"paths.cache={stage_cache}",
           f"tracking.tracking_uri=sqlite:///{db}", f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, "ODEVAL_ROOT": str(tmp_path)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_rows(sweep_dir / "job0" / "artifacts" / "run" / "responses.jsonl", 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err, err
    assert "0 of 1 jobs complete — interrupted by SIGTERM" in err, err
    line = _resume_line(err)
    assert f"hydra.sweep.dir={sweep_dir}" in line and " -m " in line
    assert json.loads((sweep_dir / "job0" / "artifacts" / "run" / "run.json").read_text())["status"] == "interrupted"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("odeval").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("odeval.role") == "sweep-parent"]
    assert parent.info.status == "KILLED" and parent.data.tags["odeval.interrupted"] == "SIGTERM"
    assert "job0" in parent.data.tags["odeval.failed_jobs"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert [(c.data.tags["odeval.job"], c.info.status) for c in children] == [("job0", "KILLED")]
    assert not [r for r in runs if r.info.status == "RUNNING"]
