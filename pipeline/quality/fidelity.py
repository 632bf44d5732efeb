"""fidelity: how close is the (quantised, on-device) answer to the FP reference model's answer to the same prompt?

WHY: with greedy decoding a faithful quantisation reproduces the FP answer token for token for a while; where it
first diverges, and how similar the rest stays, is the diagnosis the seed lacked ("is it the quantisation or the
prompt?"). Reported: first diverging character and word index (None when identical), exact equality, ROUGE-L vs
the FP answer, and — when relevance embeddings are on — their cosine. The family value is the mean of ROUGE-L and
the clipped cosine (ROUGE-L alone without embeddings).
"""

from __future__ import annotations

from pipeline.quality.text import rouge_l, tokens


def first_divergence(a: list[str] | str, b: list[str] | str) -> int | None:
    """Index of the first differing element (char or token); None when equal; len(shorter) for a strict prefix."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def fidelity_scores(response: str, fp_answer: str | None, embedding_cosine: float | None = None) -> dict:
    """Family value ``fidelity`` and parts; all None (with a reason) when there is no FP answer for this prompt."""
    if fp_answer is None:
        return {"fidelity": None, "fidelity_exact": None, "fidelity_first_diff_char": None,
                "fidelity_first_diff_word": None, "fidelity_rouge_l": None, "fidelity_embedding": None,
                "fidelity_reason": "no FP reference answer for this prompt"}
    a, b = response.strip(), fp_answer.strip()
    ta, tb = tokens(a), tokens(b)
    rl = 1.0 if a == b else rouge_l(ta, tb)
    parts = [rl] + ([max(0.0, min(1.0, embedding_cosine))] if embedding_cosine is not None else [])
    return {"fidelity": sum(parts) / len(parts), "fidelity_exact": a == b,
            "fidelity_first_diff_char": first_divergence(a, b), "fidelity_first_diff_word": first_divergence(ta, tb),
            "fidelity_rouge_l": rl, "fidelity_embedding": embedding_cosine}
