"""MLflow tracking for scored runs: ``store`` (URIs, sessions, params, limits), ``runs`` (one run per run_key,
superseded runs, sweep parents), ``tags`` (provenance), ``sweeps`` (a sweep's parent and children), ``views``
(what ``mlflow ui`` opens on).  ``import mlflow`` costs ~2 s: every module imports it inside functions."""

from pipeline.tracking.runs import get_or_create_parent, iso_to_ms, log_run, mark_superseded
from pipeline.tracking.store import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    MAX_KEY_LENGTH,
    MAX_PARAM_VAL_LENGTH,
    MAX_TAG_VAL_LENGTH,
    PARENT_ROLE,
    PARENT_ROLE_TAG,
    REVISION_TAG,
    SUPERSEDED_BY_TAG,
    SWEEP_TAG,
    TrackingError,
    TrackingUnavailable,
    experiment_ui_path,
    flatten,
    resolve_tracking_uri,
)
from pipeline.tracking.sweeps import close_running_children, log_failed_job, mark_parent, sweep_parent
from pipeline.tracking.tags import provenance_tags
from pipeline.tracking.views import (
    HEADLINE_METRICS,
    OPTIONAL_HEADLINE_METRICS,
    SHARED_VIEW_TAG,
    run_description,
    ui_path,
)

__all__ = [
    "EXPERIMENT_KIND", "EXPERIMENT_KIND_TAG", "HEADLINE_METRICS", "MAX_KEY_LENGTH", "MAX_PARAM_VAL_LENGTH",
    "MAX_TAG_VAL_LENGTH", "OPTIONAL_HEADLINE_METRICS", "PARENT_ROLE", "PARENT_ROLE_TAG", "REVISION_TAG",
    "SHARED_VIEW_TAG", "SUPERSEDED_BY_TAG", "SWEEP_TAG", "TrackingError", "TrackingUnavailable",
    "close_running_children", "experiment_ui_path", "flatten", "get_or_create_parent",
    "iso_to_ms", "log_failed_job", "log_run", "mark_parent", "mark_superseded", "provenance_tags",
    "resolve_tracking_uri", "run_description", "sweep_parent", "ui_path",
]
