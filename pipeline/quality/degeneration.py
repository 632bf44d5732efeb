"""degeneration: does the answer loop or repeat itself (the classic failure of over-quantised models)?

Score in [0, 1], high = degenerate; quality_score uses 1 - score. It is the MAX of three signals, because each
catches a different loop and one strong signal is enough:
- 1 - distinct-2: share of repeated token bigrams ("the the the", a phrase cycling);
- longest repeated n-gram as a share of the answer (counted only from 3 tokens up: every natural sentence repeats
  a word or a two-word collocation such as "of the"; a period-p loop repeated k times scores ~1 - 1/k);
- repeated-line ratio: share of non-empty lines that duplicate an earlier line (list/line loops).
"""

from __future__ import annotations

from pipeline.quality.text import tokens

MIN_REPEAT = 3  # n-grams shorter than this repeat in ordinary prose


def distinct_n(toks: list[str], n: int = 2) -> float | None:
    """Unique n-grams / n-grams; None when the text has fewer than n tokens (undefined, not 'perfect')."""
    grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def longest_repeated_ngram(toks: list[str]) -> int:
    """Length of the longest token n-gram occurring at least twice (occurrences may overlap).

    Binary search on n works because a repeated n-gram implies a repeated (n-1)-gram; each probe is a set pass,
    so this is O(len * log len) n-gram hashes — fast enough for 2 k-token answers.
    """
    def has_repeat(n: int) -> bool:
        seen: set[tuple[str, ...]] = set()
        for i in range(len(toks) - n + 1):
            g = tuple(toks[i : i + n])
            if g in seen:
                return True
            seen.add(g)
        return False

    lo, hi = 0, max(len(toks) - 1, 0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if has_repeat(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def repeated_line_ratio(text: str) -> float | None:
    """Share of non-empty lines that repeat an earlier one; None for a single-line answer."""
    lines = [ln.strip().casefold() for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        return None
    return 1 - len(set(lines)) / len(lines)


def degeneration_scores(response: str) -> dict[str, float | int | None | str]:
    """Family value ``degeneration`` plus its parts; None (with a reason) for an empty answer."""
    toks = tokens(response)
    if not toks:
        return {"degeneration": None, "distinct_2": None, "longest_repeat": 0, "longest_repeat_ratio": None,
                "repeated_line_ratio": None, "degeneration_reason": "empty response"}
    d2 = distinct_n(toks, 2)
    lrn = longest_repeated_ngram(toks)
    lrn_ratio = lrn / len(toks) if lrn >= MIN_REPEAT else 0.0
    rlr = repeated_line_ratio(response)
    parts = [1 - d2 if d2 is not None else 0.0, lrn_ratio, rlr or 0.0]
    return {"degeneration": max(parts), "distinct_2": d2, "longest_repeat": lrn, "longest_repeat_ratio": lrn_ratio,
            "repeated_line_ratio": rlr}
