"""reference_match and keyword_recall: does the answer contain the expected facts?

WHY several sub-metrics: a chat model rarely answers with the bare reference ("The capital of France is Paris."),
so exact match alone under-reports; token F1 and ROUGE-L reward partial overlap with long references (zh
sentences). The family value is 1.0 when any alias is contained as whole words (the usual short-answer QA check),
otherwise the best ROUGE-L F1 against any alias (partial credit, always < 1 unless the texts match).
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.quality.text import contains_tokens, rouge_l, token_f1, tokens


def as_aliases(reference: str | Sequence[str] | None) -> tuple[str, ...]:
    """Normalise the prompt-set ``reference`` field (string or list of aliases) to a tuple; empty strings dropped."""
    if reference is None:
        return ()
    if isinstance(reference, str):
        return (reference,) if reference.strip() else ()
    return tuple(r for r in reference if isinstance(r, str) and r.strip())


def reference_scores(response: str, reference: str | Sequence[str] | None) -> dict[str, float | None]:
    """Sub-metrics (best over aliases) and the family value ``reference_match``; all None without a reference."""
    aliases = as_aliases(reference)
    keys = ("reference_match", "reference_contains", "reference_em", "reference_f1", "reference_rouge_l")
    if not aliases:
        return dict.fromkeys(keys)
    resp = tokens(response)
    resp_na = tokens(response, drop_articles=True)
    contains = em = f1 = rl = 0.0
    for alias in aliases:
        ref = tokens(alias)
        ref_na = tokens(alias, drop_articles=True)
        contains = max(contains, float(contains_tokens(resp, ref) or (bool(ref_na) and contains_tokens(resp, ref_na))))
        em = max(em, float(resp_na == ref_na and bool(ref_na)))
        f1 = max(f1, token_f1(resp_na, ref_na))
        rl = max(rl, rouge_l(resp, ref))
    match = 1.0 if contains or em else rl
    return dict(zip(keys, (match, contains, em, f1, rl), strict=True))


def keyword_recall(response: str, keywords: Sequence[str] | None) -> float | None:
    """Fraction of keywords present as whole words (case-insensitive); None when the prompt has no keywords."""
    kws = [k for k in (keywords or ()) if k.strip()]
    if not kws:
        return None
    resp = tokens(response)
    return sum(contains_tokens(resp, tokens(k)) for k in kws) / len(kws)
