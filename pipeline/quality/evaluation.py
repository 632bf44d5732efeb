"""How well does the scorer separate good answers from failures? ROC AUC of quality_score and of each family.

WHY AUC: quality_score is used to rank models and settings, so what matters is that a good answer scores above a
failing one, whatever the absolute level; AUC is exactly the probability of that (ties count one half), needs no
threshold, and is comparable across families. Accuracy at ``PASS_THRESHOLD`` is reported beside it because the
threshold is what a reader of a single score uses.

Input: scored rows (``score_items`` output) and 0/1 labels (1 = good), e.g. tests/quality/smollm2_labelled.jsonl.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# (column name, key in the scored row, invert): degeneration is "high = bad", so its AUC is of 1 - degeneration.
AUC_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("quality_score", "quality_score", False),
    ("reference_match", "reference_match", False),
    ("keyword_recall", "keyword_recall", False),
    ("rule_pass_rate", "rule_pass_rate", False),
    ("relevance", "relevance_score", False),
    ("1 - degeneration", "degeneration", True),
    ("language_match", "language_match", False),
    ("fluency", "fluency", False),
    ("fidelity", "fidelity", False),
)


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """P(score of a random good item > score of a random failing item), ties 1/2; None without both classes.

    Rank-sum (Mann-Whitney U) form with average ranks for ties: O(n log n), exact.
    """
    if len(scores) != len(labels):
        raise ValueError(f"roc_auc: {len(scores)} scores vs {len(labels)} labels")
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auc_table(scored: Sequence[Mapping[str, Any]], labels: Sequence[int],
              pass_threshold: float | None = None) -> list[dict[str, Any]]:
    """One row per column of AUC_COLUMNS: n items where it applies, n good / failing, AUC (None = undefined).

    With ``pass_threshold`` the quality_score row also has ``accuracy`` (score >= threshold <=> label 1).
    """
    out = []
    for name, key, invert in AUC_COLUMNS:
        pairs = [(1 - r[key] if invert else r[key], y) for r, y in zip(scored, labels, strict=True)
                 if r.get(key) is not None]
        row: dict[str, Any] = {"family": name, "n": len(pairs), "n_good": sum(y for _, y in pairs),
                               "n_fail": sum(1 - y for _, y in pairs),
                               "auc": roc_auc([s for s, _ in pairs], [y for _, y in pairs])}
        if pass_threshold is not None and key == "quality_score" and pairs:
            row["accuracy"] = sum((s >= pass_threshold) == bool(y) for s, y in pairs) / len(pairs)
        out.append(row)
    return out


def format_auc_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table (docs/quality.md quotes it verbatim)."""
    lines = ["| family | n | good | failing | AUC |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        auc = "n/a" if r["auc"] is None else f"{r['auc']:.3f}"
        if "accuracy" in r:
            auc += f" (accuracy at pass threshold {r['accuracy']:.3f})"
        lines.append(f"| {r['family']} | {r['n']} | {r['n_good']} | {r['n_fail']} | {auc} |")
    return "\n".join(lines)
