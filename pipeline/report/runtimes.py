"""The "Runtimes compared" section: the same model and prompts under two app runtimes (``app.name``, e.g. the
reference app vs llama.cpp's ``llama-completion``), side by side.

Why its own section: a runtime changes speed *and* possibly answers (another tokenizer path, sampler, kernels), so
a speed table alone cannot say the faster runtime answers the same. Per runtime and prompt set: speed (decode,
prefill, TTFT), whether the app's own timing agrees with the host's, quality with its CI; then the answers of the
two runtimes compared prompt by prompt (exact match, ROUGE-L: pipeline/report/fp_reference.py), and each runtime's
answers against the float reference model's, so "llama.cpp differs" can be told from "both drift from the float
model alike". Every number comes from a run's metrics or its responses.jsonl; what is missing says how to add it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations

from pipeline.report.fp_reference import TOKENS_NOTE, compare, first_answers
from pipeline.report.runs import RunRecord, measured_rows
from pipeline.report.table import NA, device_label, fmt, markdown_table
from pipeline.report.variants import Factor, value

REF_MODEL = "smollm2-ref"  # the float reference of the SmolLM2 runs (conf/model/smollm2-ref.yaml)
REF_APP = "reference"  # the app the reference run is asked to use: model=smollm2-ref app=reference
LLAMA_CPP = "llama-cpp"


def differ_in_app(records: Sequence[RunRecord]) -> bool:
    """The section applies: the reported runs used more than one app runtime."""
    return len({value(r, "app.name") for r in records}) > 1


def _about(prefix: str) -> Callable[[Factor], bool]:
    """A factor that is (or moves together with) a ``prefix`` param: ``app.name`` and its aliases."""
    return lambda f: f.key.startswith(prefix) or any(a.startswith(prefix) for a in f.aliases)


def pair_context(rec: RunRecord, facs: Sequence[Factor]) -> tuple[str, ...]:
    """What two runs must share to compare their runtimes: the model, and every factor not about the app."""
    return (value(rec, "model.name"), *(value(rec, f.key) for f in facs if not _about("app.")(f)))


def ref_context(rec: RunRecord, facs: Sequence[Factor]) -> tuple[str, ...]:
    """What a run and its float-reference run must share: every factor about neither the app nor the model."""
    return tuple(value(rec, f.key) for f in facs if not _about("app.")(f) and not _about("model.")(f))


def _label(rec: RunRecord, facs: Sequence[Factor]) -> str:
    keys = ["model.name", *(f.key for f in facs if not _about("app.")(f) and f.key != "model.name")]
    return ", ".join(f"{k}={value(rec, k)}" for k in keys)


def host_prefill_tok_s(rec: RunRecord) -> float | None:
    """Mean over answered rows of n_prompt_tokens / ttft_s (host-timed; TTFT holds more than the prefill — the
    send, the app's start and its first sample — so this is a lower bound on the prefill rate)."""
    from pipeline.run.outcomes import failure_kind

    rates = [r["n_prompt_tokens"] / r["ttft_s"] for r in measured_rows(rec.rows("responses.jsonl")) or []
             if failure_kind(dict(r)) is None and isinstance(r.get("n_prompt_tokens"), int | float)
             and isinstance(r.get("ttft_s"), int | float) and r["ttft_s"] > 0]
    return sum(rates) / len(rates) if rates else None


def is_llama_cpp(rec: RunRecord) -> bool:
    return LLAMA_CPP in (rec.params.get("app.protocol"), value(rec, "app.name"))


def timing_cell(rec: RunRecord) -> str:
    """The app's own timing against the host's: llama.cpp's eval rate, or simple_app's blended tok/s line."""
    ratio = rec.metric("app_counters.host_vs_app_decode")
    if ratio is not None:
        return f"{ratio:.3f} (host decode ÷ llama.cpp eval)"
    if is_llama_cpp(rec):
        return f"{NA} (no llama.cpp counters logged)"
    agree = rec.metric("timing_agreement")
    return NA if agree is None else f"{agree:.3f} (host ÷ app tok/s, median)"


def quality_cell(rec: RunRecord) -> str:
    q, lo, hi = rec.metric("quality.score"), rec.metric("q_lo"), rec.metric("q_hi")
    if q is None:
        return NA
    return f"{q:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")


