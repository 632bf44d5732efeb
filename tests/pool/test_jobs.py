"""Whole pipeline jobs on the pool: a parallel Hydra joblib sweep, a killed job, and DVC's separate stage processes.

Every job is a real `python -m pipeline` / `python -m pipeline.stages.*` process on real virtual devices through
the session's adb server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.config import compose, to_config
from pipeline.device.pool import lease, serial_of
from pipeline.locks import overlaps, read_leases
from pipeline.virtual.faults import write_faults
from tests.pool.conftest import REPO, Pool

pytestmark = pytest.mark.timeout(300)
QA = REPO / "prompts" / "qa.jsonl"


def _common(tmp: Path) -> list[str]:
    return ["prompts.limit=2", f"prompts.path={QA}", f"paths.cache={tmp / 'cache'}", "runtime.load_timeout_s=60",
            "runtime.prompt_timeout_s=60"]


def _mlflow_runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("odeval")
    return client.search_runs([exp.experiment_id]) if exp else []


# joblib (Hydra's own parallel launcher) is slow-only: the default suite keeps the pool launcher, which exercises the
# same leases in the same six-job sweep (the suite's time budget: ~5 min on 2 cores)
@pytest.mark.parametrize("launcher", [pytest.param("joblib", marks=pytest.mark.slow), "pool"])
def test_six_job_sweep_runs_in_parallel_on_three_devices(fresh_log: Pool, tmp_path: Path, launcher: str):
    """`-m hydra/launcher=joblib hydra.launcher.n_jobs=3`: 6 jobs, 3 worker processes, ≤ 1 job per device at a
    time, one MLflow parent with 6 children. `hydra/launcher=pool` (forked workers that inherit what the sweep
    preloaded) must give the same result."""
    pool = fresh_log
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "-m", f"hydra/launcher={launcher}", "hydra.launcher.n_jobs=3",
         *pool.overrides(),
         *_common(tmp_path), f"tracking.tracking_uri={uri}", f"hydra.sweep.dir={sweep}",
         "hydra.sweep.subdir=${hydra.job.num}", "sequence=s128,s256", "prompting=plain,system,fewshot"],
        cwd=REPO, env=pool.env(), capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("each worker preloads the host side in the background" in proc.stdout + proc.stderr) == (launcher == "pool")
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == [str(i) for i in range(6)]
    for j in jobs:
        score = json.loads((sweep / j / "metrics" / "score.json").read_text())
        assert score["n_prompts"] == 2 and score["device_kind"] == "virtual"
        profile = json.loads((sweep / j / "job_profile.json").read_text())["phases_s"]
        assert set(profile) == {"fetch", "device_wait", "push", "run", "score"}
    leases = read_leases(pool.lock_dir)
    assert sorted(r["job"] for r in leases) == sorted(f"sweep/{i}" for i in range(6))
    assert all(r["t_release"] is not None for r in leases)
    assert overlaps(leases) == []
    assert len({r["pid"] for r in leases}) >= 2  # jobs really ran in several worker processes
    pushed = {json.loads((sweep / j / "artifacts" / "push.json").read_text())["device"]["serial"] for j in jobs}
    assert pushed == {r["serial"] for r in leases} and pushed <= {serial_of(d) for d in pool.devices}

    runs = _mlflow_runs(uri)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 6
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.data.params["device.serial"] for r in children} == pushed


def test_a_killed_pipeline_job_releases_its_device(fresh_log: Pool, tmp_path: Path):
    """kill -9 a real job while it holds a device (its app hangs in the run stage); the device is free at once."""
    pool = fresh_log
    cmd = [sys.executable, "-m", "pipeline", *pool.overrides(), *_common(tmp_path), "tracking=none",
           "+device.require.slot=1", "+device.virtual.faults.app_hang=true", f"hydra.run.dir={tmp_path / 'job'}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=pool.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not any(r["event"] == "acquire" for r in pool.log_lines()):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            assert time.monotonic() < deadline, "the job never leased a device"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        with lease(pool.devices, {"slot": "1"}, pool.lock_dir, 10, "after-kill", root=pool.root) as dev:
            assert dev.name == "v1"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        write_faults(Path(pool.devices[0].virtual_root or ""))
    killed = [r for r in read_leases(pool.lock_dir) if r["job"] != "after-kill"]
    assert len(killed) == 1 and killed[0]["t_release"] is None and killed[0]["device"] == "v1"
    assert any(r["event"] == "abandoned" and r["pid"] == proc.pid for r in pool.log_lines())


def test_dvc_run_stage_waits_for_the_device_push_used(fresh_log: Pool, tmp_path: Path):
    """`dvc repro` runs push and run as separate processes: run must lease the device in push.json, even when
    another pool device is free."""
    pool = fresh_log
    work = tmp_path / "repo"
    work.mkdir()
    overrides = [*pool.overrides(), *_common(tmp_path), "tracking=none"]
    cfg = to_config(compose(overrides))
    (work / "params.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))

    def stage(name: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", f"pipeline.stages.{name}", "--quiet"], cwd=work,
                                env=pool.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    for name in ("fetch", "push"):
        p = stage(name)
        _, err = p.communicate(timeout=200)
        assert p.returncode == 0, err[-2000:]
    serial = json.loads((work / "artifacts" / "push.json").read_text())["device"]["serial"]
    pushed = next(d for d in pool.devices if serial_of(d) == serial)
    with lease(pool.devices, {}, pool.lock_dir, 10, "blocker", pin=pushed.name, root=pool.root):
        runner = stage("run")
        time.sleep(1.0)  # (the assertion below does not depend on this: run simply cannot lease before we release)
    _, err = runner.communicate(timeout=200)
    assert runner.returncode == 0, err[-2000:]
    assert json.loads((work / "artifacts" / "run" / "run.json").read_text())["device"]["serial"] == serial
    by_job = {r["job"].split("@")[0]: r for r in read_leases(pool.lock_dir)}
    assert by_job["push"]["device"] == by_job["run"]["device"] == pushed.name
    assert by_job["run"]["t_acquire"] >= by_job["blocker"]["t_release"]
    assert all(r["t_release"] is not None for r in by_job.values())  # the stage processes released at exit
