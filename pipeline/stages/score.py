"""DVC stage `score`: throughput statistics + answer quality → metrics/ and one MLflow run.

Writes `metrics/score.json` (DVC metrics), `metrics/prompts.csv` (one row per prompt; DVC plots) and PNGs in
`metrics/plots/`, then logs the same to MLflow. MLflow being down never loses the DVC outputs: they are written
first, and the warning says how to log later (`python -m pipeline.stages.score` again).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
from pathlib import Path

from pipeline.config import Config, as_dict
from pipeline.context import RunContext
from pipeline.run.record import run_status
from pipeline.socs import soc_of
from pipeline.stages import StageError, read_json, read_jsonl, stage_main, write_json, write_jsonl
from pipeline.workspace import shared_root


def run(cfg: Config, workdir: Path, ctx: RunContext | None = None) -> Path:
    ctx = ctx or RunContext.from_env()
    from pipeline.quality.composite import FAMILIES, score_items
    from pipeline.quality.fluency import reference_for
    from pipeline.run.outcomes import failure_kind
    from pipeline.score import plots, summary

    art, met = workdir / cfg.paths.artifacts, workdir / cfg.paths.metrics
    fetch, push = read_json(art / "fetch.json", "fetch"), read_json(art / "push.json", "push")
    run_json = read_json(art / "run" / "run.json", "run")
    rows = summary.measured(read_jsonl(art / "run" / "responses.jsonl"))
    prompts = {p["id"]: p for p in read_jsonl(art / "run" / "prompts.jsonl")}
    telemetry = read_jsonl(art / "run" / "telemetry.jsonl")
    if not rows:
        raise StageError(f"{art / 'run' / 'responses.jsonl'}: no measured rows — re-run the run stage")

    answered = [r for r in rows if failure_kind(r) is None]  # crashes/timeouts/errors are failed answers
    lm, lm_off = reference_for(cfg.model.name, cfg.scoring.fluency.model, cfg.scoring.fluency.references)
    if lm_off and "unavailable" in lm_off:
        print(f"score: warning — fluency not measured: {lm_off}", file=sys.stderr)
    scored = iter(score_items(summary.quality_items(answered, prompts), relevance=cfg.scoring.relevance,
                              embedding_model=cfg.scoring.embedding_model, fp_answers=_fp_answers(cfg),
                              judge_url=cfg.scoring.judge.url, judge_model=cfg.scoring.judge.model or "judge",
                              fluency=lm, fluency_off_reason=lm_off))
    scores = [next(scored) if failure_kind(r) is None else summary.failed_answer_score(r, failure_kind(r))
              for r in rows]
    for r, sc in zip(rows, scores, strict=True):  # flagged per row: the text hides bytes the app really printed
        if summary.undecodable(r):
            sc["undecodable_chars"] = r["replaced_chars"]
    families = [f for f in FAMILIES if any(s.get(f) is not None for s in scores)]
    prompt_rows = summary.per_prompt(rows, scores, prompts, families)
    kind = run_json["device"].get("kind", "unknown")
    bw, bw_reason = summary.device_bandwidth(push["device"], cfg.device.bandwidth_gb_s,
                                             cfg.scoring.soc_bandwidth_gb_s)
    score = summary.summarize_run(rows, prompt_rows, families, telemetry, device_kind=kind, bandwidth_gb_s=bw,
                                  bandwidth_reason=bw_reason, weight_bytes=cfg.model.weight_bytes)
    props = run_json["device"].get("props") or {}
    score["run_status"] = run_status(run_json)
    score["provenance"] = {"device_kind": kind, "run_key": run_json.get("run_key"),
                           "device_model": props.get("ro.product.model"),
                           "device_soc": soc_of(props),
                           "model_manifest": fetch["model"]["manifest_sha256"][:12],
                           "app_manifest": fetch["app"]["manifest_sha256"][:12],
                           "git_commit": (run_json.get("git") or {}).get("commit")}

    if score["run_status"] != "complete":
        print(f"score: warning — the run's status is {score['run_status']!r} ({run_json.get('error')}): these "
              "numbers cover only its finished rows", file=sys.stderr)
    met.mkdir(parents=True, exist_ok=True)
    write_json(met / "score.json", score)
    _write_csv(met / "prompts.csv", prompt_rows, [*summary.CSV_FIELDS, *families])
    pngs = plots.run_plots(prompt_rows, families, met / "plots", kind)
    quality_file = met / "quality.jsonl"  # score's own output (never inside the run stage's directory)
    write_jsonl(quality_file, scores)

    _track(cfg, ctx, score, prompt_rows, run_json, fetch, push,
           artifacts=[met / "score.json", met / "prompts.csv", *pngs, art / "fetch.json", art / "push.json",
                      art / "run" / "run.json", art / "run" / "responses.jsonl", quality_file])
    _print_summary(score)
    return met / "score.json"


def _track(cfg: Config, ctx: RunContext, score: dict, prompt_rows: list[dict], run_json: dict, fetch: dict,
           push: dict, artifacts: list[Path]) -> None:
    """One MLflow run per (run outputs, scoring config): re-scoring updates it instead of adding a duplicate."""
    if cfg.tracking.backend == "none":
        return
    from pipeline.score import summary
    from pipeline.tracking import (
        TrackingError,
        experiment_ui_path,
        headline_metrics,
        iso_to_ms,
        log_run,
        mark_superseded,
        provenance_tags,
        resolve_tracking_uri,
        run_description,
        sweep_parent,
    )

    root = shared_root()
    uri = resolve_tracking_uri(cfg.tracking.tracking_uri or "sqlite:///mlflow.db", root)
    scoring = json.dumps(as_dict(cfg)["scoring"], sort_keys=True)
    sweep_id = ctx.sweep_id  # the same run in another sweep is another MLflow child run
    run_key = mlflow_key(run_json.get("run_key"), run_json.get("asked"), scoring, sweep_id, cfg.tag)
    tags = provenance_tags(run_json, fetch, push, root=root, sweep_id=sweep_id)
    tags["throughput_source"] = run_json.get("throughput_source", "unknown")
    tags.update({f"odeval.identity.{k}": v for k, v in ((run_json.get("identity") or {}).get("parts") or {}).items()})
    previous = run_json.get("previous_run") or None
    if previous:
        tags["odeval.replaces"] = previous.get("why") or "an earlier run of this directory"
    name = ":".join([cfg.tag, cfg.model.name, cfg.app.template, cfg.session.mode, cfg.prompts.name, cfg.sequence.name,
                     str(run_json["device"].get("kind"))])
    try:
        parent_run_id = None
        if sweep_id:
            parent_run_id = sweep_parent(uri, cfg.tracking.experiment, sweep_id, root / ".odeval" / "locks")
        flat = summary.flat_metrics(score)
        headline = headline_metrics(flat)
        run_id = log_run(tracking_uri=uri, experiment=cfg.tracking.experiment, run_key=run_key, params=as_dict(cfg),
                         metrics={**headline, **flat}, tags=tags, artifacts=[a for a in artifacts if a.exists()],
                         tables={"prompts": prompt_rows}, parent_run_id=parent_run_id, run_name=name,
                         start_time_ms=iso_to_ms(run_json.get("started")), end_time_ms=iso_to_ms(run_json.get("ended")),
                         description=run_description(score, headline))
        print(f"score: MLflow run {run_id} in experiment {cfg.tracking.experiment!r} ({uri})")
        if previous:  # the results this run replaces stay in MLflow, marked as replaced by this run
            old = mlflow_key(previous.get("run_key"), previous.get("asked"), scoring, sweep_id, cfg.tag)
            for old_id in mark_superseded(tracking_uri=uri, experiment=cfg.tracking.experiment, run_key=old,
                                          by=run_id, why=tags["odeval.replaces"]):
                print(f"  supersedes MLflow run {old_id} ({tags['odeval.replaces']})")
        path = experiment_ui_path(uri, cfg.tracking.experiment) or ""  # runs table with the headline columns
        where = (f"mlflow ui --backend-store-uri {uri}  → http://127.0.0.1:5000/" if uri.startswith("sqlite:")
                 else uri.rstrip("/") + "/")
        print(f"  view: {where}{path}")
    except TrackingError as e:
        msg = (f"MLflow logging failed: {e}. metrics/ is written; log later by re-running "
               "`python -m pipeline.stages.score` once the tracking store is reachable.")
        if cfg.tracking.required:
            raise StageError(msg) from None
        print(f"warning: {msg}", file=sys.stderr)


def mlflow_key(run_key: str | None, asked: str | None, scoring: str, sweep_id: str | None, tag: str) -> str:
    """The MLflow run of one set of results: the run's identity and what it asked, scored one way, in one sweep,
    under one label. Re-scoring the same rows updates that run; new rows (new identity or questions) get a new one
    (see README "Caches and keys")."""
    key = f"{run_key}|{asked}|{scoring}|{sweep_id}|{tag}"
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def _fp_answers(cfg: Config) -> dict[str, str] | None:
    if not cfg.scoring.fp_reference:
        return None
    path = Path(os.path.expanduser(cfg.scoring.fp_reference))
    if not path.exists():
        raise StageError(f"scoring.fp_reference={cfg.scoring.fp_reference!r}: file not found — point it at an FP "
                         "run's responses.jsonl")
    out: dict[str, str] = {}
    for r in read_jsonl(path):
        if not r.get("warmup"):
            out.setdefault(r["prompt_id"], r.get("response") or "")
    return out


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else (round(r[k], 6) if isinstance(r[k], float) else r[k]))
                        for k in fields})


def _print_summary(score: dict) -> None:
    t, q = score["throughput"], score["quality"]

    def f(x, spec=".2f"):
        return "n/a" if x is None else format(x, spec)

    kind = score["device_kind"]
    print(f"score: {score['n_prompts']} prompts on a {kind.upper()} device"
          + (" (host CPU — not a phone result)" if kind == "virtual" else ""))
    d = t["decode_tok_s"]
    print(f"  decode tok/s  mean {f(d['mean'])}  p50 {f(d['p50'])}  cv {f(d['cv'])}  (timed on {d['n']} of"
          f" {d['n'] + d['n_missing']} answers; shorter ones are below timing resolution)")
    print(f"  app tok/s (the app's own blended figure) mean {f(t['app_tok_s']['mean'])}   TTFT p50"
          f" {f(t['ttft_s']['p50'], '.3f')} s   model load p50 {f(t['load_s']['p50'], '.2f')} s")
    fails = score["failures"]
    print(f"  failed answers {fails['failed']}/{fails['measured']}  (crashed {fails['crashed']}, timed out"
          f" {fails['timed_out']}, other errors {fails['error']}) — each counts as quality 0")
    if q["score"] is None:
        print(f"  quality score n/a — {q.get('score_reason')}")
    else:
        print(f"  quality score {f(q['score'])}   on-topic {f(q.get('on_topic_rate'))}   EOS rate"
              f" {f(score['rates']['eos'])}   truncated {f(score['rates']['truncated'])}")
    bad = score["undecodable"]
    if bad["rows"]:
        print(f"  UNDECODABLE: {bad['rows']} of {score['n_rows']} answers had invalid UTF-8 ({bad['replaced_chars']} "
              "bytes shown as U+FFFD; flagged per row in prompts.csv and quality.jsonl)")
    if score["plausible"] is False:
        print(f"  IMPLAUSIBLE: decode rate above the bandwidth roofline ({f(score['roofline_tok_s'])} tok/s)")


def main() -> None:
    stage_main("score", run)


if __name__ == "__main__":
    main()
