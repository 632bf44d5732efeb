"""One Hydra job: the four stage functions in order, into the job's own directory.

In a multirun every job logs an MLflow child run under one parent per sweep. The sweep id is the sweep dir's
name; the parent is created by whichever job scores first (under a file lock, so parallel jobs agree). Fetch and
push work is shared across jobs through the content-addressed model cache and the device-side manifests: the
second job using a model builds nothing and sends 0 bytes.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.config import Config

SWEEP_ENV = "ODEVAL_SWEEP_ID"


def run_job(cfg: Config, workdir: Path, hydra_cfg: Any = None) -> float | None:
    """Run fetch → push → run → score into `workdir`; returns the quality score (Hydra sweepers can optimise it)."""
    from pipeline.device.pool import PoolError, check_config, leased_config
    from pipeline.stages import StageError, fetch, push, run, score

    try:
        check_config(cfg)  # a label no pool device has: fail before any download
    except PoolError as e:
        raise StageError(str(e)) from None
    workdir.mkdir(parents=True, exist_ok=True)
    sweep_id = sweep_id_of(hydra_cfg)
    job = f"{sweep_id}/{hydra_cfg.job.num}" if sweep_id else str(workdir)
    with _sweep_env(sweep_id):
        fetch.run(cfg, workdir)  # parallel jobs share the cache: builds are atomic and skip unchanged files
        try:  # device.kind=pool: hold one device from push to run; fetch and score need none
            with leased_config(cfg, job) as job_cfg:
                push.run(job_cfg, workdir)
                run.run(job_cfg, workdir)
        except PoolError as e:
            raise StageError(str(e)) from None
        score.run(job_cfg, workdir)
    score_json = json.loads((workdir / cfg.paths.metrics / "score.json").read_text())
    return score_json["quality"]["score"]


def sweep_id_of(hydra_cfg: Any) -> str | None:
    """The sweep's id (its directory name) in a multirun, else None."""
    if hydra_cfg is None:
        return None
    from hydra.types import RunMode

    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return Path(hydra_cfg.sweep.dir).name.replace(" ", "_")


def current_sweep() -> str | None:
    return os.environ.get(SWEEP_ENV) or None


@contextmanager
def _sweep_env(sweep_id: str | None):
    old = os.environ.get(SWEEP_ENV)
    if sweep_id:
        os.environ[SWEEP_ENV] = sweep_id
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(SWEEP_ENV, None)
        else:
            os.environ[SWEEP_ENV] = old


def parent_run(tracking_uri: str, experiment: str, sweep_id: str, lock_dir: Path) -> str:
    """The sweep's MLflow parent run id, created once even when jobs run in parallel."""
    from filelock import FileLock

    from pipeline.tracking import get_or_create_parent

    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / f"sweep-{sweep_id}.lock"), timeout=120):
        return get_or_create_parent(tracking_uri=tracking_uri, experiment=experiment, sweep_id=sweep_id,
                                    tags={"odeval.sweep_dir": sweep_id})
