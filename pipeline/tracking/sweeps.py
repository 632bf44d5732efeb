"""A sweep in MLflow: one parent run, a FAILED child for a job that did not finish, the parent's outcome and
the children an interrupted sweep left RUNNING.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pipeline.secrets import redact
from pipeline.tracking.runs import _log_metrics, _set_tags, get_or_create_parent
from pipeline.tracking.store import KILLED_WHY_TAG, MAX_TAG_VAL_LENGTH, experiment_id, session, truncate


def log_failed_job(*, tracking_uri: str, experiment: str, parent_run_id: str | None, run_name: str, error: str,
                   tags: Mapping[str, str], status: str = "FAILED") -> str:
    """A child run for a sweep job that did not finish (``FAILED``, or ``KILLED`` when an interruption stopped it),
    so the sweep's failures show in the UI. Its ``error`` tag holds the one-line reason (redacted like every tag)."""
    with session(tracking_uri) as client:
        exp_id = experiment_id(client, experiment, tracking_uri)
        all_tags = {**tags, "error": truncate(error, MAX_TAG_VAL_LENGTH), "odeval.status": status.lower()}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(exp_id, tags={k: str(v) for k, v in redact(all_tags).items()}, run_name=run_name)
        client.set_terminated(run.info.run_id, status=status)
        return run.info.run_id


def mark_parent(*, tracking_uri: str, parent_run_id: str, tags: Mapping[str, str], failed: bool,
                status: str | None = None, metrics: Mapping[str, float] | None = None) -> None:
    """Record a sweep's outcome on its parent run (which jobs failed, its summary metrics); FAILED when any job
    failed, or the given ``status`` (KILLED: the sweep was interrupted)."""
    with session(tracking_uri) as client:
        _set_tags(client, parent_run_id, {k: str(v) for k, v in redact(dict(tags)).items()})
        if metrics:
            _log_metrics(client, parent_run_id, metrics, step=0)
        client.set_terminated(parent_run_id, status=status or ("FAILED" if failed else "FINISHED"))


def close_running_children(*, tracking_uri: str, experiment: str, parent_run_id: str) -> list[str]:
    """End every child run of ``parent_run_id`` still RUNNING as KILLED (their process was interrupted)."""
    with session(tracking_uri) as client:
        exp_id = experiment_id(client, experiment, tracking_uri)
        flt = f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'RUNNING'"
        runs = client.search_runs([exp_id], filter_string=flt, max_results=1000)
        for r in runs:
            _set_tags(client, r.info.run_id, {KILLED_WHY_TAG: "the sweep was interrupted while it logged"})
            client.set_terminated(r.info.run_id, status="KILLED")
        return [r.info.run_id for r in runs]


def sweep_parent(tracking_uri: str, experiment: str, sweep_id: str, lock_dir: Path) -> str:
    """The sweep's MLflow parent run id, created once even when jobs run in parallel."""
    from filelock import FileLock

    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / f"sweep-{sweep_id}.lock"), timeout=120):
        return get_or_create_parent(tracking_uri=tracking_uri, experiment=experiment, sweep_id=sweep_id,
                                    tags={"odeval.sweep_dir": sweep_id})
