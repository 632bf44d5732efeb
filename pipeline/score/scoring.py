"""Score one run: every measured row gets its quality (a crashed, timed-out or errored prompt is a failed answer:
quality 0, its text never scored), then per-prompt rows and the run's summary numbers with their provenance.

Inputs are the run stage's outputs as read from disk; nothing here writes files or talks to MLflow."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.run.outcomes import failure_kind
from pipeline.run.record import run_status
from pipeline.score import summary
from pipeline.socs import soc_of


class ScoreError(Exception):
    """The run's outputs or the scoring config cannot be scored (the message says which file/key and the fix)."""


def fp_answers(cfg: Config) -> dict[str, str] | None:
    """The FP reference run's answers by prompt id (``scoring.fp_reference``: its responses.jsonl), or None."""
    from pipeline.quality.fidelity import read_fp_answers

    if not cfg.scoring.fp_reference:
        return None
    path = Path(os.path.expanduser(cfg.scoring.fp_reference))
    if not path.exists():
        raise ScoreError(f"scoring.fp_reference={cfg.scoring.fp_reference!r}: file not found — point it at an FP "
                         "run's responses.jsonl")
    try:
        return read_fp_answers(path)
    except ValueError as e:
        raise ScoreError(f"scoring.fp_reference: {e}") from None


def score_run(cfg: Config, rows: list[dict], prompts: dict[str, dict], telemetry: list[dict], fetch: dict,
              push: dict, run_json: dict, bench: dict | None = None) -> tuple[dict, list[dict], list[str], list[dict]]:
    """(score.json, per-prompt rows, the quality families that applied, per-row quality scores).

    ``bench``: artifacts/run/bench.json when the run stage ran llama-bench (score.json ``bench``), else None."""
    from pipeline.quality.composite import FAMILIES, score_items
    from pipeline.quality.fluency import reference_for
    from pipeline.score.llama_cpp import app_counters_block, bench_block, is_llama_cpp

    answered = [r for r in rows if failure_kind(r) is None]  # crashes/timeouts/errors are failed answers
    lm, lm_off = reference_for(cfg.model.name, cfg.scoring.fluency.model, cfg.scoring.fluency.references)
    if lm_off and "unavailable" in lm_off:
        print(f"score: warning — fluency not measured: {lm_off}", file=sys.stderr)
    scored = iter(score_items(summary.quality_items(answered, prompts), relevance=cfg.scoring.relevance,
                              embedding_model=cfg.scoring.embedding_model, fp_answers=fp_answers(cfg),
                              judge_url=cfg.scoring.judge.url, judge_model=cfg.scoring.judge.model or "judge",
                              fluency=lm, fluency_off_reason=lm_off))
    scores = [next(scored) if failure_kind(r) is None else summary.failed_answer_score(r, failure_kind(r))
              for r in rows]
    for r, sc in zip(rows, scores, strict=True):  # flagged per row: the text hides bytes the app really printed
        if summary.undecodable(r):
            sc["undecodable_chars"] = r["replaced_chars"]
    families = [f for f in FAMILIES if any(s.get(f) is not None for s in scores)]
    prompt_rows = summary.per_prompt(rows, scores, prompts, families)
    ife, ife_columns, ife_verdicts = ifeval_scores(rows, prompts, run_json)
    for row in prompt_rows:
        row.update(ife_columns.get(row["prompt_id"], {}))
    for verdict in ife_verdicts:  # quality.jsonl: the per-instruction verdicts on the prompt's first measured row
        next(sc for sc in scores if sc.get("id") == verdict["prompt_id"])["ifeval"] = verdict
    kind = run_json["device"].get("kind", "unknown")
    bw, bw_reason = summary.device_bandwidth(push["device"], cfg.device.bandwidth_gb_s,
                                             cfg.scoring.soc_bandwidth_gb_s)
    score = summary.summarize_run(rows, prompt_rows, families, telemetry, device_kind=kind, bandwidth_gb_s=bw,
                                  bandwidth_reason=bw_reason, weight_bytes=cfg.model.weight_bytes)
    if ife is not None:
        score["ifeval"] = ife
    counters, counters_reason = app_counters_block(answered, is_llama_cpp(run_json))
    if counters is not None:  # simple_app prints no such counters: no block, only the reason
        score["app_counters"] = counters
    if counters_reason:
        score["app_counters_reason"] = counters_reason
    if bench is not None:
        score["bench"] = bench_block(bench)
    props = run_json["device"].get("props") or {}
    score["run_status"] = run_status(run_json)
    score["provenance"] = {"device_kind": kind, "run_key": run_json.get("run_key"),
                           "device_model": props.get("ro.product.model"), "device_soc": soc_of(props),
                           "model_manifest": fetch["model"]["manifest_sha256"][:12],
                           "app_manifest": fetch["app"]["manifest_sha256"][:12],
                           "git_commit": (run_json.get("git") or {}).get("commit")}
    return score, prompt_rows, families, scores


