"""Two report sections for the off-topic diagnosis that the one-factor analysis cannot give.

- **Ends**: two named runs that differ in several factors at once (simple_app as it is vs a fixed app) compared
  directly: per-prompt paired quality delta, bootstrap 95% CI over prompts (same resampling as factors.py).
- **Answers to one prompt**: the text each run gave to the seed's exact prompt (``tell me a joke.``), with the
  read-past-the-prompt case and id each row records — scores say *that* an answer changed, the text says *how*.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipeline.report import ReportError
from pipeline.report.factors import _sd, bootstrap_ci, prompt_quality
from pipeline.report.runs import RunRecord, measured_rows
from pipeline.report.table import NA, fmt, markdown_table
from pipeline.report.variants import Factor, value, variant_label

SEED_PROMPT = "tell me a joke."  # the seed's prompt, typed into simple_app on the phone
ANSWER_CHARS = 300


def parse_spec(text: str) -> dict[str, str]:
    """``key=level,key=level`` → dict (for --ends); a clear error otherwise."""
    out: dict[str, str] = {}
    for item in text.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep or not key or not val:
            raise ReportError(f"--ends {text!r}: expected KEY=LEVEL[,KEY=LEVEL...], e.g. model.name=smollm2-q4,"
                              "app.template=mobilequant")
        out[key] = val
    return out


def matching(records: Sequence[RunRecord], spec: Mapping[str, str]) -> RunRecord | None:
    """The newest run whose params equal every ``spec`` value (None when no run matches)."""
    hits = [r for r in records if all(value(r, k) == v for k, v in spec.items())]
    return max(hits, key=lambda r: r.start_time) if hits else None


@dataclass
class EndsResult:
    a: RunRecord | None
    b: RunRecord | None
    n_prompts: int = 0
    delta: float | None = None
    sd: float | None = None
    ci95: tuple[float, float] | None = None
    reason: str | None = None


def compare_ends(records: Sequence[RunRecord], spec_a: Mapping[str, str], spec_b: Mapping[str, str]) -> EndsResult:
    """quality(b) − quality(a) per prompt over the prompts both runs scored."""
    a, b = matching(records, spec_a), matching(records, spec_b)
    res = EndsResult(a, b)
    if a is None or b is None:
        res.reason = f"no run matches {dict(spec_a) if a is None else dict(spec_b)}"
        return res
    (pa, ra), (pb, rb) = prompt_quality(a), prompt_quality(b)
    if pa is None or pb is None:
        res.reason = ra or rb
        return res
    d = [pb[k] - pa[k] for k in sorted(set(pa) & set(pb))]
    if not d:
        res.reason = "no prompt scored in both runs"
        return res
    res.n_prompts, res.delta, res.sd, res.ci95 = len(d), sum(d) / len(d), _sd(d), bootstrap_ci(d)
    return res


def ends_section(records: Sequence[RunRecord], facs: Sequence[Factor], spec_a: Mapping[str, str],
                 spec_b: Mapping[str, str]) -> list[str]:
    r = compare_ends(records, spec_a, spec_b)
    label = ", ".join
    out = ["## The two ends", "", f"A = `{label(f'{k}={v}' for k, v in spec_a.items())}`, B = "
           f"`{label(f'{k}={v}' for k, v in spec_b.items())}`: delta = quality(B) − quality(A) per prompt, "
           "95% bootstrap CI over prompts (2000 resamples, seeded).", ""]
    if r.reason:
        return [*out, f"Not computed: {r.reason}.", ""]
    assert r.a is not None and r.b is not None
    qa, qb = r.a.metric("quality.score"), r.b.metric("quality.score")
    ci = NA if r.ci95 is None else f"[{r.ci95[0]:+.3f}, {r.ci95[1]:+.3f}]"
    rows = [[variant_label(r.a, facs), r.a.run_id[:8], fmt(qa, ".3f"), variant_label(r.b, facs), r.b.run_id[:8],
             fmt(qb, ".3f"), str(r.n_prompts), f"{r.delta:+.3f}", fmt(r.sd, ".3f"), ci]]
    return [*out, markdown_table(["A", "run", "quality A", "B", "run", "quality B", "n prompts", "delta (B−A)", "sd",
                                  "95% CI"], rows), ""]


def answers_section(records: Sequence[RunRecord], facs: Sequence[Factor], prompt: str = SEED_PROMPT) -> list[str]:
    """Each run's first measured answer to ``prompt`` (verbatim, cut at ANSWER_CHARS), with its quality score."""
    out = [f"## Answers to `{prompt}`", "",
           "First measured answer of each run to the seed's prompt (verbatim; newlines shown as ⏎, cut at "
           f"{ANSWER_CHARS} characters). past end = simple_app's read past the prompt in that run: case and the id "
           "fed (pipeline/prompt_model/prompt_buffer.py).", ""]
    rows = []
    for rec in records:
        resp = measured_rows(rec.rows("responses.jsonl"))
        row = next((x for x in resp or [] if x.get("prompt") == prompt), None)
        if row is None:
            continue
        qual, _ = prompt_quality(rec)
        q = (qual or {}).get(str(row.get("prompt_id")))
        pe = row.get("past_end") or {}
        text = (row.get("response") or f"[no answer: {row.get('error')}]").replace("\n", "⏎")
        cut = text[:ANSWER_CHARS] + ("…" if len(text) > ANSWER_CHARS else "")
        rows.append([variant_label(rec, facs), rec.run_id[:8],
                     f"{pe.get('case', NA)} / {pe.get('id_fed') if pe.get('id_fed') is not None else '—'}"
                     if pe else NA, fmt(q, ".2f"), cut])
    if not rows:
        return []
    return [*out, markdown_table(["variant", "run", "past end (case / id)", "quality", "answer"], rows), ""]
