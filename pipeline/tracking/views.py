"""What a person sees first in ``mlflow ui``: the headline metrics, a one-table run description, and the link
that opens the experiment on the runs table with the headline columns (a saved shared view).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from pipeline.score.headline import HEADLINE, OPTIONAL_HEADLINE

# The headline numbers (one definition: pipeline/score/headline.py, also metrics/headline.json for DVC) are logged
# under plain names, rounded; the full dotted set from score.json is logged too (pipeline/report reads those).
HEADLINE_METRICS = {name: dotted for name, (dotted, _, _) in HEADLINE.items()}
OPTIONAL_HEADLINE_METRICS = {name: dotted for name, (dotted, _, _) in OPTIONAL_HEADLINE.items()}


# A saved runs-table view (MLflow UI "shared view state": an experiment tag read when the URL carries
# ?viewStateShareKey=<key>) whose columns are the headline metrics, so the table shows them without the user
# picking among ~80 metric names. Checked in headless Chromium against MLflow 3.17 (see /work notes).
SHARED_VIEW_KEY = "odeval"
SHARED_VIEW_TAG = "mlflow.sharedViewState." + SHARED_VIEW_KEY
VIEW_TAG_COLUMNS = ("device.kind", "device.model")
SWEEP_PARENT_METRICS = ("jobs_complete", "jobs_failed")  # a sweep's parent row: its outcome (pipeline/sweep/summary)


def shared_view_state() -> str:
    """The JSON of the runs-table view ``?viewStateShareKey=odeval`` opens: headline metrics + device tags."""
    cols = ([f"metrics.`{k}`" for k in (*HEADLINE_METRICS, *SWEEP_PARENT_METRICS)]
            + [f"tags.`{k}`" for k in VIEW_TAG_COLUMNS])
    return json.dumps({"selectedColumns": cols})


def ui_path(experiment_id: str) -> str:
    """Where in ``mlflow ui`` the experiment's runs table opens with the headline columns (append to the UI's
    address). The ``/runs`` route opens the runs table whatever the UI's GenAI/model-training toggle says;
    ``workflowType=machine_learning`` also sets that toggle (MLflow 3.17 reads it from the URL before the browser's
    localStorage), so the side bar and the experiment's other pages are the model-training ones, not GenAI's."""
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={SHARED_VIEW_KEY}"


def run_description(score: Mapping[str, Any], headline: Mapping[str, float | None]) -> str:
    """The run's description in the UI (markdown): the headline numbers with units, what is not measured and
    where the rest is, so a run page says what it measured without opening ~80 metric names."""
    kind = str(score.get("device_kind", "unknown"))
    lines = [f"**{score.get('n_prompts', '?')} prompts on a {kind} device**"
             + (" (host CPU — not a phone result)" if kind == "virtual" else ""), "",
             "| metric | value |", "| --- | --- |"]
    shown_keys = {**HEADLINE, **{k: d for k, d in OPTIONAL_HEADLINE.items() if k in headline}}
    for key, (_, decimals, label) in shown_keys.items():
        v = headline.get(key)
        shown = "not measured" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{decimals}f}"
        lines.append(f"| {label} (`{key}`) | {shown} |")
    fails = score.get("failures") or {}
    if fails:
        lines += ["", f"Failed answers: {fails.get('failed', 0)} of {fails.get('measured', '?')} (each scores 0)."]
    lines += ["", "Per prompt: Artifacts → `tables/prompts.json` and `prompts.csv`; every number: `score.json`.",
              "", "Logged again for the same answers (re-scoring, `dvc repro` after an interruption) updates this run:"
              " each log is one step of its metrics (tag `odeval.revision`), not a training curve. New answers (a "
              "changed prompt, engine or config) make a new run, and this one is tagged `odeval.superseded_by`."]
    return "\n".join(lines)


def flat_metrics(score: Mapping[str, Any], prefix: str = "") -> dict[str, float | None]:
    """Numeric leaves of score.json as dotted keys (MLflow metrics); booleans become 0/1."""
    out: dict[str, float | None] = {}
    for k, v in score.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flat_metrics(v, key + "."))
        elif isinstance(v, bool):
            out[key] = float(v)
        elif isinstance(v, int | float) or v is None:
            out[key] = None if v is None else float(v)
    return out