def ifeval_scores(rows: list[dict], prompts: dict[str, dict], run_json: dict) -> tuple[dict | None, dict, list]:
    """IFEval's own scoring (pipeline/quality/ifeval.py: score.json ``ifeval``, prompts.csv columns, per-prompt
    verdicts) when the run's prompts are IFEval prompts; nothing else loads its checker."""
    if not any(p.get("ifeval") for p in prompts.values()):
        return None, {}, []
    from pipeline.quality.ifeval import IFEvalError, score_rows

    try:
        return score_rows(rows, prompts, failure_kind, run_json.get("prompt_source"))
    except IFEvalError as e:
        raise ScoreError(str(e)) from None


def csv_fields(score: dict[str, Any], families: list[str]) -> list[str]:
    """metrics/prompts.csv's columns: the per-prompt summary, the quality families, IFEval's when it was scored."""
    if score.get("ifeval") is None:
        return [*summary.CSV_FIELDS, *families]
    from pipeline.quality.ifeval import CSV_FIELDS

    return [*summary.CSV_FIELDS, *families, *CSV_FIELDS]


def write_prompts_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    """metrics/prompts.csv: one row per prompt (DVC plots read it); floats rounded, missing values empty."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else (round(r[k], 6) if isinstance(r[k], float) else r[k]))
                        for k in fields})


def timed_note(d: dict[str, Any]) -> str:
    """How many answers the decode rate covers, and why the rest are not in it — only when some are not."""
    total = d["n"] + d["n_missing"]
    if d["n_missing"] == 0:
        return f"timed on all {total} answers"
    return (f"timed on {d['n']} of {total} answers; the other {d['n_missing']} were too short to time "
            "a decode rate")


def summary_lines(score: dict[str, Any]) -> list[str]:
    """What the score stage prints: the device kind first (a virtual device's rates are the host's), the timing,
    the failures (each a quality 0), quality, and any undecodable or implausible numbers."""
    from pipeline.score.llama_cpp import bench_line, counters_line

    t, q = score["throughput"], score["quality"]

    def f(x: Any, spec: str = ".2f") -> str:
        return "n/a" if x is None else format(x, spec)

    kind = score["device_kind"]
    d = t["decode_tok_s"]
    fails = score["failures"]
    lines = [f"score: {score['n_prompts']} prompts on a {kind.upper()} device"
             + (" (host CPU — not a phone result)" if kind == "virtual" else ""),
             f"  decode tok/s  mean {f(d['mean'])}  p50 {f(d['p50'])}  cv {f(d['cv'])}  ({timed_note(d)})",
             f"  app tok/s (the app's own blended figure) mean {f(t['app_tok_s']['mean'])}"
             + (" (llama.cpp prints none per answer: its counters below)" if score.get("app_counters") else "")
             + f"   TTFT p50 {f(t['ttft_s']['p50'], '.3f')} s   model load p50 {f(t['load_s']['p50'], '.2f')} s",
             *counters_line(score.get("app_counters"), f), *bench_line(score.get("bench"), f),
             f"  failed answers {fails['failed']}/{fails['measured']}  (crashed {fails['crashed']}, timed out"
             f" {fails['timed_out']}, other errors {fails['error']}) — each counts as quality 0"]
    if q["score"] is None:
        lines.append(f"  quality score n/a — {q.get('score_reason')}")
    else:
        ci = q.get("score_ci95")
        lines.append(f"  quality score {f(q['score'], '.3f')}"
                     + (f" [95% CI {f(ci[0], '.3f')}, {f(ci[1], '.3f')} over prompts]" if ci else "")
                     + f"   on-topic {f(q.get('on_topic_rate'))}   EOS rate"
                     f" {f(score['rates']['eos'])}   truncated {f(score['rates']['truncated'])}")
    lines += ifeval_lines(score.get("ifeval"), f)
    bad = score["undecodable"]
    if bad["rows"]:
        lines.append(f"  UNDECODABLE: {bad['rows']} of {score['n_rows']} answers had invalid UTF-8 "
                     f"({bad['replaced_chars']} bytes shown as U+FFFD; flagged per row in prompts.csv and "
                     "quality.jsonl)")
    if score["plausible"] is False:
        lines.append(f"  IMPLAUSIBLE: decode rate above the bandwidth roofline ({f(score['roofline_tok_s'])} tok/s)")
    return lines


def ifeval_lines(ife: dict[str, Any] | None, f: Any) -> list[str]:
    """IFEval's four accuracies with their 95 % CIs, and how many answers were cut or failed (none without IFEval)."""
    if not ife:
        return []
    acc = "   ".join(f"{k.replace('_', ' ')} {f(ife[k]['value'], '.3f')} [{f(ife[k]['ci_low'])}, "
                       f"{f(ife[k]['ci_high'])}]"
                       for k in ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"))
    done = ife["prompt_strict_complete"]
    return [f"  IFEval ({ife['n_prompts']} prompts, {ife['n_instructions']} instructions): {acc}",
            f"    truncated answers {ife['truncated']['n']}/{ife['n_prompts']} (scored as cut; prompt strict over the"
            f" complete ones {f(done['value'], '.3f')}, n = {done['n']}), failed {ife['failed']['n']}"]
