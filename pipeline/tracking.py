"""MLflow logging for scored runs: idempotent by a ``run_key`` tag, nested under one parent run per sweep.

Why this shape:
- Re-scoring the same run outputs (``dvc repro -f score``) must update *one* MLflow run, not add duplicates, so a
  run is found by its deterministic ``run_key`` tag before one is created. Re-logged metrics get the next step
  (``odeval.revision``), so the latest value is unambiguous even when two logs land in the same millisecond.
- ``import mlflow`` costs ~2 s, so it is imported inside functions: ``--help`` and no-op stages stay fast.
- DVC queue runs execute in temp dirs: a relative ``sqlite:///mlflow.db`` would be created and lost there, so
  ``resolve_tracking_uri`` anchors it at the repo root, and artifacts of a sqlite store go to ``mlartifacts/``
  next to the database (MLflow's default would be relative to the current directory).
- MLflow retries an unreachable HTTP server for minutes by default (7 retries, backoff factor 2, 120 s timeout);
  we bound that (env vars the user did not set) and raise ``TrackingUnavailable`` with one line saying how to
  log later. DVC outputs are written before tracking, so nothing is lost.
- Parallel sweep jobs (joblib launcher) share one sqlite file: writes are serialised with a file lock next to it.

Uses ``MlflowClient`` (explicit run ids) rather than the fluent API: no global active-run state, safe in threads.
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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.secrets import redact
from pipeline.socs import soc_of
from pipeline.workspace import git_commit, git_dirty

__all__ = [
    "TrackingError",
    "TrackingUnavailable",
    "resolve_tracking_uri",
    "flatten",
    "redact",
    "log_run",
    "mark_superseded",
    "get_or_create_parent",
    "git_commit",
    "git_dirty",
    "provenance_tags",
    "headline_metrics",
    "experiment_ui_path",
    "ui_path",
    "SHARED_VIEW_TAG",
    "run_description",
    "iso_to_ms",
    "HEADLINE_METRICS",
    "EXPERIMENT_KIND_TAG",
    "EXPERIMENT_KIND",
    "MAX_PARAM_VAL_LENGTH",
    "HTTP_MAX_RETRIES",
    "HTTP_TIMEOUT_S",
]

# MLflow's limits (mlflow.utils.validation; a test checks they still match): hard-coded so flatten() works
# without importing mlflow.
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_KEY_LENGTH = 250
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000

# Bounds applied to MLflow's HTTP client unless the user set the env vars: 2 retries with backoff factor 1 and a
# 10 s timeout fail in well under a minute against a dead server (measured: connection refused fails at once).
HTTP_MAX_RETRIES = 2
HTTP_TIMEOUT_S = 10
HTTP_BACKOFF_FACTOR = 1

# MLflow 3's UI opens an experiment on its GenAI overview ("Traces 0") unless this experiment tag says it is a
# model-development experiment; then it opens on the runs table. Values from the UI bundle of MLflow 3.17
# (ExperimentKind enum); the "_inferred"/"no_inferred_type" ones are the UI's own guesses, which we replace.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
_GUESSED_KINDS = ("", "genai_development_inferred", "custom_model_development_inferred", "no_inferred_type")

# The few numbers a user compares runs by, under plain names (the full dotted set from score.json is logged too;
# pipeline/report reads the dotted names). name -> dotted source key.
HEADLINE_METRICS = {
    "decode_tok_s": "throughput.decode_tok_s.mean",
    "ttft_s": "throughput.ttft_s.p50",
    "quality": "quality.score",
    "on_topic_rate": "quality.on_topic_rate",
    "j_per_token": "energy_j_per_token",
}

# A saved runs-table view (MLflow UI "shared view state": an experiment tag read when the URL carries
# ?viewStateShareKey=<key>) whose columns are the headline metrics, so the table shows them without the user
# picking among ~80 metric names. Checked in headless Chromium against MLflow 3.17 (see /work notes).
SHARED_VIEW_KEY = "odeval"
SHARED_VIEW_TAG = "mlflow.sharedViewState." + SHARED_VIEW_KEY
VIEW_TAG_COLUMNS = ("device.kind", "device.model")

RUN_KEY_TAG = "run_key"
SWEEP_TAG = "sweep_id"
PARENT_ROLE_TAG = "odeval.role"
PARENT_ROLE = "sweep-parent"
REVISION_TAG = "odeval.revision"
MISSING_METRICS_TAG = "missing_metrics"
MISSING_ARTIFACTS_TAG = "missing_artifacts"
PARAMS_CHANGED_TAG = "params_changed"
SUPERSEDED_BY_TAG = "odeval.superseded_by"
KILLED_WHY_TAG = "odeval.killed"
PID_TAG, HOST_TAG = "odeval.pid", "odeval.host"  # who logs a run: a RUNNING run whose process is gone is KILLED
SUPERSEDED_WHY_TAG = "odeval.superseded_why"
TRUNCATED_SUFFIX = "...[truncated]"
UNKNOWN = "unknown"

_KEY_OK = re.compile(r"[^\w.\- /]")
# Values searched with a filter string (run_key, sweep_id): anything but quotes, backslash and control characters
# (a Hydra sweep dir name like "model=a,b" must work); they are put inside single quotes in the filter.
_RUN_KEY_OK = re.compile(r"^[^'\"\\`\x00-\x1f]{1,250}$")

class TrackingError(Exception):
    """Tracking was asked for something it cannot do (bad URI, bad run_key, MLflow refused a value)."""


class TrackingUnavailable(TrackingError):
    """The tracking store/server cannot be reached; the message says how to log the run later."""


# --------------------------------------------------------------------------------------------------- URIs


def resolve_tracking_uri(uri: str, root: Path) -> str:
    """Make a relative ``sqlite:///x.db`` absolute against ``root``; other URIs (http, https, …) unchanged.

    Why: ``dvc exp run --queue`` runs stages in temp dirs; a relative database would be created there and lost.
    MLflow 3 refuses the file store, so plain paths and ``file:`` URIs are rejected with the fix.
    """
    uri = (uri or "").strip()
    if not uri:
        raise TrackingError("tracking_uri is empty: set tracking.tracking_uri (e.g. sqlite:///mlflow.db) "
                            "or use tracking=none")
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme == "file":
        raise TrackingError(f"tracking_uri {uri!r} is a file store, which MLflow 3 refuses: use "
                            "sqlite:///mlflow.db (or an http(s):// tracking server)")
    if scheme != "sqlite":
        return uri
    if not rest.startswith("/"):
        raise TrackingError(f"tracking_uri {uri!r}: a sqlite URI needs three slashes, e.g. sqlite:///mlflow.db")
    path = rest[1:]
    if path == ":memory:" or path.startswith("/"):
        return uri
    return "sqlite:///" + str(Path(root).resolve() / path)


def _sqlite_path(uri: str) -> Path | None:
    """The database file of an absolute sqlite URI (None for other stores)."""
    if uri.startswith("sqlite:////"):
        return Path(uri[len("sqlite:///"):])
    return None


# --------------------------------------------------------------------------------------------------- params


def _stringify(value: Any) -> str:
    """JSON spelling for scalars (null/true/1.5) so params read like the YAML config, strings verbatim."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    return str(value)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(TRUNCATED_SUFFIX)] + TRUNCATED_SUFFIX


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray)


