"""reference_match and keyword_recall: does the answer contain the expected facts?

WHY several sub-metrics: a chat model rarely answers with the bare reference ("The capital of France is Paris."),
so exact match alone under-reports; token F1 and ROUGE-L reward partial overlap with long references (zh
sentences). The family value is 1.0 when any alias is contained as whole words (the usual short-answer QA check)
within the first ``ANSWER_WINDOW`` tokens, ``LATE_CREDIT`` (0.5) when it is contained only later, otherwise the best
ROUGE-L F1 against any alias (partial credit, always < 1 unless the texts match). Numbers compare by value
(text.py: "100.0" == "100", "1,000" == "1000", "1000" != "100").

WHY the window: a small model states a wrong answer confidently and names the reference in passing further on —
SmolLM2: "The closest star to Earth is actually Proxima Centauri, … close proximity to the Sun." (reference "Sun"
at token 39 of 41), "… a deep shade of blue" after "a type of mineral" for snow. A right answer states its answer
early: on the labelled SmolLM2 set the first mention in a good answer is at token <= 22, in the failing ones that
name the reference at 38-94. 30 tokens is one or two sentences; the value is a judgement (the set has no good
answer between 23 and 38 tokens to pin it down), a late mention keeps half credit rather than none.
``reference_contains`` still reports containment anywhere, ``reference_position`` the first mention's token index.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.quality.text import contains_tokens, rouge_l, token_f1, tokens

ANSWER_WINDOW = 30  # tokens in which the answer is expected to be stated (see module doc)
LATE_CREDIT = 0.5


def as_aliases(reference: str | Sequence[str] | None) -> tuple[str, ...]:
    """Normalise the prompt-set ``reference`` field (string or list of aliases) to a tuple; empty strings dropped."""
    if reference is None:
        return ()
    if isinstance(reference, str):
        return (reference,) if reference.strip() else ()
    return tuple(r for r in reference if isinstance(r, str) and r.strip())


def find_tokens(haystack: list[str], needle: list[str]) -> int | None:
    """Index of the first whole-token occurrence of ``needle`` in ``haystack``; None when absent or empty."""
    n = len(needle)
    if n == 0:
        return None
    return next((i for i in range(len(haystack) - n + 1) if haystack[i : i + n] == needle), None)


def _first_mention(response: str, alias: str) -> int | None:
    """Token index (in ``tokens(response)``) of the alias's first mention, with or without articles."""
    resp, ref = tokens(response), tokens(alias)
    pos = find_tokens(resp, ref)
    ref_na = tokens(alias, drop_articles=True)
    if pos is None and ref_na and ref_na != ref:
        pos = find_tokens(resp, ref_na)
    return pos


def reference_scores(response: str, reference: str | Sequence[str] | None) -> dict[str, float | int | None]:
    """Sub-metrics (best over aliases) and the family value ``reference_match``; all None without a reference."""
    aliases = as_aliases(reference)
    keys = ("reference_match", "reference_contains", "reference_em", "reference_f1", "reference_rouge_l",
            "reference_position")
    if not aliases:
        return dict.fromkeys(keys)
    resp = tokens(response)
    resp_na = tokens(response, drop_articles=True)
    em = f1 = rl = 0.0
    positions = [p for p in (_first_mention(response, a) for a in aliases) if p is not None]
    for alias in aliases:
        ref = tokens(alias)
        ref_na = tokens(alias, drop_articles=True)
        em = max(em, float(resp_na == ref_na and bool(ref_na)))
        f1 = max(f1, token_f1(resp_na, ref_na))
        rl = max(rl, rouge_l(resp, ref))
    pos = min(positions) if positions else None
    contains = float(pos is not None)
    if em or (pos is not None and pos < ANSWER_WINDOW):
        match = 1.0
    elif pos is not None:
        match = max(LATE_CREDIT, rl)
    else:
        match = rl
    return dict(zip(keys, (match, contains, em, f1, rl, pos), strict=True))


# Regular English inflections a keyword may carry: keywords name a topic ("bicycle", "name"), and "bicycles" or "a
# cat named Luna" are on it. Only whole-token suffixes, so "apple" still does not match "pineapple".
INFLECTIONS: tuple[str, ...] = ("s", "es", "d", "ed", "ing")


def _inflected(resp: list[str], kw: list[str]) -> bool:
    """``kw`` as whole tokens, its last word allowed one of INFLECTIONS (single-word keywords: the word itself)."""
    if contains_tokens(resp, kw):
        return True
    if not kw or not kw[-1].isalpha():
        return False
    return any(contains_tokens(resp, [*kw[:-1], kw[-1] + suffix]) for suffix in INFLECTIONS)


def keyword_recall(response: str, keywords: Sequence[str] | None) -> float | None:
    """Fraction of keywords present as whole words or regular inflections (case-insensitive); None without keywords."""
    kws = [k for k in (keywords or ()) if k.strip()]
    if not kws:
        return None
    resp = tokens(response)
    return sum(_inflected(resp, tokens(k)) for k in kws) / len(kws)
