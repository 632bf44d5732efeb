"""The llama-bench section: the synthetic benchmark's pp/tg rates beside the same run's per-prompt numbers.

Why beside, not instead: llama-bench times N random tokens in one warm process (no prompt set, no template, no
adb), the host clock times what answering each prompt took, and llama.cpp's own counters time its eval loop on
those prompts. The three differ for real reasons; a reader needs to see which number is which before quoting one.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.report.runs import RunRecord
from pipeline.report.table import NA, device_label, fmt, markdown_table
from pipeline.report.variants import Factor, variant_label

BENCH_NOTE = ("llama-bench (`llama-bench -o json`, run by the run stage with `runtime=bench`) is a synthetic "
              "benchmark: pp<N> = processing N random prompt tokens in one batch, tg<N> = generating N tokens, "
              "each mean ± sd over its repeats in one warm process — no prompt set, no chat template, no adb. "
              "Beside it, the same run's per-prompt numbers: decode tok/s host-timed per answer, and llama.cpp's "
              "own eval rate from `llama_perf_context_print` (mean over answers).")


def has_bench(rec: RunRecord) -> bool:
    """The run has a score.json ``bench`` block: its ``bench.*`` metrics, or only the tag of a failed benchmark."""
    return "bench.error" in rec.tags or any(k.startswith("bench.") for k in rec.metrics)


def rate_cell(rec: RunRecord, test: str) -> str:
    """'pp512 310.20 ± 4.10' from ``bench.<test>_*`` metrics; — when llama-bench did not measure it."""
    mean, sd, n = (rec.metric(f"bench.{test}_tok_s"), rec.metric(f"bench.{test}_tok_s_sd"),
                   rec.metric(f"bench.{test}_n_tokens"))
    if mean is None:
        return NA
    label = f"{test}{n:.0f}" if n is not None else test
    return f"{label} {mean:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")


def bench_section(records: Sequence[RunRecord], facs: Sequence[Factor]) -> list[str]:
    """Markdown: one row per run with a bench block (nothing when no run has one)."""
    runs = [r for r in records if has_bench(r)]
    if not runs:
        return []
    rows = []
    for r in runs:
        rows.append([variant_label(r, facs), device_label(r), rate_cell(r, "pp"), rate_cell(r, "tg"),
                     fmt(r.metric("throughput.decode_tok_s.mean")), fmt(r.metric("app_counters.eval_tok_s")),
                     fmt(r.metric("bench.repeats"), ".0f"), fmt(r.metric("bench.delay_s"), "g"),
                     fmt(r.metric("bench.threads"), ".0f"), r.tags.get("bench.build", NA),
                     r.tags.get("bench.error", ""), r.run_id[:8]])
    header = ["variant", "device", "llama-bench pp tok/s (mean ± sd)", "llama-bench tg tok/s (mean ± sd)",
              "decode tok/s per prompt (host-timed)", "llama.cpp eval tok/s per prompt (its counters)", "repeats",
              "delay (s)", "threads", "build", "not measured because", "run"]
    return ["## llama-bench: the synthetic benchmark", "", BENCH_NOTE, "", markdown_table(header, rows), ""]