def flatten(cfg: Mapping[str, Any], sep: str = ".") -> dict[str, str]:
    """Nested config → flat ``{"model.name": "tiny-w4", "prompts.ids.0": "a"}`` with stringified, truncated values.

    Lists get their index as a key component, empty containers are kept as ``{}``/``[]`` (a param that vanished
    would hide a config difference), values are cut to MLflow's 6000-char param limit.
    """
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            items = [(str(k), v) for k, v in value.items()]
        elif _is_list(value):
            items = [(str(i), v) for i, v in enumerate(value)]
        else:
            out[prefix] = _truncate(_stringify(value), MAX_PARAM_VAL_LENGTH)
            return
        if not items and prefix:
            out[prefix] = "{}" if isinstance(value, Mapping) else "[]"
        for k, v in items:
            walk(f"{prefix}{sep}{k}" if prefix else k, v)

    walk("", cfg)
    return out


def _sanitize_key(key: str) -> str:
    """MLflow accepts alphanumerics, _ - . space / in metric/param names; anything else becomes '_'."""
    clean = _KEY_OK.sub("_", str(key)).strip("/ ") or "_"
    clean = re.sub(r"/{2,}", "/", clean).replace("..", "__")
    return clean[:MAX_KEY_LENGTH]


# --------------------------------------------------------------------------------------------------- mlflow


