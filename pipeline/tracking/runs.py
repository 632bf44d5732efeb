"""One MLflow run per scored run, found again by its ``run_key`` tag: re-scoring updates it (the next step,
``odeval.revision``) instead of adding a duplicate; a run of another identity marks the old ones superseded; a
sweep's parent is created once.  Uses ``MlflowClient`` with explicit run ids: no global active-run state.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.secrets import redact
from pipeline.tracking.store import (
    HOST_TAG,
    KILLED_WHY_TAG,
    MAX_TAG_VAL_LENGTH,
    METRICS_PER_BATCH,
    MISSING_ARTIFACTS_TAG,
    MISSING_METRICS_TAG,
    PARAMS_CHANGED_TAG,
    PARAMS_PER_BATCH,
    PARENT_ROLE,
    PARENT_ROLE_TAG,
    PID_TAG,
    REVISION_TAG,
    RUN_KEY_OK,
    RUN_KEY_TAG,
    SUPERSEDED_BY_TAG,
    SUPERSEDED_WHY_TAG,
    SWEEP_TAG,
    TrackingError,
    experiment_id,
    find_runs,
    flatten,
    sanitize_key,
    session,
    sqlite_path,
    truncate,
)


def iso_to_ms(value: Any) -> int | None:
    """Epoch milliseconds of an ISO-8601 time (run.json ``started``/``ended``; naive = UTC); None if absent/bad."""
    from datetime import UTC, datetime

    if not isinstance(value, str) or not value.strip():
        return None
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


def _prepare_metrics(metrics: Mapping[str, float | None]) -> tuple[dict[str, float], list[str]]:
    """Split metrics into loggable floats and missing keys (None/NaN/inf: never invented, listed in a tag)."""
    present: dict[str, float] = {}
    missing: list[str] = []
    for k, v in metrics.items():
        key = sanitize_key(k)
        if v is None or isinstance(v, str):
            missing.append(key)
            continue
        x = float(v)
        if math.isfinite(x):
            present[key] = x
        else:
            missing.append(key)
    return present, sorted(missing)


def _log_params(client: Any, run: Any, params: Mapping[str, str]) -> dict[str, str]:
    """Log params not yet on the run; a param whose value changed cannot be re-logged (MLflow forbids it), so
    the new values are returned for a ``params_changed`` tag and a warning — the run keeps its first values."""
    from mlflow.entities import Param

    existing = dict(run.data.params) if run is not None else {}
    new = {k: v for k, v in params.items() if k not in existing}
    changed = {k: v for k, v in params.items() if k in existing and existing[k] != v}
    items = [Param(k, v) for k, v in new.items()]
    for i in range(0, len(items), PARAMS_PER_BATCH):
        client.log_batch(run.info.run_id, params=items[i : i + PARAMS_PER_BATCH])
    if changed:
        warnings.warn(f"MLflow run {run.info.run_id}: params {sorted(changed)} differ from the first logging and "
                      f"cannot be changed; new values are in the {PARAMS_CHANGED_TAG!r} tag", stacklevel=3)
    return changed


def _log_metrics(client: Any, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric(k, v, ts, step) for k, v in metrics.items()]
    for i in range(0, len(items), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=items[i : i + METRICS_PER_BATCH])


def _set_tags(client: Any, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(sanitize_key(k), truncate(str(v), MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
    for i in range(0, len(items), PARAMS_PER_BATCH):
        client.log_batch(run_id, tags=items[i : i + PARAMS_PER_BATCH])


def _log_artifacts(client: Any, run_id: str, artifacts: Sequence[Path]) -> list[str]:
    """Upload files (to the root) and directories (under their own name); re-logging overwrites same names.
    Missing paths are skipped and returned (listed in a tag) rather than failing the whole run log."""
    missing = []
    for p in map(Path, artifacts):
        if p.is_dir():
            client.log_artifacts(run_id, str(p), artifact_path=p.name)
        elif p.is_file():
            client.log_artifact(run_id, str(p))
        else:
            missing.append(str(p))
    if missing:
        warnings.warn(f"MLflow run {run_id}: artifacts not found, skipped: {missing}", stacklevel=3)
    return missing


def _table_file(name: str) -> str:
    name = re.sub(r"[^\w.\-/]+", "_", name).strip("/") or "table"
    return name if name.endswith((".json", ".parquet")) else f"tables/{name}.json"


def _log_tables(client: Any, run_id: str, tables: Mapping[str, list[dict[str, Any]]]) -> None:
    """``log_table`` appends to an existing table file, which would double the rows on every re-score; so a
    table already in the run is overwritten in place with the same JSON layout log_table writes."""
    import pandas as pd

    for name, rows in tables.items():
        artifact_file = _table_file(name)
        df = pd.DataFrame(list(rows))
        folder = artifact_file.rpartition("/")[0] or None
        existing = {f.path for f in client.list_artifacts(run_id, path=folder)}
        if artifact_file not in existing:
            client.log_table(run_id, data=df, artifact_file=artifact_file)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / artifact_file.rpartition("/")[2]
            if artifact_file.endswith(".json"):
                df.to_json(local, orient="split", index=False, date_format="iso")
            else:
                df.to_parquet(local, index=False)
            client.log_artifact(run_id, str(local), artifact_path=folder)


def log_run(
    *,
    tracking_uri: str,
    experiment: str,
    run_key: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float | None],
    tags: Mapping[str, str],
    artifacts: Sequence[Path],
    tables: Mapping[str, list[dict[str, Any]]] | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    start_time_ms: int | None = None,
    end_time_ms: int | None = None,
    description: str | None = None,
) -> str:
    """Create or update the MLflow run tagged ``run_key`` in ``experiment``; return its run id.

    ``start_time_ms``/``end_time_ms`` are when the measured work really ran (the on-device run), so the UI shows
    its real start and duration rather than the instant ``score`` logged it; ``description`` becomes the run's
    description (markdown, ``mlflow.note.content``).
    ``params`` may be nested (flattened here) and are redacted, as are tags. None/NaN metrics are skipped and
    named in the ``missing_metrics`` tag; on an update, a metric that was logged before but is now missing gets
    NaN so the run does not keep showing a stale value. Re-logged metrics use step = revision (1, 2, …).
    Tables (``name → rows``) go through ``log_table`` (``tables/<name>.json``). ``parent_run_id`` nests the run.
    Raises TrackingUnavailable when the store cannot be reached, TrackingError when MLflow refuses a value.
    """
    if not RUN_KEY_OK.match(run_key or ""):
        raise TrackingError(f"run_key {run_key!r} must be 1-250 chars without quotes, backslash or control "
                            "characters (use a hash)")
    flat_params = {sanitize_key(k): v for k, v in redact(flatten(params)).items()}
    present, missing = _prepare_metrics(metrics)
    with session(tracking_uri) as client:
        exp_id = experiment_id(client, experiment, tracking_uri)
        found = _live_runs(client, find_runs(client, exp_id, {RUN_KEY_TAG: run_key}), tracking_uri)
        if found:
            run = client.get_run(found[0].info.run_id)
            revision = int(run.data.tags.get(REVISION_TAG, "0")) + 1
            stale = [k for k in run.data.metrics if k in missing]
        else:
            start_tags = {RUN_KEY_TAG: run_key, PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
            if parent_run_id:
                start_tags["mlflow.parentRunId"] = parent_run_id
            run = client.create_run(exp_id, tags=start_tags, run_name=run_name, start_time=start_time_ms)
            revision, stale = 1, []
        run_id = run.info.run_id
        try:
            return _fill_run(client, run, flat_params, present, missing, stale, revision, artifacts, tables, tags,
                             run_key, parent_run_id, run_name, found, description, end_time_ms)
        except BaseException as e:  # Ctrl-C, SIGTERM, an error mid-log: the run is incomplete, never left RUNNING
            interrupted = isinstance(e, KeyboardInterrupt | SystemExit)
            with contextlib.suppress(Exception):
                _set_tags(client, run_id, {KILLED_WHY_TAG: "its logging was interrupted"} if interrupted
                          else {"error": truncate(f"{type(e).__name__}: {e}", MAX_TAG_VAL_LENGTH)})
                client.set_terminated(run_id, status="KILLED" if interrupted else "FAILED")
            raise


def _live_runs(client: Any, runs: list[Any], tracking_uri: str) -> list[Any]:
    """The runs worth updating; a RUNNING one whose logging process is gone is closed as KILLED (and skipped).

    With a sqlite store every log holds its file lock, so a RUNNING run found under it is always orphaned; on a
    server store it is orphaned when it was created on this host by a process that no longer exists."""
    live = []
    for r in runs:
        status = r.info.status
        if status == "RUNNING" and _orphaned(r, sqlite=sqlite_path(tracking_uri) is not None):
            _set_tags(client, r.info.run_id, {KILLED_WHY_TAG: f"its process (pid {r.data.tags.get(PID_TAG, '?')}) "
                                              "ended before it finished logging"})
            client.set_terminated(r.info.run_id, status="KILLED")
        elif status in ("RUNNING", "FINISHED"):  # KILLED/FAILED: an incomplete log, kept as history, not reused
            live.append(r)
    return live


def _orphaned(run: Any, sqlite: bool) -> bool:
    if sqlite:
        return True
    pid, host = run.data.tags.get(PID_TAG), run.data.tags.get(HOST_TAG)
    if host != socket.gethostname() or not (pid or "").isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _fill_run(client: Any, run: Any, flat_params: dict[str, str], present: dict[str, float], missing: list[str],
              stale: list[str], revision: int, artifacts: Sequence[Path], tables: Mapping[str, Any] | None,
              tags: Mapping[str, str], run_key: str, parent_run_id: str | None, run_name: str | None,
              found: list[Any], description: str | None, end_time_ms: int | None) -> str:
    """Log everything of :func:`log_run` into ``run`` and end it FINISHED."""
    run_id = run.info.run_id
    changed = _log_params(client, run, flat_params)
    _log_metrics(client, run_id, {**present, **dict.fromkeys(stale, math.nan)}, step=revision)
    missing_art = _log_artifacts(client, run_id, artifacts)
    _log_tables(client, run_id, tables or {})
    all_tags = {k: str(v) for k, v in redact(dict(tags)).items()}
    all_tags.update({
        RUN_KEY_TAG: run_key,
        REVISION_TAG: str(revision),
        MISSING_METRICS_TAG: ",".join(missing),
        MISSING_ARTIFACTS_TAG: ",".join(missing_art),
    })
    if changed:
        all_tags[PARAMS_CHANGED_TAG] = json.dumps(changed, sort_keys=True)
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    if run_name and found:
        all_tags["mlflow.runName"] = run_name
    if description:
        all_tags["mlflow.note.content"] = description
    _set_tags(client, run_id, all_tags)
    client.set_terminated(run_id, status="FINISHED", end_time=end_time_ms)
    return run_id


def mark_superseded(*, tracking_uri: str, experiment: str, run_key: str, by: str, why: str) -> list[str]:
    """Tag the runs logged under ``run_key`` as superseded by run ``by`` (their numbers are of results this
    directory no longer holds); returns their ids. Status and metrics are left as they were: history stays."""
    with session(tracking_uri) as client:
        exp_id = experiment_id(client, experiment, tracking_uri)
        old = [r for r in find_runs(client, exp_id, {RUN_KEY_TAG: run_key}) if r.info.run_id != by]
        for r in old:
            _set_tags(client, r.info.run_id, {SUPERSEDED_BY_TAG: by, SUPERSEDED_WHY_TAG: why})
        return [r.info.run_id for r in old]


def get_or_create_parent(
    *,
    tracking_uri: str,
    experiment: str,
    sweep_id: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """The one parent run of a sweep (found by ``sweep_id`` + ``odeval.role=sweep-parent`` tags), created once.

    Children carry the ``sweep_id`` tag too, hence the role tag. Returns the run id; safe to call from every job.
    """
    if not RUN_KEY_OK.match(sweep_id or ""):
        raise TrackingError(f"sweep_id {sweep_id!r} must be 1-250 chars without quotes, backslash or control "
                            "characters")
    with session(tracking_uri) as client:
        exp_id = experiment_id(client, experiment, tracking_uri)
        found = find_runs(client, exp_id, {SWEEP_TAG: sweep_id, PARENT_ROLE_TAG: PARENT_ROLE})
        if found:
            return found[0].info.run_id
        run = client.create_run(exp_id, tags={SWEEP_TAG: sweep_id, PARENT_ROLE_TAG: PARENT_ROLE},
                                run_name=f"sweep-{sweep_id}")
        run_id = run.info.run_id
        oldest = find_runs(client, exp_id, {SWEEP_TAG: sweep_id, PARENT_ROLE_TAG: PARENT_ROLE})
        if oldest and oldest[0].info.run_id != run_id:  # lost a race (http stores have no file lock)
            client.delete_run(run_id)
            return oldest[0].info.run_id
        if params:
            _log_params(client, run, {sanitize_key(k): v for k, v in redact(flatten(params)).items()})
        if tags:
            _set_tags(client, run_id, {k: str(v) for k, v in redact(dict(tags)).items()})
        client.set_terminated(run_id, status="FINISHED")
        return run_id
