"""Fidelity of each non-FP run to the FP reference run identical except for the model (same prompts, same app).

Why: a quality drop alone cannot tell "the quantisation broke the model" from "the prompt/template/session made
every model go off topic". With greedy decoding a faithful quantised model repeats the FP answer token for token
for a while; where it first diverges and how similar the rest stays separates the two. Reuses pipeline.quality:
``first_divergence`` and ``fidelity_scores`` (ROUGE-L over pipeline.quality.text words) and, optionally, the
embedding cosine of pipeline.quality.relevance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.quality.fidelity import fidelity_scores, first_divergence
from pipeline.report import ReportError
from pipeline.report.runs import RunRecord, measured_rows
from pipeline.report.variants import Factor, value

TOKENS_NOTE = ("first diverging token = index of the first differing whitespace-separated token (not model tokens; "
               "'identical' = the whole answer matches); ROUGE-L = pipeline.quality word-level ROUGE-L F1 "
               "(lower-cased words, punctuation dropped) against the FP answer.")


@dataclass
class FidelityResult:
    """One variant run vs its FP twin: per-prompt rows and summary, or a reason why it could not be compared."""

    run: RunRecord
    fp_run: RunRecord | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None

    def summary(self) -> dict[str, Any]:
        """n prompts, exact-match rate, median first diverging token (non-identical only), mean ROUGE-L/cosine."""
        rows = self.rows
        diffs = sorted(r["first_diff_token"] for r in rows if r["first_diff_token"] is not None)
        cos = [r["embedding_cos"] for r in rows if r["embedding_cos"] is not None]
        n = len(rows)
        return {
            "n_prompts": n,
            "exact_rate": sum(r["exact"] for r in rows) / n if n else None,
            "median_first_diff": (diffs[len(diffs) // 2] if len(diffs) % 2 else
                                  (diffs[len(diffs) // 2 - 1] + diffs[len(diffs) // 2]) / 2) if diffs else None,
            "n_diverged": len(diffs),
            "rouge_l": sum(r["rouge_l"] for r in rows) / n if n else None,
            "embedding_cos": sum(cos) / len(cos) if cos else None,
        }


def first_answers(rec: RunRecord) -> dict[str, str] | None:
    """prompt_id → the first measured answer (lowest repeat): greedy decoding makes repeats identical anyway."""
    rows = measured_rows(rec.rows("responses.jsonl"))
    if rows is None:
        return None
    out: dict[str, tuple[int, str]] = {}
    for r in rows:
        pid, rep = str(r.get("prompt_id")), int(r.get("repeat") or 0)
        if pid not in out or rep < out[pid][0]:
            out[pid] = (rep, r.get("response") or "")
    return {k: v[1] for k, v in out.items()}


def _context(rec: RunRecord, facs: Sequence[Factor]) -> tuple[str, ...]:
    """Every factor's level except the model's (model.* factors), i.e. what must match for an FP twin."""
    return tuple(value(rec, f.key) for f in facs if not f.key.startswith("model."))


def compare(run: RunRecord, fp_run: RunRecord, embeddings: bool = False, embedding_model: str | None = None
            ) -> FidelityResult:
    """Per-prompt fidelity of ``run``'s answers to ``fp_run``'s, on the prompt ids both answered."""
    res = FidelityResult(run=run, fp_run=fp_run)
    mine, ref = first_answers(run), first_answers(fp_run)
    if mine is None or ref is None:
        which = run if mine is None else fp_run
        res.reason = which.reason("responses.jsonl")
        return res
    ids = [pid for pid in mine if pid in ref]
    if not ids:
        res.reason = "no prompt ids in common with the FP run"
        return res
    cos: list[float | None] = [None] * len(ids)
    if embeddings:
        from pipeline.quality.relevance import RelevanceError, cosine_pairs

        try:
            cos = list(cosine_pairs([mine[p] for p in ids], [ref[p] for p in ids], embedding_model))
        except RelevanceError as exc:
            raise ReportError(f"--embeddings: {exc}") from None
    for pid, c in zip(ids, cos, strict=True):
        f = fidelity_scores(mine[pid], ref[pid], c)
        res.rows.append({"prompt_id": pid, "exact": bool(f["fidelity_exact"]),
                         "first_diff_token": first_divergence(mine[pid].split(), ref[pid].split()),
                         "first_diff_char": f["fidelity_first_diff_char"], "rouge_l": f["fidelity_rouge_l"],
                         "embedding_cos": c, "response": mine[pid], "fp_response": ref[pid]})
    return res


def fidelity_to_fp(records: Sequence[RunRecord], facs: Sequence[Factor], fp_model: str, *,
                   embeddings: bool = False, embedding_model: str | None = None) -> list[FidelityResult]:
    """For every run whose model is not ``fp_model``: its FP twin (newest if several) and the comparison."""
    twins: dict[tuple[str, ...], RunRecord] = {}
    for r in sorted(records, key=lambda r: r.start_time):
        if value(r, "model.name") == fp_model:
            twins[_context(r, facs)] = r
    out = []
    for r in records:
        if value(r, "model.name") == fp_model:
            continue
        twin = twins.get(_context(r, facs))
        if twin is None:
            out.append(FidelityResult(run=r, fp_run=None, reason=f"missing: no run with model.name={fp_model} and "
                                      "the same other params — add it to the sweep"))
            continue
        out.append(compare(r, twin, embeddings, embedding_model))
    return out
