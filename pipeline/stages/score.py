"""DVC stage `score`: throughput statistics + answer quality → metrics/ and one MLflow run.

Writes `metrics/headline.json` (the DVC metrics: the few numbers `dvc exp show` compares), `metrics/score.json`
(every number), `metrics/prompts.csv` (one row per prompt; DVC plots) and PNGs in
`metrics/plots/`, then logs the same to MLflow. MLflow being down never loses the DVC outputs: they are written
first, and the warning says how to log later (`python -m pipeline.stages.score` again).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.config import Config
from pipeline.context import RunContext
from pipeline.stages import StageError, read_json, read_jsonl, stage_main, write_json, write_jsonl


def run(cfg: Config, workdir: Path, ctx: RunContext | None = None) -> Path:
    ctx = ctx or RunContext.from_env()
    from pipeline.score import plots, summary
    from pipeline.score.headline import headline
    from pipeline.score.scoring import ScoreError, csv_fields, score_run, summary_lines, write_prompts_csv

    art, met = workdir / cfg.paths.artifacts, workdir / cfg.paths.metrics
    fetch, push = read_json(art / "fetch.json", "fetch"), read_json(art / "push.json", "push")
    run_json = read_json(art / "run" / "run.json", "run")
    rows = summary.measured(read_jsonl(art / "run" / "responses.jsonl"))
    prompts = {p["id"]: p for p in read_jsonl(art / "run" / "prompts.jsonl")}
    bench_file = art / "run" / "bench.json"  # only when the run stage ran llama-bench (runtime=bench, llama-cpp)
    bench = read_json(bench_file, "run") if bench_file.exists() else None
    if not rows:
        raise StageError(f"{art / 'run' / 'responses.jsonl'}: no measured rows — re-run the run stage")
    try:
        score, prompt_rows, families, scores = score_run(cfg, rows, prompts,
                                                         read_jsonl(art / "run" / "telemetry.jsonl"), fetch, push,
                                                         run_json, bench)
    except ScoreError as e:
        raise StageError(str(e)) from None
    if score["run_status"] != "complete":
        print(f"score: warning — the run's status is {score['run_status']!r} ({run_json.get('error')}): these "
              "numbers cover only its finished rows", file=sys.stderr)
    met.mkdir(parents=True, exist_ok=True)
    write_json(met / "score.json", score)
    write_json(met / "headline.json", headline(score))
    write_prompts_csv(met / "prompts.csv", prompt_rows, csv_fields(score, families))  # + IFEval's, when scored
    pngs = plots.run_plots(prompt_rows, families, met / "plots", score["device_kind"])
    quality_file = met / "quality.jsonl"  # score's own output (never inside the run stage's directory)
    write_jsonl(quality_file, scores)
    _track(cfg, ctx, score, prompt_rows, run_json, fetch, push,
           artifacts=[met / "headline.json", met / "score.json", met / "prompts.csv", *pngs, art / "fetch.json",
                      art / "push.json", art / "run" / "run.json", art / "run" / "responses.jsonl", quality_file,
                      bench_file])
    print("\n".join(summary_lines(score)))
    return met / "score.json"


def _track(cfg: Config, ctx: RunContext, score: dict, prompt_rows: list[dict], run_json: dict, fetch: dict,
           push: dict, artifacts: list[Path]) -> None:
    """MLflow after the DVC outputs: unreachable tracking warns (or fails with ``tracking.required``)."""
    if cfg.tracking.backend == "none":
        return
    from pipeline.tracking import TrackingError
    from pipeline.tracking.scored import log_scored_run

    try:
        print("\n".join(log_scored_run(cfg, ctx, score, prompt_rows, run_json, fetch, push, artifacts)))
    except TrackingError as e:
        msg = (f"MLflow logging failed: {e}. metrics/ is written; log later by re-running "
               "`python -m pipeline.stages.score` once the tracking store is reachable.")
        if cfg.tracking.required:
            raise StageError(msg) from None
        print(f"warning: {msg}", file=sys.stderr)


def main() -> None:
    stage_main("score", run)


if __name__ == "__main__":
    main()