def speed_rows(records: Sequence[RunRecord], ref_model: str) -> list[list[str]]:
    """One row per run, by prompt set then runtime: both runtimes of a prompt set sit next to each other."""
    rows = []
    for r in sorted(records, key=lambda r: (value(r, "prompts.name"), value(r, "model.name"), value(r, "app.name"))):
        model = value(r, "model.name") + (" (float reference)" if value(r, "model.name") == ref_model else "")
        rows.append([value(r, "prompts.name"), value(r, "app.name"), model, device_label(r),
                     fmt(r.metric("throughput.decode_tok_s.mean")), fmt(host_prefill_tok_s(r)),
                     fmt(r.metric("app_counters.prompt_eval_tok_s")), fmt(r.metric("throughput.ttft_s.p50"), ".3f"),
                     timing_cell(r), quality_cell(r), r.run_id[:8]])
    return rows


def _newest_per_app(group: Sequence[RunRecord]) -> dict[str, RunRecord]:
    out: dict[str, RunRecord] = {}
    for r in sorted(group, key=lambda r: r.start_time):
        out[value(r, "app.name")] = r
    return out


def groups(records: Sequence[RunRecord], facs: Sequence[Factor], ref_model: str) -> dict[tuple, list[RunRecord]]:
    """The runs under test (not the float reference) grouped by what a runtime comparison must hold fixed."""
    out: dict[tuple, list[RunRecord]] = {}
    for r in records:
        if value(r, "model.name") != ref_model:
            out.setdefault(pair_context(r, facs), []).append(r)
    return out


def missing_runtimes(records: Sequence[RunRecord], facs: Sequence[Factor], ref_model: str) -> list[str]:
    """Where a runtime did not answer a prompt set the others answered (their rows would not be comparable)."""
    grouped = groups(records, facs, ref_model)
    apps = sorted({value(r, "app.name") for g in grouped.values() for r in g})
    return [f"- {_label(g[0], facs)}: no `app.name={a}` run — every runtime must answer the same prompts (add "
            f"`app={a}` with these settings to the sweep)."
            for g in grouped.values() for a in apps if a not in {value(r, "app.name") for r in g}]


def _answered(rec: RunRecord) -> str:
    answers = first_answers(rec)
    return NA if answers is None else str(len(answers))


def agreement_rows(records: Sequence[RunRecord], facs: Sequence[Factor], ref_model: str) -> list[list[str]]:
    """Each pair of runtimes on the same model and prompts: their first answers compared prompt by prompt."""
    rows = []
    for group in groups(records, facs, ref_model).values():
        for (app_a, a), (app_b, b) in combinations(sorted(_newest_per_app(group).items()), 2):
            res = compare(b, a)
            s = res.summary() if res.reason is None else {}
            rows.append([_label(a, facs), app_a, app_b, f"{s.get('n_prompts', 0)} ({_answered(a)} / {_answered(b)})",
                         fmt(s.get("exact_rate")), fmt(s.get("rouge_l"), ".3f"),
                         fmt(s.get("median_first_diff"), ".1f"), f"{a.run_id[:8]} / {b.run_id[:8]}",
                         res.reason or ""])
    return rows


