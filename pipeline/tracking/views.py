"""What a person sees first in ``mlflow ui``: the headline metrics, a one-table run description, and the link
that opens the experiment on the runs table with the headline columns (a saved shared view).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

# The few numbers a user compares runs by, under plain names (the full dotted set from score.json is logged too;
# pipeline/report reads the dotted names). name -> dotted source key.
HEADLINE_METRICS = {
    "decode_tok_s": "throughput.decode_tok_s.mean",
    "ttft_s": "throughput.ttft_s.p50",
    "quality": "quality.score",
    "on_topic_rate": "quality.on_topic_rate",
    "j_per_token": "energy_j_per_token",
}
# Headline names of a benchmark block, logged only when the run has it (prompts=ifeval): a run of another prompt
# set did not fail to measure them, so they must not land in its missing_metrics.
OPTIONAL_HEADLINE_METRICS = {
    "ifeval_prompt_strict": "ifeval.prompt_strict.value",
    "ifeval_prompt_loose": "ifeval.prompt_loose.value",
    "ifeval_instruction_strict": "ifeval.instruction_strict.value",
    "ifeval_instruction_loose": "ifeval.instruction_loose.value",
}


# A saved runs-table view (MLflow UI "shared view state": an experiment tag read when the URL carries
# ?viewStateShareKey=<key>) whose columns are the headline metrics, so the table shows them without the user
# picking among ~80 metric names. Checked in headless Chromium against MLflow 3.17 (see /work notes).
SHARED_VIEW_KEY = "odeval"
SHARED_VIEW_TAG = "mlflow.sharedViewState." + SHARED_VIEW_KEY
VIEW_TAG_COLUMNS = ("device.kind", "device.model")


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


def headline_metrics(flat: Mapping[str, float | None]) -> dict[str, float | None]:
    """The :data:`HEADLINE_METRICS` taken from the flat score metrics (None where the run did not measure it), plus
    the :data:`OPTIONAL_HEADLINE_METRICS` the run has."""
    out = {plain: flat.get(dotted) for plain, dotted in HEADLINE_METRICS.items()}
    return out | {plain: flat[dotted] for plain, dotted in OPTIONAL_HEADLINE_METRICS.items() if dotted in flat}


_HEADLINE_LABELS = {
    "decode_tok_s": ("decode tok/s (mean)", ".2f"),
    "ttft_s": ("TTFT p50 (s)", ".3f"),
    "quality": ("quality score", ".3f"),
    "on_topic_rate": ("on-topic rate", ".2f"),
    "j_per_token": ("energy J/token", ".3g"),
    "ifeval_prompt_strict": ("IFEval prompt-level strict accuracy", ".3f"),
    "ifeval_prompt_loose": ("IFEval prompt-level loose accuracy", ".3f"),
    "ifeval_instruction_strict": ("IFEval instruction-level strict accuracy", ".3f"),
    "ifeval_instruction_loose": ("IFEval instruction-level loose accuracy", ".3f"),
}


def run_description(score: Mapping[str, Any], headline: Mapping[str, float | None]) -> str:
    """The run's description in the UI (markdown): the headline numbers with units, what is not measured and
    where the rest is, so a run page says what it measured without opening ~80 metric names."""
    kind = str(score.get("device_kind", "unknown"))
    lines = [f"**{score.get('n_prompts', '?')} prompts on a {kind} device**"
             + (" (host CPU — not a phone result)" if kind == "virtual" else ""), "",
             "| metric | value |", "| --- | --- |"]
    for key, (label, spec) in _HEADLINE_LABELS.items():
        if key in OPTIONAL_HEADLINE_METRICS and key not in headline:
            continue
        v = headline.get(key)
        shown = "not measured" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)
        lines.append(f"| {label} (`{key}`) | {shown} |")
    fails = score.get("failures") or {}
    if fails:
        lines += ["", f"Failed answers: {fails.get('failed', 0)} of {fails.get('measured', '?')} (each scores 0)."]
    lines += ["", "Per prompt: Artifacts → `tables/prompts.json` and `prompts.csv`; every number: `score.json`."]
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
