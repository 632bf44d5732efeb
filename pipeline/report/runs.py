"""Read scored runs back from MLflow: params, latest metrics, tags and the per-prompt artifacts.

Why a plain dataclass (``RunRecord``) and not MLflow's entities: the analysis modules are pure functions over
records, so tests and other callers can build records without a store, and only this module imports mlflow.
A missing artifact is recorded as ``None`` plus a reason (never an empty list that would look like "no prompts").
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.report import ReportError
from pipeline.tracking import PARENT_ROLE, SUPERSEDED_BY_TAG, SWEEP_TAG  # tag names: defined once
from pipeline.tracking import PARENT_ROLE_TAG as ROLE_TAG

ARTIFACTS = ("responses.jsonl", "quality.jsonl")
_SAFE_VALUE = re.compile(r"^[\w.\-: /=+,@]{1,250}$")


@dataclass
class RunRecord:
    """One scored MLflow run as the report sees it."""

    run_id: str
    name: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    start_time: int = 0
    artifacts: dict[str, list[dict[str, Any]] | None] = field(default_factory=dict)
    artifact_reasons: dict[str, str] = field(default_factory=dict)

    def metric(self, key: str) -> float | None:
        """A metric's latest value; None when absent or NaN (log_run writes NaN over a metric that went missing)."""
        v = self.metrics.get(key)
        return None if v is None or not math.isfinite(v) else float(v)

    @property
    def device_kind(self) -> str:
        return self.tags.get("device.kind") or self.params.get("device.kind") or "unknown"

    def rows(self, name: str) -> list[dict[str, Any]] | None:
        """Rows of a downloaded jsonl artifact (None when it was not logged or could not be read)."""
        return self.artifacts.get(name)

    def reason(self, name: str) -> str:
        return self.artifact_reasons.get(name, f"{name} not loaded")


def _check(kind: str, value: str) -> str:
    """Values go into an MLflow filter string: only identifier-like text, never quotes (no filter injection)."""
    if not _SAFE_VALUE.match(value) or "'" in value or '"' in value:
        raise ReportError(f"--{kind} {value!r}: only letters, digits and _ . - : / = + , @ are allowed")
    return value


def _experiment_ids(client: Any, experiment: str | None) -> list[str]:
    if experiment is None:
        return [e.experiment_id for e in client.search_experiments()]
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ReportError(f"--experiment {experiment!r}: no such MLflow experiment (have: {', '.join(names) or 'none'})"
                          " — or select by --sweep ID / --tag NAME")
    return [exp.experiment_id]


def _search_all(client: Any, exp_ids: list[str], flt: str) -> list[Any]:
    """All matching runs across pages (search_runs returns at most max_results per call)."""
    out, token = [], None
    while True:
        page = client.search_runs(exp_ids, filter_string=flt, max_results=1000, page_token=token,
                                  order_by=["attributes.start_time ASC"])
        out.extend(page)
        token = page.token
        if not token:
            return out


def _to_record(run: Any) -> RunRecord:
    tags = dict(run.data.tags)
    return RunRecord(run_id=run.info.run_id, name=tags.get("mlflow.runName") or run.info.run_name or run.info.run_id,
                     params=dict(run.data.params), metrics=dict(run.data.metrics), tags=tags,
                     start_time=int(run.info.start_time or 0))


def select_runs(tracking_uri: str, *, experiment: str | None = None, sweep: str | None = None,
                tag: str | None = None, load_artifacts: bool = True) -> list[RunRecord]:
    """Finished scored runs matching all given selectors (sweep parents and superseded runs excluded), oldest
    first.

    ``experiment``: MLflow experiment name (all experiments when None and a sweep/tag is given; ``odeval``, the
    default of conf/tracking, when nothing is given). ``sweep``: the ``sweep_id`` tag. ``tag``: the ``tag`` param
    (the experiment preset, e.g. diagnose-offtopic).
    """
    from mlflow import MlflowClient

    db = Path(tracking_uri[len("sqlite:///"):]) if tracking_uri.startswith("sqlite:////") else None
    if db is not None and not db.is_file():
        # MlflowClient would silently create an empty database here; a report of nothing helps no one.
        raise ReportError(f"--tracking-uri {tracking_uri}: {db} does not exist — run a sweep first "
                          "(python -m pipeline -m ...) or point --tracking-uri at the store that has the runs")
    if experiment is None and sweep is None and tag is None:
        experiment = "odeval"
    parts = ["attributes.status = 'FINISHED'"]
    if sweep is not None:
        parts.append(f"tags.`{SWEEP_TAG}` = '{_check('sweep', sweep)}'")
    if tag is not None:
        parts.append(f"params.`tag` = '{_check('tag', tag)}'")
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        exp_ids = _experiment_ids(client, experiment)
        runs = _search_all(client, exp_ids, " and ".join(parts)) if exp_ids else []
    except ReportError:
        raise
    except Exception as exc:  # noqa: BLE001 — any store failure: one line naming the URI
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ReportError(f"cannot read MLflow store {tracking_uri}: {first} — check --tracking-uri") from exc
    # a superseded run holds results its directory replaced (new code/config/prompts): never compared as current
    current = [r for r in runs if r.data.tags.get(ROLE_TAG) != PARENT_ROLE and not r.data.tags.get(SUPERSEDED_BY_TAG)]
    records = newest_per_config([_to_record(r) for r in current])
    if load_artifacts:
        for rec in records:
            load_run_artifacts(client, rec)
    return records