def reference_rows(records: Sequence[RunRecord], facs: Sequence[Factor], ref_model: str) -> list[list[str]]:
    """Each run under test against the float-reference run on the same prompts (or how to add one)."""
    refs = [r for r in records if value(r, "model.name") == ref_model]
    rows = []
    for r in sorted(records, key=lambda r: (value(r, "prompts.name"), value(r, "app.name"))):
        if value(r, "model.name") == ref_model:
            continue
        twins = [x for x in refs if ref_context(x, facs) == ref_context(r, facs)]
        ref = max(twins, key=lambda x: (value(x, "app.name") == REF_APP, x.start_time)) if twins else None
        if ref is None:
            why = (f"missing: no `{ref_model}` run on prompts={value(r, 'prompts.name')} among the reported runs — "
                   f"add `model={ref_model} app={REF_APP}` with the same prompts to the sweep")
            rows.append([value(r, "prompts.name"), value(r, "app.name"), value(r, "model.name"), NA, "0", NA, NA,
                         why])
            continue
        res = compare(r, ref)
        s = res.summary() if res.reason is None else {}
        rows.append([value(r, "prompts.name"), value(r, "app.name"), value(r, "model.name"),
                     f"{ref.run_id[:8]} ({value(ref, 'app.name')})", str(s.get("n_prompts", 0)),
                     fmt(s.get("exact_rate")), fmt(s.get("rouge_l"), ".3f"), res.reason or ""])
    return rows


PAIR_NOTE = ("The two runtimes' first measured answers to the same prompt ids, prompt by prompt (same model and "
             "settings); prompts = compared (answered by A / by B). exact match = share of prompts whose whole "
             "answers are equal; ROUGE-L = pipeline.quality word-level ROUGE-L F1 of B's answer against A's; first "
             "diff token = index of the first differing whitespace-separated token of the answers that differ.")
INTRO = ("The reported runs differ in the app runtime (`app.name`). decode tok/s is host-timed per answer "
         "(mean); prefill tok/s (host) = n_prompt_tokens / TTFT per answer, mean over answered rows — TTFT also "
         "holds the send and the app's first sample, so it is a lower bound; prefill tok/s (llama.cpp) is the app's "
         "own prompt-eval rate from `llama_perf_context_print`. app vs host timing: for llama.cpp the host decode "
         "rate ÷ llama.cpp's eval rate (`app_counters.host_vs_app_decode`, within 10 % is the check); for "
         "simple_app the host's blended rate ÷ the app's tok/s line (`timing_agreement`, median). quality: "
         "score.json `quality.score` [95% CI over prompts].")


def runtimes_section(records: Sequence[RunRecord], facs: Sequence[Factor], ref_model: str | None = None
                     ) -> list[str]:
    """Markdown for runs that differ in ``app.name``; nothing when they all used one runtime."""
    if not differ_in_app(records):
        return []
    ref = ref_model or REF_MODEL
    out = ["## Runtimes compared", "", INTRO, "",
           markdown_table(["prompts", "runtime (app.name)", "model", "device", "decode tok/s (host)",
                           "prefill tok/s (host: n_prompt_tokens / TTFT)", "prefill tok/s (llama.cpp's own)",
                           "TTFT p50 (s)", "app vs host timing", "quality [95% CI]", "run"],
                          speed_rows(records, ref)), ""]
    missing = missing_runtimes(records, facs, ref)
    out += [*missing, ""] if missing else []
    out += ["### Answers: runtime against runtime", "", PAIR_NOTE, ""]
    pairs = agreement_rows(records, facs, ref)
    out += [markdown_table(["model and settings", "runtime A", "runtime B", "prompts", "exact match", "ROUGE-L",
                            "median first diff token", "runs (A / B)", "missing"], pairs) if pairs
            else "No two runtimes ran the same model and prompts: nothing to compare.", ""]
    out += [f"### Answers: each runtime against the float reference (`{ref}`)", "",
            f"Each run's answers against the `{ref}` run on the same prompts (preferably `app={REF_APP}`): how far "
            f"each runtime's quantised model drifts from the float model. {TOKENS_NOTE}", "",
            markdown_table(["prompts", "runtime", "model", "reference run", "prompts compared", "exact match",
                            "ROUGE-L", "missing"], reference_rows(records, facs, ref)), ""]
    return out
