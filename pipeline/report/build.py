"""Assemble report.md + PNGs from selected runs: table, plots, factor analysis, fidelity to the FP reference.

Pure over ``RunRecord``s (``build_report``), so it is testable without a store; ``report_from_mlflow`` adds the
selection. Every number comes from a run's metrics or artifacts; what is missing is written as missing.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.report import ReportError
from pipeline.report.bench import bench_section
from pipeline.report.charts import budget_varies, quality_vs_throughput, toks_vs_budget
from pipeline.report.contrasts import answers_section, ends_section
from pipeline.report.factors import FactorEffect, LevelEffect, analyse, bootstrap_ci, prompt_quality
from pipeline.report.fp_reference import TOKENS_NOTE, FidelityResult, fidelity_to_fp
from pipeline.report.runs import ARTIFACTS, RunRecord, select_runs
from pipeline.report.runtimes import runtimes_section
from pipeline.report.table import NA, fmt, footnotes, markdown_table, table_rows
from pipeline.report.variants import DEFAULT_IGNORE, Factor, factors, sort_records, value, variant_label

FP_MODELS = ("tiny-fp", "smollm2-ref", "tinyllama-chat-fp")


@dataclass
class Report:
    """What was written: the Markdown table (also printed), report.md, the PNGs and the analysis objects."""

    table_md: str
    report_md: Path
    pngs: list[Path]
    effects: list[FactorEffect] = field(default_factory=list)
    fidelity: list[FidelityResult] = field(default_factory=list)
    records: list[RunRecord] = field(default_factory=list)


def pick_fp_model(records: Sequence[RunRecord], requested: str | None) -> str:
    """--fp-model when given; else the first known FP model present in the runs; else tiny-fp."""
    if requested:
        return requested
    present = {value(r, "model.name") for r in records}
    return next((m for m in FP_MODELS if m in present), FP_MODELS[0])


def quality_ci(records: Sequence[RunRecord]) -> dict[str, tuple[float, float] | None]:
    """Run id → 95% bootstrap CI of its mean quality over prompts (from quality.jsonl; None when unavailable)."""
    out: dict[str, tuple[float, float] | None] = {}
    for r in records:
        per_prompt, _ = prompt_quality(r)
        out[r.run_id] = bootstrap_ci(list(per_prompt.values())) if per_prompt else None
    return out


def _ci(e: LevelEffect) -> str:
    return NA if e.ci95 is None else f"[{e.ci95[0]:+.3f}, {e.ci95[1]:+.3f}]"


def _answers(e: LevelEffect) -> str:
    """Share of answers that are answers by form (not empty, leaked, looping, noise), level / baseline."""
    if e.answers_level is None or e.answers_baseline is None:
        return NA
    return f"{e.answers_level:.2f} / {e.answers_baseline:.2f}"


def _signed(x: float | None) -> str:
    return NA if x is None else f"{x:+.3f}"


def factor_section(effects: Sequence[FactorEffect], dropped: int) -> list[str]:
    """Markdown: factor ranking by |delta| and, per factor, every level against its baseline."""
    out = ["## Factor analysis (off-topic diagnosis)", "",
           "Every param that varies across the selected runs is a factor. A level is compared with the factor's "
           "baseline over **matched pairs**: runs identical in every other factor. delta = quality(level) − "
           "quality(baseline), averaged over pairs; n prompts, sd and the 95% bootstrap CI (2000 resamples, "
           "seeded) are over the per-prompt paired deltas from each run's `quality.jsonl` (averaged over pairs per "
           "prompt). Factors are ranked by the largest |delta| among their levels. \"answers\" is the share of a "
           "run's answers that are answers by their form (`is_answer`: not empty, no template leak, no loop, not "
           "noise under the reference LM, right script; failed rows count as not answers).", ""]
    if not effects:
        return [*out, "No param varies across the selected runs: nothing to compare.", ""]
    rows = []
    for rank, e in enumerate(effects, 1):
        t = e.top
        rows.append([str(rank), e.factor.key, e.baseline, t.level if t else NA, _signed(t.delta if t else None),
                     str(t.n_pairs) if t else "0", str(t.n_prompts) if t and t.spread_over == "prompts" else NA,
                     fmt(t.sd if t else None, ".3f"), _ci(t) if t else NA, t.spread_over if t else NA])
    out += [markdown_table(["rank", "factor", "baseline", "strongest level", "delta", "n pairs", "n prompts",
                            "sd", "95% CI", "spread over"], rows), ""]
    if dropped:
        out += [f"{dropped} run(s) repeat a design cell of a newer run and were left out of the analysis.", ""]
    for e in effects:
        alias = f" (≡ {', '.join(e.factor.aliases)})" if e.factor.aliases else ""
        out += [f"### `{e.factor.key}`{alias} — baseline `{e.baseline}`", ""]
        rows = []
        for lvl in e.factor.levels:
            m, n = e.marginal[lvl]
            eff = next((x for x in e.levels if x.level == lvl), None)
            if eff is None:
                rows.append([lvl, f"{fmt(m, '.3f')} (n={n})", "baseline", NA, NA, NA, NA, NA, NA, NA])
                continue
            rows.append([lvl, f"{fmt(m, '.3f')} (n={n})", fmt(eff.mean_level, ".3f"), fmt(eff.mean_baseline, ".3f"),
                         _signed(eff.delta), str(eff.n_pairs),
                         str(eff.n_prompts) if eff.spread_over == "prompts" else NA,
                         f"{fmt(eff.sd, '.3f')} ({eff.spread_over})", _ci(eff), _answers(eff)])
        out += [markdown_table(["level", "mean quality, all runs", "matched mean", "matched baseline", "delta",
                                "n pairs", "n prompts", "sd", "95% CI", "answers, level / baseline"], rows), ""]
        notes = sorted({n for x in e.levels for n in x.notes})
        out += [f"- {n}" for n in notes] + ([""] if notes else [])
    return out


def fidelity_section(results: Sequence[FidelityResult], fp_model: str, embeddings: bool,
                     csv_path: Path | None, facs: Sequence[Factor]) -> list[str]:
    """Markdown: each non-FP run vs its FP twin (or why there is none)."""
    out = [f"## Fidelity to the FP reference (`{fp_model}`)", "",
           "Each run whose model is not the FP model is compared with the run identical except `model.name` = "
           f"`{fp_model}`, per prompt (first measured answer of each prompt). {TOKENS_NOTE}", ""]
    if not results:
        return [*out, f"No run other than `{fp_model}` runs was selected: nothing to compare.", ""]
    rows = []
    for r in results:
        s = r.summary() if r.reason is None else {}
        rows.append([variant_label(r.run, facs), r.run.run_id[:8], r.fp_run.run_id[:8] if r.fp_run else NA,
                     str(s.get("n_prompts", 0)), fmt(s.get("exact_rate")),
                     f"{s['n_diverged']}" if s else NA, fmt(s.get("median_first_diff"), ".1f"),
                     fmt(s.get("rouge_l"), ".3f"),
                     fmt(s.get("embedding_cos"), ".3f") if embeddings else "off (--embeddings)",
                     r.reason or ""])
    out += [markdown_table(["variant", "run", "FP run", "prompts", "exact", "diverged", "median first diff token",
                            "ROUGE-L", "embedding cos", "missing"], rows), ""]
    if csv_path is not None:
        out += [f"Per-prompt rows (both answers): [{csv_path.name}]({csv_path.name}).", ""]
    return out


def write_fidelity_csv(results: Sequence[FidelityResult], path: Path) -> Path | None:
    rows = [{"run_id": r.run.run_id, "fp_run_id": r.fp_run.run_id if r.fp_run else "", **row}
            for r in results for row in r.rows]
    if not rows:
        return None
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def missing_section(records: Sequence[RunRecord]) -> list[str]:
    lines = [f"- run {r.run_id[:8]} ({r.name}): {r.reason(a)}" for r in records for a in ARTIFACTS
             if a in r.artifacts and r.artifacts[a] is None]
    return ["## Missing data", "", *lines, ""] if lines else []


def build_report(records: Sequence[RunRecord], out_dir: Path, *, title: str, fp_model: str | None = None,
                 baselines: Mapping[str, str] | None = None, embeddings: bool = False,
                 embedding_model: str | None = None, ignore: Sequence[str] = DEFAULT_IGNORE,
                 ends: tuple[Mapping[str, str], Mapping[str, str]] | None = None) -> Report:
    """Write ``out_dir/report.md`` (+ PNGs, fidelity.csv) for ``records``; returns what was written."""
    if not records:
        raise ReportError(f"{title}: no finished runs selected — check --sweep/--experiment/--tag and --tracking-uri")
    out_dir.mkdir(parents=True, exist_ok=True)
    facs: list[Factor] = factors(records, ignore)
    recs = sort_records(records, facs)
    header, rows = table_rows(recs, facs, quality_ci(recs))
    table_md = markdown_table(header, rows)
    labels = [variant_label(r, facs) for r in recs]
    pngs = [quality_vs_throughput(recs, labels, out_dir / "quality_vs_throughput.png")]
    skipped: list[str] = []
    if budget_varies(facs):
        pngs.append(toks_vs_budget(recs, facs, out_dir / "toks_vs_budget.png"))
    else:  # one x value: a chart of a single column says nothing
        (out_dir / "toks_vs_budget.png").unlink(missing_ok=True)
        skipped.append("toks_vs_budget.png not drawn: the sequence budget (sequence.max_new_tokens, "
                       "sequence.context) does not vary in the selected runs")
    fp = pick_fp_model(recs, fp_model)
    effects, dropped = analyse(recs, facs, fp_model=fp, baselines=baselines)
    fid = fidelity_to_fp(recs, facs, fp, embeddings=embeddings, embedding_model=embedding_model)
    csv_path = write_fidelity_csv(fid, out_dir / "fidelity.csv")
    kinds = sorted({r.device_kind for r in recs})
    md = [f"# {title}", "", f"{len(recs)} run(s); device kind(s): {', '.join(kinds)}.", "", "## Runs", "",
          table_md, "", *[f"- {n}" for n in footnotes(recs, facs)], "", "## Plots", "",
          *[f"![{p.stem}]({p.name})" for p in pngs], *[f"- {x}" for x in skipped], "",
          *runtimes_section(recs, facs, fp_model), *bench_section(recs, facs),
          *factor_section(effects, dropped), *(ends_section(recs, facs, *ends) if ends else []),
          *answers_section(recs, facs), *fidelity_section(fid, fp, embeddings, csv_path, facs),
          *missing_section(recs)]
    report_md = out_dir / "report.md"
    report_md.write_text("\n".join(md).rstrip() + "\n", encoding="utf-8")
    return Report(table_md=table_md, report_md=report_md, pngs=pngs, effects=effects, fidelity=fid,
                  records=list(recs))


def report_from_mlflow(tracking_uri: str, out_dir: Path, *, experiment: str | None = None, sweep: str | None = None,
                       tag: str | None = None, **kwargs) -> Report:
    """Select runs from MLflow (see runs.select_runs) and build the report; kwargs go to ``build_report``."""
    records = select_runs(tracking_uri, experiment=experiment, sweep=sweep, tag=tag)
    what = " ".join(f"{k} {v}" for k, v in (("sweep", sweep), ("experiment", experiment), ("tag", tag)) if v)
    return build_report(records, out_dir, title=f"odeval comparison report — {what or 'experiment odeval'}",
                        **kwargs)