def newest_per_config(records: list[RunRecord]) -> list[RunRecord]:
    """One run per configuration (identical params): the newest. WHY: a sweep run again after its job dirs were
    deleted (or a preset re-run) logs new runs beside the old ones, which nothing superseded; comparing both would
    list every job twice. The set-aside runs are named on stderr."""
    newest: dict[tuple[tuple[str, str], ...], RunRecord] = {}
    for rec in sorted(records, key=lambda r: r.start_time):
        newest[tuple(sorted(rec.params.items()))] = rec
    kept = {r.run_id for r in newest.values()}
    older = [r.run_id[:8] for r in records if r.run_id not in kept]
    if older:
        print(f"report: {len(older)} older run(s) of a configuration that has a newer run set aside: "
              f"{', '.join(older)}", file=sys.stderr)
    return [r for r in records if r.run_id in kept]


def _find_artifact(client: Any, run_id: str, name: str) -> str | None:
    """Path of ``name`` at the artifact root, else one directory level down (stages may log a run/ dir)."""
    entries = client.list_artifacts(run_id)
    for e in entries:
        if not e.is_dir and e.path.rsplit("/", 1)[-1] == name:
            return e.path
    for e in entries:
        if e.is_dir:
            for sub in client.list_artifacts(run_id, e.path):
                if not sub.is_dir and sub.path.rsplit("/", 1)[-1] == name:
                    return sub.path
    return None


def parse_jsonl(text: str, where: str) -> list[dict[str, Any]]:
    """Rows of a jsonl text; a bad line raises ValueError naming the file and line."""
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}:{i}: not JSON ({exc.msg})") from exc
    return rows


def load_run_artifacts(client: Any, rec: RunRecord, names: Sequence[str] = ARTIFACTS) -> None:
    """Download each named jsonl artifact into ``rec.artifacts``; a missing/unreadable one → None + reason."""
    try:
        listing = {n: _find_artifact(client, rec.run_id, n) for n in names}
    except Exception as exc:  # noqa: BLE001 — artifact store unreachable: every artifact missing, with the reason
        for n in names:
            rec.artifacts[n], rec.artifact_reasons[n] = None, f"artifact store unreadable ({type(exc).__name__})"
        return
    # MLflow draws a progress bar per download: dozens of bars on stderr for a sweep. The user's setting wins.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        for n, path in listing.items():
            if path is None:
                logged_missing = rec.tags.get("missing_artifacts", "")
                extra = " (the run's missing_artifacts tag names it)" if n.split(".")[0] in logged_missing else ""
                rec.artifacts[n] = None
                rec.artifact_reasons[n] = f"missing: {n} was not logged to run {rec.run_id}{extra}"
                continue
            try:
                local = client.download_artifacts(rec.run_id, path, tmp)
                rec.artifacts[n] = parse_jsonl(Path(local).read_text(encoding="utf-8"), f"{rec.run_id}/{path}")
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                rec.artifacts[n], rec.artifact_reasons[n] = None, f"missing: {path} unreadable ({exc})"


def measured_rows(rows: Sequence[Mapping[str, Any]] | None) -> list[Mapping[str, Any]] | None:
    """Rows that count (warm-up repeats excluded), like pipeline.score.summary.measured; None stays None."""
    return None if rows is None else [r for r in rows if not r.get("warmup")]
