"""The few numbers a person compares runs by: ``metrics/headline.json`` (what DVC tracks as metrics, so
``dvc exp show`` fits a terminal) and the MLflow headline columns — one definition for both.

Why not all of ``score.json``: DVC shows every leaf of a metrics file as a column (~250 of them: a grid of "…"),
and MLflow's runs table offers ~80 metric names to pick from. The headline is short names, rounded to what the
measurement can resolve; every full-precision number stays in ``metrics/score.json`` (a DVC output, not a metric)
and in MLflow under its dotted name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# short name -> (dotted key in score.json, decimals shown, label with unit). Missing values stay None (DVC "-",
# MLflow: not logged) — never 0.
HEADLINE: dict[str, tuple[str, int, str]] = {
    "decode_tok_s": ("throughput.decode_tok_s.mean", 2, "decode tok/s (mean, host-timed)"),
    "ttft_s": ("throughput.ttft_s.p50", 3, "TTFT p50 (s)"),
    "quality": ("quality.score", 3, "quality score (0–1)"),
    "q_lo": ("quality.score_ci95.0", 3, "quality 95% CI low (bootstrap over prompts)"),
    "q_hi": ("quality.score_ci95.1", 3, "quality 95% CI high"),
    "on_topic": ("quality.on_topic_rate", 2, "on-topic rate"),
    "failed": ("failures.failed", 0, "failed answers (crashed, timed out, error)"),
    "j_per_tok": ("energy_j_per_token", 4, "energy J/token"),
}


# A benchmark block's headline, present only when the run has the block (prompts=ifeval; bench.json): a run of
# another prompt set (or without llama-bench) did not fail to measure them, so they must not show as missing. Its
# null values stay null (a failed llama-bench: null, its reason in score.json).
OPTIONAL_HEADLINE: dict[str, tuple[str, int, str]] = {
    "ifeval_prompt_strict": ("ifeval.prompt_strict.value", 3, "IFEval prompt-level strict accuracy"),
    "ifeval_prompt_loose": ("ifeval.prompt_loose.value", 3, "IFEval prompt-level loose accuracy"),
    "ifeval_instruction_strict": ("ifeval.instruction_strict.value", 3, "IFEval instruction-level strict accuracy"),
    "ifeval_instruction_loose": ("ifeval.instruction_loose.value", 3, "IFEval instruction-level loose accuracy"),
    # llama-bench (runtime=bench with app=llama-cpp): the synthetic benchmark beside the host-timed decode_tok_s
    "bench_pp_tok_s": ("bench.pp_tok_s", 2, "llama-bench prompt processing tok/s (synthetic, mean)"),
    "bench_tg_tok_s": ("bench.tg_tok_s", 2, "llama-bench text generation tok/s (synthetic, mean)"),
}


def present(score: Mapping[str, Any]) -> dict[str, tuple[str, int, str]]:
    """The headline definitions that apply to ``score``: every :data:`HEADLINE` entry, plus the optional ones whose
    block the run has."""
    extra = {k: v for k, v in OPTIONAL_HEADLINE.items() if isinstance(score.get(v[0].split(".")[0]), Mapping)}
    return {**HEADLINE, **extra}


# Which end of a headline number is better: a sweep names its best and worst job per number (the CI ends are not
# compared on their own).
BETTER = {"decode_tok_s": max, "ttft_s": min, "quality": max, "on_topic": max, "failed": min, "j_per_tok": min}


def extremes(by_job: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, tuple[float, str]]]:
    """Per headline number: the best and the worst job (value, job) over the jobs that measured it."""
    out: dict[str, dict[str, tuple[float, str]]] = {}
    for name, better in BETTER.items():
        vals = [(v, job) for job, h in by_job.items() if isinstance(v := h.get(name), int | float)]
        if vals:
            worse = min if better is max else max
            out[name] = {"best": better(vals, key=lambda x: x[0]), "worst": worse(vals, key=lambda x: x[0])}
    return out


def lookup(score: Mapping[str, Any], dotted: str) -> Any:
    """``score["a"]["b"][0]`` for ``"a.b.0"``; None where any step is missing."""
    node: Any = score
    for part in dotted.split("."):
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list | tuple) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def rounded(value: Any, decimals: int) -> float | int | None:
    """The value as shown: rounded to ``decimals``, but never below three significant digits (a 1.4 ms TTFT stays
    0.00138, not 0.001); None for missing or non-finite."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    if decimals == 0:
        return int(round(value))
    if value != 0:
        decimals = max(decimals, 2 - math.floor(math.log10(abs(value))))
    return round(float(value), decimals)


def headline(score: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics/headline.json``: the device kind first (a virtual-device number is never a phone result), then
    the headline numbers, rounded."""
    out: dict[str, Any] = {"device": str(score.get("device_kind", "unknown"))}
    for name, (dotted, decimals, _) in present(score).items():
        out[name] = rounded(lookup(score, dotted), decimals)
    return out


def headline_metrics(score: Mapping[str, Any]) -> dict[str, float | None]:
    """The headline numbers alone (MLflow metrics: numbers only)."""
    return {k: v for k, v in headline(score).items() if k != "device"}
