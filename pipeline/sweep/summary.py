"""The end of a sweep: which jobs did not complete (terminal and MLflow parent), a FAILED/KILLED child per such
job, the parent created before the jobs on a cluster (:func:`prepare_parent`).  :class:`SweepSummary` is the Hydra
callback (``conf/hydra/default.yaml``); an interrupted sweep gets the same summary from :func:`sweep_interrupted`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.score.headline import extremes
from pipeline.sweep.invocation import this_process
from pipeline.sweep.job import job_outcomes

try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object  # type: ignore[assignment,misc]


class SweepSummary(Callback):
    """Hydra callback: after a multirun, name the jobs that failed and end the sweep non-zero if any did.

    WHY: each job catches its own failure (so the other jobs still run), which means Hydra itself would end the
    sweep with status 0; this puts the truth back at the end, on the terminal and on the MLflow parent run. An
    interrupted sweep (Ctrl-C, SIGTERM) never reaches ``on_multirun_end``: ``python -m pipeline`` then calls
    :func:`sweep_interrupted`, which records the same summary with the parent KILLED.
    """

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        hydra = config.hydra
        this_process.started("sweep", Path(str(hydra.sweep.dir)), list(hydra.overrides.task),
                             list(hydra.overrides.hydra), config)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        this_process.ended()
        bad = summarize_sweep(config)
        sweep_id = Path(config.hydra.sweep.dir).name
        print(f"compare: python -m pipeline.report --sweep {sweep_id} --out reports/{sweep_id}", file=sys.stderr)
        if bad:
            raise SystemExit(1)


def summarize_sweep(config: Any, interrupted: str | None = None) -> list[dict[str, Any]]:
    """Print the sweep's outcome (one line per job that did not complete) and record it in MLflow: a FAILED child
    per failed job or job whose host died, a KILLED one per job the interruption stopped or never let finish, the
    parent FAILED (or KILLED when ``interrupted`` names the signal) with the summary in its tags. Returns the jobs
    not complete."""
    sweep_dir = Path(config.hydra.sweep.dir)
    jobs = job_outcomes(sweep_dir)
    bad = [j for j in jobs if j["status"] != "complete"]
    how = f" — interrupted by {interrupted} (jobs not started yet are not counted)" if interrupted else ""
    print(f"sweep {sweep_dir.name}: {len(jobs) - len(bad)} of {len(jobs)} jobs complete{how}",
          file=sys.stderr)
    for j in bad:
        print(f"  {j['job']} ({j['overrides'] or 'no overrides'}): {j['status']} — {j['error']}", file=sys.stderr)
    metrics_dir = str(config.get("paths", {}).get("metrics", "metrics"))
    ends = extremes({j["job"]: _headline_of(sweep_dir / j["job"] / metrics_dir) for j in jobs
                     if j["status"] == "complete"})
    overrides = {j["job"]: j["overrides"] or "no overrides" for j in jobs}
    for name, e in ends.items():
        (b, bj), (w, wj) = e["best"], e["worst"]
        said = (f"{b} in every job" if b == w else
                f"best {b} ({bj}: {overrides[bj]}), worst {w} ({wj}: {overrides[wj]})")
        print(f"  {name}: {said}", file=sys.stderr)
    if jobs:
        print(f"  job directories: {sweep_dir}/job<N> ({jobs[0]['job']} … {jobs[-1]['job']}), each with "
              f"{metrics_dir}/headline.json, {metrics_dir}/score.json and artifacts/run/responses.jsonl",
              file=sys.stderr)
    _mark_parent(config, sweep_dir.name, bad, interrupted, jobs=len(jobs), ends=ends, overrides=overrides)
    return bad


def _headline_of(metrics: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((metrics / "headline.json").read_text())
    except (OSError, ValueError):
        return {}


def sweep_interrupted(signum: int) -> None:
    """After Ctrl-C/SIGTERM of a sweep: its summary (MLflow parent and unfinished children KILLED) and the one
    line that resumes it (each job continues in its own dir; complete jobs keep all their rows)."""
    from pipeline.interrupts import signal_name

    config = this_process.config
    if config is not None:
        summarize_sweep(config, interrupted=signal_name(signum))
    print(f"sweep interrupted — finished work is kept; resume this sweep: {this_process.resume_command()}",
          file=sys.stderr)


def _mark_parent(config: Any, sweep_id: str, bad: list[dict[str, Any]], interrupted: str | None = None, *,
                 jobs: int = 0, ends: dict[str, dict[str, tuple[float, str]]] | None = None,
                 overrides: dict[str, str] | None = None) -> None:
    """The sweep's outcome on its MLflow parent: jobs complete/failed and the best/worst job per headline number
    (metrics ``jobs_complete``, ``jobs_failed``, ``<name>.best``, ``<name>.worst``; tags name the jobs), so the
    parent row is not a row of "-"."""
    from pipeline.tracking import TrackingError, close_running_children, log_failed_job, mark_parent, sweep_parent
    from pipeline.workspace import shared_root

    found = _sweep_tracking(config, "the sweep's outcome is not recorded in MLflow")
    if found is None:
        return
    uri, cfg = found
    try:
        parent = sweep_parent(uri, cfg.tracking.experiment, sweep_id, shared_root() / ".odeval" / "locks")
        for j in bad:  # a child run per job that did not finish, visible next to the finished ones
            log_failed_job(tracking_uri=uri, experiment=cfg.tracking.experiment, parent_run_id=parent,
                           run_name=f"{j['job']}:{j['status']}", error=j["error"] or j["status"],
                           tags={"sweep_id": sweep_id, "odeval.job": j["job"], "odeval.overrides": j["overrides"]},
                           status="KILLED" if interrupted and j["status"] != "failed" else "FAILED")
        if interrupted:  # a job stopped while it was logging: its child run must not stay RUNNING
            close_running_children(tracking_uri=uri, experiment=cfg.tracking.experiment, parent_run_id=parent)
        failed = "; ".join(f"{j['job']} ({j['overrides']}): {j['status']}" for j in bad)
        tags = {"odeval.failed_jobs": failed or "none", "odeval.n_failed_jobs": str(len(bad))}
        if interrupted:
            tags["odeval.interrupted"] = interrupted
        metrics = {"jobs_complete": float(jobs - len(bad)), "jobs_failed": float(len(bad))}
        lines = [f"**Sweep {sweep_id}: {jobs - len(bad)} of {jobs} jobs complete**"
                 + (f" — interrupted by {interrupted}" if interrupted else ""), ""]
        lines += [f"- {j['job']} ({j['overrides'] or 'no overrides'}): {j['status']} — {j['error']}" for j in bad]
        if ends:
            lines += ["", "| headline | best | worst |", "| --- | --- | --- |"]
        for name, e in (ends or {}).items():
            for end, (value, job) in e.items():
                metrics[f"{name}.{end}"] = float(value)
                tags[f"odeval.{end}.{name}"] = f"{job}: {(overrides or {}).get(job, '')}"
            (b, bj), (w, wj) = e["best"], e["worst"]
            lines.append(f"| `{name}` | {b} ({bj}: {(overrides or {}).get(bj, '')}) | {w} ({wj}: "
                         f"{(overrides or {}).get(wj, '')}) |")
        lines += ["", f"Compare: `python -m pipeline.report --sweep {sweep_id} --out reports/{sweep_id}`"]
        tags["mlflow.note.content"] = "\n".join(lines)
        mark_parent(tracking_uri=uri, parent_run_id=parent, failed=bool(bad), tags=tags, metrics=metrics,
                    status="KILLED" if interrupted else None)
    except TrackingError as e:
        print(f"warning: could not record the sweep's outcome in MLflow: {e}", file=sys.stderr)


def _sweep_tracking(config: Any, what: str) -> tuple[str, Config] | None:
    """The sweep's tracking URI and base config (the jobs' shared config), None when it does not track."""
    from omegaconf import OmegaConf

    from pipeline.config import ConfigError, to_config
    from pipeline.tracking import resolve_tracking_uri
    from pipeline.workspace import shared_root

    base = OmegaConf.create({k: v for k, v in config.items() if k != "hydra"})
    try:
        cfg = to_config(base)
    except ConfigError as e:
        print(f"warning: {what} (its base config: {e})", file=sys.stderr)
        return None
    if cfg.tracking.backend == "none":
        return None
    return resolve_tracking_uri(cfg.tracking.tracking_uri or "sqlite:///mlflow.db", shared_root()), cfg


def prepare_parent(config: Any) -> None:
    """Create the sweep's MLflow parent run from the controller before any job starts (the Ray launcher).

    WHY: jobs on several hosts share an http tracking server but not a lock file; get_or_create_parent's
    create-then-keep-the-oldest can still leave two parents when two hosts race with skewed clocks. One creator,
    before the jobs exist, leaves the jobs nothing to race for."""
    from pipeline.tracking import TrackingError, sweep_parent
    from pipeline.workspace import shared_root

    found = _sweep_tracking(config, "no MLflow parent created before the jobs")
    if found is None:
        return
    uri, cfg = found
    sweep_id = Path(str(config.hydra.sweep.dir)).name.replace(" ", "_")
    try:
        sweep_parent(uri, cfg.tracking.experiment, sweep_id, shared_root() / ".odeval" / "locks")
    except TrackingError as e:
        print(f"warning: MLflow parent not created before the jobs ({e}); each job will try", file=sys.stderr)
