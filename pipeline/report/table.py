"""The comparison table: one row per run (variant) × the metrics a user compares, as Markdown.

Why every row carries a device column: a virtual-device row measures the host CPU running the reference app; the
table is the thing people paste into chats, so the label travels with each row rather than only in a heading.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.report.runs import RunRecord
from pipeline.report.variants import Factor, value, variant_columns

# Quality families shown as their own columns (the stop-condition rates are in the EOS column instead).
_FAMILY_ORDER = ("reference_match", "keyword_recall", "rule_pass_rate", "relevance", "fidelity", "degeneration",
                 "language_match", "fluency", "answer_len")
NA = "—"
VIRTUAL_FOOTNOTE = ("virtual (host CPU): measured on the embedded virtual device, i.e. the host CPU running the "
                    "reference app — its throughput is NOT a phone's throughput; compare quality, not speed, with "
                    "real rows.")


def device_label(rec: RunRecord) -> str:
    """'virtual (host CPU)' for the virtual device; 'real (<model>)' for a phone, so no row can pass for the other."""
    kind = rec.device_kind
    if kind == "virtual":
        return "virtual (host CPU)"
    model = rec.tags.get("device.model")
    return f"{kind} ({model})" if model and model != "unknown" else kind


def families_present(records: Sequence[RunRecord]) -> list[str]:
    return [f for f in _FAMILY_ORDER if any(r.metric(f"quality.{f}") is not None for r in records)]


def fmt(x: float | None, spec: str = ".2f") -> str:
    return NA if x is None else format(x, spec)


def mean_sd(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return NA
    return f"{mean:.2f} ± {sd:.2f}" if sd is not None else f"{mean:.2f}"


def ci_cell(ci: tuple[float, float] | None) -> str:
    return NA if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def table_rows(records: Sequence[RunRecord], facs: Sequence[Factor],
               quality_ci: Mapping[str, tuple[float, float] | None] | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and cells (strings) of the comparison table, rows in the order given.

    ``quality_ci``: run id → 95% bootstrap CI of the run's mean quality over its prompts (None: fewer than two
    prompts with a score, or no quality.jsonl) — without it two variants' means cannot be told apart."""
    quality_ci = quality_ci or {}
    cols = variant_columns(records, facs)
    fams = families_present(records)
    show_on_topic = any(r.metric("quality.on_topic_rate") is not None for r in records)
    show_ifeval = any(r.metric("ifeval.prompt_strict.value") is not None for r in records)
    header = ["#", *cols, "device", "prompts", "decode tok/s (mean ± sd)", "TTFT p50 (s)", "quality",
              "quality 95% CI",
              *[f"q.{f}" for f in fams], *(["on-topic"] if show_on_topic else []),
              *(IFEVAL_COLUMNS if show_ifeval else []), "EOS rate", "energy J/tok", "run"]
    rows = []
    for i, r in enumerate(records, 1):
        n = r.metric("n_prompts")
        cells = [str(i), *[value(r, c) for c in cols], device_label(r), NA if n is None else str(int(n)),
                 mean_sd(r.metric("throughput.decode_tok_s.mean"), r.metric("throughput.decode_tok_s.std")),
                 fmt(r.metric("throughput.ttft_s.p50"), ".3f"), fmt(r.metric("quality.score"), ".3f"),
                 ci_cell(quality_ci.get(r.run_id)),
                 *[fmt(r.metric(f"quality.{f}"), ".1f" if f == "answer_len" else ".3f") for f in fams],
                 *([fmt(r.metric("quality.on_topic_rate"))] if show_on_topic else []),
                 *(ifeval_cells(r) if show_ifeval else []),
                 fmt(r.metric("rates.eos")), fmt(r.metric("energy_j_per_token"), ".3g"), r.run_id[:8]]
        rows.append(cells)
    return header, rows


IFEVAL_COLUMNS = ["IFEval prompt strict [95% CI]", "IFEval prompt loose", "IFEval instr. strict",
                  "IFEval instr. loose", "IFEval truncated"]


def ifeval_cells(r: RunRecord) -> list[str]:
    """IFEval's four accuracies (score.json ``ifeval``; the headline with its Wilson CI) and the share of answers
    cut at max_new_tokens — a cut essay can fail a length check, so the table says how many were cut."""
    lo, hi = r.metric("ifeval.prompt_strict.ci_low"), r.metric("ifeval.prompt_strict.ci_high")
    head = fmt(r.metric("ifeval.prompt_strict.value"), ".3f")
    if head != NA and lo is not None and hi is not None:
        head += f" [{lo:.2f}, {hi:.2f}]"
    return [head, *(fmt(r.metric(f"ifeval.{k}.value"), ".3f") for k in ("prompt_loose", "instruction_strict",
                                                                        "instruction_loose")),
            fmt(r.metric("ifeval.truncated.rate"))]


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (pipes in cells escaped)."""
    lines = ["| " + " | ".join(_escape(str(h)) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_escape(str(c)) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def footnotes(records: Sequence[RunRecord], facs: Sequence[Factor]) -> list[str]:
    """Notes under the table: what 'virtual' means, what '—' means, which params are aliases of a column."""
    notes = []
    if any(r.device_kind == "virtual" for r in records):
        notes.append(VIRTUAL_FOOTNOTE)
    notes.append(f"{NA} = not measured for that run (never estimated); energy needs power telemetry, which the "
                 "virtual device only has when simulated. The run's `missing_metrics` tag lists what was absent.")
    notes.append("decode tok/s is host-timed per answer (warm-up repeats excluded); quality is the mean over "
                 "prompts of quality_score (pipeline.quality: mean of the content families × the weakest form "
                 "signal, non-answers capped at 0.4), in [0, 1], higher is better "
                 "(q.degeneration: lower is better; q.answer_len in words); its 95% CI is a bootstrap over the "
                 "run's prompts (quality.jsonl, 2000 seeded resamples; — below two scored prompts).")
    for f in facs:
        if f.aliases:
            notes.append(f"`{f.key}` also fixes {', '.join(f'`{a}`' for a in f.aliases)} (same grouping of runs).")
    return notes
