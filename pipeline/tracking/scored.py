"""Log one scored run to MLflow: one run per (run outputs, scoring config, sweep, label) — re-scoring updates it,
new rows get a new run and the one they replace is marked superseded; nested under its sweep's parent."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipeline.config import Config, as_dict
from pipeline.context import RunContext
from pipeline.score.headline import headline_metrics
from pipeline.tracking.runs import iso_to_ms, log_run, mark_superseded
from pipeline.tracking.store import experiment_ui_path, resolve_tracking_uri
from pipeline.tracking.sweeps import sweep_parent
from pipeline.tracking.tags import bench_tags, provenance_tags
from pipeline.tracking.views import flat_metrics, run_description
from pipeline.workspace import shared_root


def mlflow_key(run_key: str | None, asked: str | None, scoring: str, sweep_id: str | None, tag: str) -> str:
    """The MLflow run of one set of results: the run's identity and what it asked, scored one way, in one sweep,
    under one label. Re-scoring the same rows updates that run; new rows (new identity or questions) get a new one
    (see docs/results.md "Caches and their keys")."""
    key = f"{run_key}|{asked}|{scoring}|{sweep_id}|{tag}"
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def log_scored_run(cfg: Config, ctx: RunContext, score: dict, prompt_rows: list[dict], run_json: dict,
                   fetch: dict, push: dict, artifacts: list[Path]) -> list[str]:
    """Log the run; the lines to print (run id, superseded runs, where to view it). Raises TrackingError."""
    root, sweep_id = shared_root(), ctx.sweep_id
    uri = resolve_tracking_uri(cfg.tracking.tracking_uri or "sqlite:///mlflow.db", root)
    scoring = json.dumps(as_dict(cfg)["scoring"], sort_keys=True)
    run_key = mlflow_key(run_json.get("run_key"), run_json.get("asked"), scoring, sweep_id, cfg.tag)
    tags: dict[str, Any] = provenance_tags(run_json, fetch, push, root=root, sweep_id=sweep_id,
                                                   dvc_exp_name=ctx.dvc_exp_name)
    tags["throughput_source"] = run_json.get("throughput_source", "unknown")
    tags.update(bench_tags(score))  # llama-bench's build and, when it failed, why (its numbers are then missing)
    tags.update({f"odeval.identity.{k}": v for k, v in ((run_json.get("identity") or {}).get("parts") or {}).items()})
    previous = run_json.get("previous_run") or None
    if previous:
        tags["odeval.replaces"] = previous.get("why") or "an earlier run of this directory"
    name = ":".join([cfg.tag, cfg.model.name, cfg.app.name, cfg.app.template, cfg.session.mode, cfg.prompts.name,
                     cfg.sequence.name, str(run_json["device"].get("kind"))])
    parent_run_id = sweep_parent(uri, cfg.tracking.experiment, sweep_id, root / ".odeval" / "locks") if sweep_id \
        else None
    flat = flat_metrics(score)
    headline = headline_metrics(score)
    run_id = log_run(tracking_uri=uri, experiment=cfg.tracking.experiment, run_key=run_key, params=as_dict(cfg),
                     metrics={**headline, **flat}, tags=tags, artifacts=[a for a in artifacts if a.exists()],
                     tables={"prompts": prompt_rows}, parent_run_id=parent_run_id, run_name=name,
                     start_time_ms=iso_to_ms(run_json.get("started")), end_time_ms=iso_to_ms(run_json.get("ended")),
                     description=run_description(score, headline))
    lines = [f"score: MLflow run {run_id} in experiment {cfg.tracking.experiment!r} ({uri})"]
    if previous:  # the results this run replaces stay in MLflow, marked as replaced by this run
        old = mlflow_key(previous.get("run_key"), previous.get("asked"), scoring, sweep_id, cfg.tag)
        for old_id in mark_superseded(tracking_uri=uri, experiment=cfg.tracking.experiment, run_key=old,
                                      by=run_id, why=tags["odeval.replaces"]):
            lines.append(f"  supersedes MLflow run {old_id} ({tags['odeval.replaces']})")
    path = experiment_ui_path(uri, cfg.tracking.experiment) or ""  # runs table with the headline columns
    where = (f"mlflow ui --backend-store-uri {uri}  → http://127.0.0.1:5000/" if uri.startswith("sqlite:")
             else uri.rstrip("/") + "/")
    lines.append(f"  view: {where}{path}")
    return lines
