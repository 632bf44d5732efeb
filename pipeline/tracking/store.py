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
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.tracking.views import SHARED_VIEW_TAG, shared_view_state, ui_path

# MLflow's limits (mlflow.utils.validation; a test checks they still match): hard-coded so flatten() works
# without importing mlflow.
MAX_PARAM_VAL_LENGTH = 6000


MAX_TAG_VAL_LENGTH = 8000


MAX_KEY_LENGTH = 250


PARAMS_PER_BATCH = 100


METRICS_PER_BATCH = 1000


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


GUESSED_KINDS = ("", "genai_development_inferred", "custom_model_development_inferred", "no_inferred_type")


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


KEY_OK = re.compile(r"[^\w.\- /]")


# Values searched with a filter string (run_key, sweep_id): anything but quotes, backslash and control characters
# (a Hydra sweep dir name like "model=a,b" must work); they are put inside single quotes in the filter.
RUN_KEY_OK = re.compile(r"^[^'\"\\`\x00-\x1f]{1,250}$")


class TrackingError(Exception):
    """Tracking was asked for something it cannot do (bad URI, bad run_key, MLflow refused a value)."""


class TrackingUnavailable(TrackingError):
    """The tracking store/server cannot be reached; the message says how to log the run later."""


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


def sqlite_path(uri: str) -> Path | None:
    """The database file of an absolute sqlite URI (None for other stores)."""
    if uri.startswith("sqlite:////"):
        return Path(uri[len("sqlite:///"):])
    return None


def stringify(value: Any) -> str:
    """JSON spelling for scalars (null/true/1.5) so params read like the YAML config, strings verbatim."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    return str(value)


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(TRUNCATED_SUFFIX)] + TRUNCATED_SUFFIX


def is_list(value: Any) -> bool:
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
        elif is_list(value):
            items = [(str(i), v) for i, v in enumerate(value)]
        else:
            out[prefix] = truncate(stringify(value), MAX_PARAM_VAL_LENGTH)
            return
        if not items and prefix:
            out[prefix] = "{}" if isinstance(value, Mapping) else "[]"
        for k, v in items:
            walk(f"{prefix}{sep}{k}" if prefix else k, v)

    walk("", cfg)
    return out


def sanitize_key(key: str) -> str:
    """MLflow accepts alphanumerics, _ - . space / in metric/param names; anything else becomes '_'."""
    clean = KEY_OK.sub("_", str(key)).strip("/ ") or "_"
    clean = re.sub(r"/{2,}", "/", clean).replace("..", "__")
    return clean[:MAX_KEY_LENGTH]


@contextlib.contextmanager
def bounded_http() -> Iterator[None]:
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


def unavailable(uri: str, exc: BaseException) -> TrackingUnavailable:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return TrackingUnavailable(
        f"MLflow tracking store {uri} is unreachable ({type(exc).__name__}: {first}); the DVC outputs are written "
        f"— start the server / fix tracking.tracking_uri and log later with `dvc repro -f score`, or use tracking=none"
    )


@contextlib.contextmanager
def session(tracking_uri: str) -> Iterator[Any]:
    """An MlflowClient for ``tracking_uri`` with bounded HTTP, a file lock for sqlite, errors mapped to ours."""
    with bounded_http():
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        db = sqlite_path(tracking_uri)
        lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if db is not None:
            from filelock import FileLock

            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise unavailable(tracking_uri, exc) from exc
            lock = FileLock(str(db) + ".lock", timeout=600)
        with acquire_lock(lock, tracking_uri):
            client = MlflowClient(tracking_uri=tracking_uri)
            try:
                client.search_experiments(max_results=1)  # connectivity probe: fails fast, before any write
            except Exception as exc:  # noqa: BLE001 — any failure to reach the store means "unavailable"
                raise unavailable(tracking_uri, exc) from exc
            try:
                yield client
            except TrackingError:
                raise
            except Exception as exc:
                if looks_like_connection_error(exc):
                    raise unavailable(tracking_uri, exc) from exc
                if isinstance(exc, MlflowException):
                    first = (str(exc).strip().splitlines() or [""])[0][:300]
                    raise TrackingError(f"MLflow at {tracking_uri} refused the request: {first}") from exc
                raise


@contextlib.contextmanager
def acquire_lock(lock: contextlib.AbstractContextManager[Any], tracking_uri: str) -> Iterator[None]:
    """Enter the sqlite file lock; a lock held for 10 minutes by another job counts as 'unavailable'."""
    from filelock import Timeout

    try:
        lock.__enter__()
    except Timeout as exc:
        raise unavailable(tracking_uri, exc) from exc
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def looks_like_connection_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return any(s in text for s in ("ConnectionError", "Max retries exceeded", "OperationalError", "timed out"))


def experiment_id(client: Any, name: str, tracking_uri: str) -> str:
    """Find or create the experiment; sqlite stores get an absolute artifact location next to the database.

    Either way the experiment is marked as model development (``mlflow.experimentKind``) unless a user chose a
    kind, so ``mlflow ui`` opens it on the runs table rather than the empty GenAI traces overview."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage != "active":
            raise TrackingError(f"MLflow experiment {name!r} is deleted at {tracking_uri}: restore it "
                                "(mlflow experiments restore) or choose another tracking.experiment")
        if exp.tags.get(EXPERIMENT_KIND_TAG, "") in GUESSED_KINDS:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        if exp.tags.get(SHARED_VIEW_TAG) != shared_view_state():
            client.set_experiment_tag(exp.experiment_id, SHARED_VIEW_TAG, shared_view_state())
        return exp.experiment_id
    db = sqlite_path(tracking_uri)
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


def find_runs(client: Any, exp_id: str, tags: Mapping[str, str]) -> list[Any]:
    """Active runs in the experiment carrying all ``tags``, oldest first (the oldest wins after a race)."""
    for k, v in tags.items():
        if not RUN_KEY_OK.match(v):
            raise TrackingError(f"tag {k}={v!r} cannot be searched: 1-250 chars without quotes, backslash or control "
                                "characters")
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return list(client.search_runs([exp_id], filter_string=flt, order_by=["attributes.start_time ASC"],
                                   max_results=50))


def experiment_ui_path(tracking_uri: str, experiment: str) -> str | None:
    """:func:`ui_path` of an experiment by name (None when it does not exist)."""
    with session(tracking_uri) as client:
        exp = client.get_experiment_by_name(experiment)
        return None if exp is None else ui_path(exp.experiment_id)
