"""fidelity: how close is the (quantised, on-device) answer to the FP reference model's answer to the same prompt?

WHY: with greedy decoding a faithful quantisation reproduces the FP answer token for token for a while; where it
first diverges, and how similar the rest stays, is the diagnosis the seed lacked ("is it the quantisation or the
prompt?"). Reported: first diverging character and word index (None when identical), exact equality, ROUGE-L vs
the FP answer, and — when relevance embeddings are on — their cosine. The family value is the mean of ROUGE-L and
the clipped cosine (ROUGE-L alone without embeddings).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.jsonio import iter_jsonl
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


def read_fp_answers(path: Path) -> dict[str, str]:
    """The FP reference run's answers by prompt id, from its responses.jsonl (or any JSONL with ``id``/``prompt_id``
    and ``response``); warm-up rows skipped, the first repeat kept (greedy repeats are identical). Raises ValueError
    naming FILE:LINE for a line that is not such an answer."""
    out: dict[str, str] = {}
    for n, obj in iter_jsonl(path):  # a line that is not JSON raises ValueError naming FILE:LINE
        key = obj.get("id", obj.get("prompt_id")) if isinstance(obj, dict) else None
        if key is None or not isinstance(obj.get("response"), str):
            raise ValueError(f"{path}:{n}: an FP answer line needs 'id' (or 'prompt_id') and a string 'response'")
        if not obj.get("warmup"):
            out.setdefault(str(key), obj["response"])
    return out