@contextlib.contextmanager
def _bounded_http() -> Iterator[None]:
    """Bound MLflow's HTTP retries/timeouts for this call unless the user configured them (env wins)."""
    bounds = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(HTTP_MAX_RETRIES),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(HTTP_TIMEOUT_S),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(HTTP_BACKOFF_FACTOR),
    }
    added = [k for k in bounds if k not in os.environ]
    for k in added:
        os.environ[k] = bounds[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _unavailable(uri: str, exc: BaseException) -> TrackingUnavailable:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return TrackingUnavailable(
        f"MLflow tracking store {uri} is unreachable ({type(exc).__name__}: {first}); the DVC outputs are written "
        f"— start the server / fix tracking.tracking_uri and log later with `dvc repro -f score`, or use tracking=none"
    )


@contextlib.contextmanager
def _session(tracking_uri: str) -> Iterator[Any]:
    """An MlflowClient for ``tracking_uri`` with bounded HTTP, a file lock for sqlite, errors mapped to ours."""
    with _bounded_http():
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        db = _sqlite_path(tracking_uri)
        lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if db is not None:
            from filelock import FileLock

            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _unavailable(tracking_uri, exc) from exc
            lock = FileLock(str(db) + ".lock", timeout=600)
        with _acquire(lock, tracking_uri):
            client = MlflowClient(tracking_uri=tracking_uri)
            try:
                client.search_experiments(max_results=1)  # connectivity probe: fails fast, before any write
            except Exception as exc:  # noqa: BLE001 — any failure to reach the store means "unavailable"
                raise _unavailable(tracking_uri, exc) from exc
            try:
                yield client
            except TrackingError:
                raise
            except Exception as exc:
                if _looks_like_connection_error(exc):
                    raise _unavailable(tracking_uri, exc) from exc
                if isinstance(exc, MlflowException):
                    first = (str(exc).strip().splitlines() or [""])[0][:300]
                    raise TrackingError(f"MLflow at {tracking_uri} refused the request: {first}") from exc
                raise


@contextlib.contextmanager
def _acquire(lock: contextlib.AbstractContextManager[Any], tracking_uri: str) -> Iterator[None]:
    """Enter the sqlite file lock; a lock held for 10 minutes by another job counts as 'unavailable'."""
    from filelock import Timeout

    try:
        lock.__enter__()
    except Timeout as exc:
        raise _unavailable(tracking_uri, exc) from exc
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _looks_like_connection_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return any(s in text for s in ("ConnectionError", "Max retries exceeded", "OperationalError", "timed out"))


def _experiment_id(client: Any, name: str, tracking_uri: str) -> str:
    """Find or create the experiment; sqlite stores get an absolute artifact location next to the database.

    Either way the experiment is marked as model development (``mlflow.experimentKind``) unless a user chose a
    kind, so ``mlflow ui`` opens it on the runs table rather than the empty GenAI traces overview."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage != "active":
            raise TrackingError(f"MLflow experiment {name!r} is deleted at {tracking_uri}: restore it "
                                "(mlflow experiments restore) or choose another tracking.experiment")
        if exp.tags.get(EXPERIMENT_KIND_TAG, "") in _GUESSED_KINDS:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        if exp.tags.get(SHARED_VIEW_TAG) != shared_view_state():
            client.set_experiment_tag(exp.experiment_id, SHARED_VIEW_TAG, shared_view_state())
        return exp.experiment_id
    db = _sqlite_path(tracking_uri)
    location = None
    if db is not None:
        safe = re.sub(r"[^\w.\-]+", "_", name)
        location = (db.parent / "mlartifacts" / safe).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND,
                                              SHARED_VIEW_TAG: shared_view_state()})
    except Exception:  # noqa: BLE001 — a parallel job may have created it in between (http stores: no lock)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _find_runs(client: Any, exp_id: str, tags: Mapping[str, str]) -> list[Any]:
    """Active runs in the experiment carrying all ``tags``, oldest first (the oldest wins after a race)."""
    for k, v in tags.items():
        if not _RUN_KEY_OK.match(v):
            raise TrackingError(f"tag {k}={v!r} cannot be searched: 1-250 chars without quotes, backslash or control "
                                "characters")
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return list(client.search_runs([exp_id], filter_string=flt, order_by=["attributes.start_time ASC"],
                                   max_results=50))


def shared_view_state() -> str:
    """The JSON of the runs-table view ``?viewStateShareKey=odeval`` opens: headline metrics + device tags."""
    cols = [f"metrics.`{k}`" for k in HEADLINE_METRICS] + [f"tags.`{k}`" for k in VIEW_TAG_COLUMNS]
    return json.dumps({"selectedColumns": cols})


def ui_path(experiment_id: str) -> str:
    """Where in ``mlflow ui`` the experiment's runs table opens with the headline columns (append to the UI's
    address). The ``/runs`` route opens the runs table whatever the UI's GenAI/model-training toggle says;
    ``workflowType=machine_learning`` also sets that toggle (MLflow 3.17 reads it from the URL before the browser's
    localStorage), so the side bar and the experiment's other pages are the model-training ones, not GenAI's."""
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={SHARED_VIEW_KEY}"


def experiment_ui_path(tracking_uri: str, experiment: str) -> str | None:
    """:func:`ui_path` of an experiment by name (None when it does not exist)."""
    with _session(tracking_uri) as client:
        exp = client.get_experiment_by_name(experiment)
        return None if exp is None else ui_path(exp.experiment_id)


def headline_metrics(flat: Mapping[str, float | None]) -> dict[str, float | None]:
    """The :data:`HEADLINE_METRICS` taken from the flat score metrics (None where the run did not measure it)."""
    return {plain: flat.get(dotted) for plain, dotted in HEADLINE_METRICS.items()}


_HEADLINE_LABELS = {
    "decode_tok_s": ("decode tok/s (mean)", ".2f"),
    "ttft_s": ("TTFT p50 (s)", ".3f"),
    "quality": ("quality score", ".3f"),
    "on_topic_rate": ("on-topic rate", ".2f"),
    "j_per_token": ("energy J/token", ".3g"),
}


def run_description(score: Mapping[str, Any], headline: Mapping[str, float | None]) -> str:
    """The run's description in the UI (markdown): the headline numbers with units, what is not measured and
    where the rest is, so a run page says what it measured without opening ~80 metric names."""
    kind = str(score.get("device_kind", "unknown"))
    lines = [f"**{score.get('n_prompts', '?')} prompts on a {kind} device**"
             + (" (host CPU — not a phone result)" if kind == "virtual" else ""), "",
             "| metric | value |", "| --- | --- |"]
    for key, (label, spec) in _HEADLINE_LABELS.items():
        v = headline.get(key)
        shown = "not measured" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)
        lines.append(f"| {label} (`{key}`) | {shown} |")
    fails = score.get("failures") or {}
    if fails:
        lines += ["", f"Failed answers: {fails.get('failed', 0)} of {fails.get('measured', '?')} (each scores 0)."]
    lines += ["", "Per prompt: Artifacts → `tables/prompts.json` and `prompts.csv`; every number: `score.json`."]
    return "\n".join(lines)


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
        key = _sanitize_key(k)
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
    for i in range(0, len(items), _PARAMS_PER_BATCH):
        client.log_batch(run.info.run_id, params=items[i : i + _PARAMS_PER_BATCH])
    if changed:
        warnings.warn(f"MLflow run {run.info.run_id}: params {sorted(changed)} differ from the first logging and "
                      f"cannot be changed; new values are in the {PARAMS_CHANGED_TAG!r} tag", stacklevel=3)
    return changed


def _log_metrics(client: Any, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric(k, v, ts, step) for k, v in metrics.items()]
    for i in range(0, len(items), _METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=items[i : i + _METRICS_PER_BATCH])


def _set_tags(client: Any, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(_sanitize_key(k), _truncate(str(v), MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
    for i in range(0, len(items), _PARAMS_PER_BATCH):
        client.log_batch(run_id, tags=items[i : i + _PARAMS_PER_BATCH])


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
    if not _RUN_KEY_OK.match(run_key or ""):
        raise TrackingError(f"run_key {run_key!r} must be 1-250 chars without quotes, backslash or control "
                            "characters (use a hash)")
    flat_params = {_sanitize_key(k): v for k, v in redact(flatten(params)).items()}
    present, missing = _prepare_metrics(metrics)
    with _session(tracking_uri) as client:
        exp_id = _experiment_id(client, experiment, tracking_uri)
        found = _live_runs(client, _find_runs(client, exp_id, {RUN_KEY_TAG: run_key}), tracking_uri)
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
                          else {"error": _truncate(f"{type(e).__name__}: {e}", MAX_TAG_VAL_LENGTH)})
                client.set_terminated(run_id, status="KILLED" if interrupted else "FAILED")
            raise


def _live_runs(client: Any, runs: list[Any], tracking_uri: str) -> list[Any]:
    """The runs worth updating; a RUNNING one whose logging process is gone is closed as KILLED (and skipped).

    With a sqlite store every log holds its file lock, so a RUNNING run found under it is always orphaned; on a
    server store it is orphaned when it was created on this host by a process that no longer exists."""
    live = []
    for r in runs:
        status = r.info.status
        if status == "RUNNING" and _orphaned(r, sqlite=_sqlite_path(tracking_uri) is not None):
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
    with _session(tracking_uri) as client:
        exp_id = _experiment_id(client, experiment, tracking_uri)
        old = [r for r in _find_runs(client, exp_id, {RUN_KEY_TAG: run_key}) if r.info.run_id != by]
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
    if not _RUN_KEY_OK.match(sweep_id or ""):
        raise TrackingError(f"sweep_id {sweep_id!r} must be 1-250 chars without quotes, backslash or control "
                            "characters")
    with _session(tracking_uri) as client:
        exp_id = _experiment_id(client, experiment, tracking_uri)
        found = _find_runs(client, exp_id, {SWEEP_TAG: sweep_id, PARENT_ROLE_TAG: PARENT_ROLE})
        if found:
            return found[0].info.run_id
        run = client.create_run(exp_id, tags={SWEEP_TAG: sweep_id, PARENT_ROLE_TAG: PARENT_ROLE},
                                run_name=f"sweep-{sweep_id}")
        run_id = run.info.run_id
        oldest = _find_runs(client, exp_id, {SWEEP_TAG: sweep_id, PARENT_ROLE_TAG: PARENT_ROLE})
        if oldest and oldest[0].info.run_id != run_id:  # lost a race (http stores have no file lock)
            client.delete_run(run_id)
            return oldest[0].info.run_id
        if params:
            _log_params(client, run, {_sanitize_key(k): v for k, v in redact(flatten(params)).items()})
        if tags:
            _set_tags(client, run_id, {k: str(v) for k, v in redact(dict(tags)).items()})
        client.set_terminated(run_id, status="FINISHED")
        return run_id


# --------------------------------------------------------------------------------------------------- provenance


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


def _first(*values: Any) -> str:
    for v in values:
        if v is not None and str(v).strip() != "":
            return str(v)
    return UNKNOWN


def provenance_tags(
    run_json: Mapping[str, Any],
    fetch_json: Mapping[str, Any],
    push_json: Mapping[str, Any],
    *,
    root: Path | None = None,
    sweep_id: str | None = None,
) -> dict[str, str]:
    """Tags that say what produced a score: device, app/model manifests, git state, dvc exp name, sweep id.

    Reads (all optional; a missing value becomes "unknown"): device from ``run_json["device"]`` else
    ``push_json["device"]`` (``kind``, ``serial``, ``props["ro.product.model"]``, ``props["ro.soc.model"]`` with
    ``ro.board.platform`` as fallback); manifests from ``fetch_json["model"|"app"]["manifest_sha256"]``; git from
    ``run_json["git"]["commit"|"dirty"]`` (what produced the responses), else computed at ``root``;
    ``sweep_id`` argument, else ``run_json["sweep_id"]``; ``dvc.exp_name`` from env DVC_EXP_NAME.
    """
    run_dev = _get(run_json, "device")
    push_dev = _get(push_json, "device")

    def dev(*keys: str) -> Any:
        return _first(_get(run_dev, *keys), _get(push_dev, *keys))

    soc = _first(soc_of(_get(run_dev, "props")), soc_of(_get(push_dev, "props")))
    commit = _get(run_json, "git", "commit")
    dirty = _get(run_json, "git", "dirty")
    if commit is None and root is not None:
        commit, dirty = git_commit(root), git_dirty(root)
    return {
        "device.kind": dev("kind"),
        "device.model": dev("props", "ro.product.model"),
        "device.soc": soc,
        "device.serial": dev("serial"),
        # how the virtual device was confined: landlock-abi<N>, or off (the user's opt-out); a phone confines itself
        "device.sandbox": "n/a" if dev("kind") == "real" else dev("props", "ro.odeval.sandbox"),
        "app.manifest_sha256": _first(_get(fetch_json, "app", "manifest_sha256")),
        "model.manifest_sha256": _first(_get(fetch_json, "model", "manifest_sha256")),
        "git.commit": _first(commit),
        "git.dirty": UNKNOWN if dirty is None else str(bool(dirty)).lower(),
        "dvc.exp_name": _first(os.environ.get("DVC_EXP_NAME")),
        "sweep_id": _first(sweep_id, _get(run_json, "sweep_id")),
    }


def log_failed_job(*, tracking_uri: str, experiment: str, parent_run_id: str | None, run_name: str, error: str,
                   tags: Mapping[str, str], status: str = "FAILED") -> str:
    """A child run for a sweep job that did not finish (``FAILED``, or ``KILLED`` when an interruption stopped it),
    so the sweep's failures show in the UI. Its ``error`` tag holds the one-line reason (redacted like every tag)."""
    with _session(tracking_uri) as client:
        exp_id = _experiment_id(client, experiment, tracking_uri)
        all_tags = {**tags, "error": _truncate(error, MAX_TAG_VAL_LENGTH), "odeval.status": status.lower()}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(exp_id, tags={k: str(v) for k, v in redact(all_tags).items()}, run_name=run_name)
        client.set_terminated(run.info.run_id, status=status)
        return run.info.run_id


def mark_parent(*, tracking_uri: str, parent_run_id: str, tags: Mapping[str, str], failed: bool,
                status: str | None = None) -> None:
    """Record a sweep's outcome on its parent run (e.g. which jobs failed); FAILED when any job failed, or the
    given ``status`` (KILLED: the sweep was interrupted)."""
    with _session(tracking_uri) as client:
        _set_tags(client, parent_run_id, {k: str(v) for k, v in redact(dict(tags)).items()})
        client.set_terminated(parent_run_id, status=status or ("FAILED" if failed else "FINISHED"))


def close_running_children(*, tracking_uri: str, experiment: str, parent_run_id: str) -> list[str]:
    """End every child run of ``parent_run_id`` still RUNNING as KILLED (their process was interrupted)."""
    with _session(tracking_uri) as client:
        exp_id = _experiment_id(client, experiment, tracking_uri)
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
