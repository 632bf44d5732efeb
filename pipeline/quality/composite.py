"""score_items: every quality family for a batch of (prompt, response) items, plus quality_score and on_topic.

Which families apply (a family that does not apply is null and ``<family>_reason`` says why):
- CONTENT — does the text answer? reference_match (the item has a ``reference``), keyword_recall (``keywords``),
  rule_pass_rate (``rules``), relevance (on by default; enters as the calibrated ``relevance_score``), fidelity
  (``fp_answers`` has the item's id), judge (only with ``judge_url``; judge_score/judge_raw/judge_reason are added
  only then, so they are not in FAMILIES).
- FORM — is the text an answer at all? degeneration (non-empty answer; enters as sqrt(1 - degeneration), see
  form_factor), language_match (a supported ``lang``), fluency (a reference LM is given: fluency.py).
eos_rate, truncation_rate and answer_len are reported per item (eos_rate = 1.0/0.0 for one item, so the stage's
mean over items is the rate) but do NOT enter quality_score: they describe the stop condition, which depends on
max_new_tokens, and a looping answer is already penalised by degeneration.

Combination (issue 32): ``quality_score = quality_content × quality_form`` — the mean of the content families
times the weakest form signal — and a non-answer is capped. WHY a product and not the old plain mean of all
families: any text that is not repetitive and in the right script earned the form families (1 - degeneration ≈
0.9, language_match 1.0), and averaged with the content families they lifted word salad to 0.55, above the as-is
app's real answers (0.28). Form is necessary, never sufficient: as a factor <= 1 it can only lower what the content
earned (quality_score <= quality_content always), and a clean form adds nothing. Rejected alternatives, measured on
both labelled sets (docs/quality.md "How well the scorer separates…"): a geometric mean of all families still lets
perfect form raise a weak content score; a pure gate (form ignored unless failed) drops the ranking signal of mild
repetition (lower AUC on the SmolLM2 set); a learned weighting gives no structural guarantee that form
cannot lift and would be fitted on ~300 answers of one model. When no content family applies (relevance off, no
reference/keywords/rules) quality_score is the form factor alone and ``quality_score_basis`` says so.

Not an answer (``is_answer`` False, ``is_answer_reason``): empty, a template/control-token leak or opening markup,
a loop (``degeneration`` >= ``DEGENERATE_AT``), noise (``fluency_nll`` >= fluency.NOISE_AT), or the wrong script.
Such a text is capped at ``NOT_ANSWER_CAP`` (0.4, below ``PASS_THRESHOLD``) and at its weakest form signal
(1 - degeneration, fluency, language_match), and ``quality_gate`` says why. 0.6 sits between a text said twice
(a period-p loop repeated k times scores 1 - 1/k: k = 2 -> 0.5, a restatement, common and mild) and three times
(k = 3 -> 0.67, a loop). ``on_topic`` = relevant (cosine >= the threshold) AND an answer: "relevant" alone made a
looping answer with quality 0.01 count as on-topic; ``on_topic_reason`` names the form failure when it overrides.

``PASS_THRESHOLD`` (0.5) is the quality_score at or above which an answer counts as acceptable; it mirrors
relevance's calibration (on-topic threshold -> 0.5). On the labelled real SmolLM2 answers
(tests/quality/smollm2_labelled.jsonl and pipeline_labelled.jsonl, rules in tests/quality/data/README.md) tests
check the AUC of quality_score; ``python -m pipeline.quality auc FILE`` prints the table for every family.

Relevance is measured on the answer's content (relevance.answer_content: template tokens and list scaffolding
removed, scaled by the content share); the raw cosine of that content is in ``relevance_cosine`` and the share in
``content_share``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.quality import relevance as rel
from pipeline.quality.degeneration import degeneration_scores
from pipeline.quality.fidelity import fidelity_scores
from pipeline.quality.fluency import NOISE_AT, FluencyScorer, fluency_scores
from pipeline.quality.language import language_match
from pipeline.quality.reference import keyword_recall, reference_scores
from pipeline.quality.rules import RuleError, rule_scores, validate_rule
from pipeline.quality.text import tokens

FAMILIES: tuple[str, ...] = (
    "reference_match",
    "keyword_recall",
    "rule_pass_rate",
    "relevance",
    "fidelity",
    "degeneration",
    "language_match",
    "fluency",
    "eos_rate",
    "truncation_rate",
    "answer_len",
)
# family -> the key whose value quality_score uses, and whether to invert it.
# CONTENT families say whether the answer answers (what it says); FORM families say whether it is an answer at all
# (language, not a loop, not noise). Form is necessary, never sufficient: see combine().
CONTENT_INPUTS: tuple[tuple[str, str, bool], ...] = (
    ("reference_match", "reference_match", False),
    ("keyword_recall", "keyword_recall", False),
    ("rule_pass_rate", "rule_pass_rate", False),
    ("relevance", "relevance_score", False),
    ("fidelity", "fidelity", False),
    ("judge", "judge_score", False),  # only present when a judge URL is given
)
FORM_INPUTS: tuple[tuple[str, str, bool], ...] = (
    ("degeneration", "degeneration", True),
    ("language_match", "language_match", False),
    ("fluency", "fluency", False),
)
_SCORE_INPUTS = CONTENT_INPUTS + FORM_INPUTS


DEGENERATE_AT = 0.6
PASS_THRESHOLD = 0.5
NOT_ANSWER_CAP = 1 - DEGENERATE_AT  # a non-answer scores at most 0.4 (and at most its weakest form signal)


class QualityError(ValueError):
    """An item cannot be scored (missing prompt/response, bad rule spec). The message names the item."""


def _item_id(item: Mapping[str, Any]) -> str | None:
    value = item.get("id", item.get("prompt_id"))
    return None if value is None else str(value)


def check_item(item: Mapping[str, Any], where: str) -> None:
    """Raise QualityError prefixed with ``where`` (e.g. "FILE:LINE" or "item 3") unless the item can be scored."""
    for key in ("prompt", "response"):
        if not isinstance(item.get(key), str):
            raise QualityError(f"{where}: {key!r} must be a string, got {type(item.get(key)).__name__} — fix the input")
    for spec in item.get("rules") or ():
        try:
            validate_rule(spec)
        except RuleError as exc:
            raise QualityError(f"{where}: {exc}") from exc


def _flag(value: Any) -> float | None:
    return None if value is None else float(bool(value))


def _basic(item: Mapping[str, Any], fp_answers: Mapping[str, str] | None) -> dict[str, Any]:
    """All lexical families for one item (no embeddings)."""
    resp = item["response"]
    out: dict[str, Any] = {"id": _item_id(item)}
    out.update(reference_scores(resp, item.get("reference")))
    if out["reference_match"] is None:
        out["reference_match_reason"] = "no reference"
    out["keyword_recall"] = keyword_recall(resp, item.get("keywords"))
    if out["keyword_recall"] is None:
        out["keyword_recall_reason"] = "no keywords"
    out.update(rule_scores(resp, item.get("rules")))
    if out["rule_pass_rate"] is None:
        out["rule_pass_rate_reason"] = "no rules"
    out.update(degeneration_scores(resp))
    lm, detected, why = language_match(resp, item.get("lang"))
    out.update({"language_match": lm, "language_detected": detected})
    if why:
        out["language_match_reason"] = why
    out["eos_rate"] = _flag(item.get("eos"))
    out["truncation_rate"] = _flag(item.get("truncated"))
    for key, src in (("eos_rate", "eos"), ("truncation_rate", "truncated")):
        if out[key] is None:
            out[f"{key}_reason"] = f"no {src!r} flag on the item"
    out["answer_len"] = len(tokens(resp))
    out["answer_chars"] = len(resp)
    fp = None if fp_answers is None or out["id"] is None else fp_answers.get(out["id"])
    out["_fp"] = fp
    return out


def _values(out: Mapping[str, Any], inputs: tuple[tuple[str, str, bool], ...]) -> tuple[list[str], list[float]]:
    """(families that apply, their values in [0, 1], high = good) for one group of inputs."""
    used, values = [], []
    for family, key, invert in inputs:
        v = out.get(key)
        if v is not None:
            used.append(family)
            values.append(1 - v if invert else v)
    return used, values


def form_factor(out: Mapping[str, Any]) -> float | None:
    """The weakest form signal: fluency, language_match, sqrt(1 - degeneration); None when none applies.

    WHY sqrt for degeneration: 1 - degeneration is 1/k for a text said k times; linear, an answer that restates
    itself once ("The answer is 12.\n\nThe answer is 12.", labelled good) would lose half its score. The root makes one
    restatement cost 29 % and keeps mild repetition a (ranking) cost; loops are handled by the gate, not by this.
    """
    deg, flu, lang = out.get("degeneration"), out.get("fluency"), out.get("language_match")
    signals = [x for x in (flu, lang, None if deg is None else (1 - deg) ** 0.5) if x is not None]
    return min(signals) if signals else None


def not_an_answer(out: Mapping[str, Any]) -> str | None:
    """Why the text is not an answer by its form (None when it is one): empty, a control-token leak or opening
    markup, a loop (degeneration >= DEGENERATE_AT), noise (fluency_nll >= NOISE_AT: not language under the
    reference LM), or the wrong script. Content cannot redeem these; see the module doc."""
    deg, nll = out.get("degeneration"), out.get("fluency_nll")
    if out.get("answer_chars", 0) == 0 or deg is None:
        return "empty answer"
    if out.get("template_leak"):
        return f"template leak (template_leak {out['template_leak']:.1f})"
    if deg >= DEGENERATE_AT:
        return f"loop (degeneration {deg:.2f} >= {DEGENERATE_AT})"
    if nll is not None and nll >= NOISE_AT:
        return f"not language (fluency_nll {nll:.2f} >= {NOISE_AT} nats/token under {out.get('fluency_model')})"
    if out.get("language_match") == 0.0:
        return f"wrong language (detected {out.get('language_detected')})"
    return None


def _finish(out: dict[str, Any]) -> dict[str, Any]:
    """quality_score = content × form, gated for non-answers; on_topic = relevant and an answer; then a stable
    key order: id, families, score, details."""
    used_c, content = _values(out, CONTENT_INPUTS)
    used_f, _ = _values(out, FORM_INPUTS)
    form = form_factor(out)
    out["quality_content"] = sum(content) / len(content) if content else None
    out["quality_form"] = form
    if content:
        out["quality_score"] = out["quality_content"] * (1.0 if form is None else form)
    else:  # nothing measures what it says: the form is all there is (reported as such)
        out["quality_score"] = form
        if form is not None:
            out["quality_score_basis"] = "form only: no family measures whether the text answers the prompt"
    why = not_an_answer(out)
    out["is_answer"] = why is None
    if why:
        out["is_answer_reason"] = why
    if out["quality_score"] is not None and why and out.get("answer_chars", 0):
        deg = out.get("degeneration")
        signals = (out.get("fluency"), out.get("language_match"), None if deg is None else 1 - deg)
        cap = min([NOT_ANSWER_CAP, *(v for v in signals if v is not None)])
        out["quality_score"] = min(out["quality_score"], cap)
        out["quality_gate"] = f"not an answer: {why}; capped at {cap:.2f}"
    if out.get("on_topic") and why:
        out["on_topic"] = False
        out["on_topic_reason"] = f"relevant (relevance {out['relevance']:.2f}) but not an answer: {why}"
    out["quality_families"] = ",".join(used_c + used_f)
    if out["quality_score"] is None:
        out["quality_score_reason"] = "no family applies"
    head = ["id", *FAMILIES, "quality_score", "on_topic"]
    return {k: out[k] for k in head if k in out} | {k: v for k, v in out.items() if k not in head}


def _add_fluency(items: Sequence[Mapping[str, Any]], rows: list[dict[str, Any]], lm: FluencyScorer | None,
                 why_off: str | None) -> None:
    """The fluency family for every row; a prompt/answer pair seen before (greedy repeats) is scored once."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for item, row in zip(items, rows, strict=True):
        pair = (item["prompt"], item["response"])
        if pair not in seen:
            seen[pair] = fluency_scores(lm, *pair, why_off=why_off)
        row.update(seen[pair])


def score_items(
    items: Sequence[Mapping[str, Any]],
    *,
    relevance: bool = True,
    embedding_model: str | None = None,
    fp_answers: Mapping[str, str] | None = None,
    judge_url: str | None = None,
    judge_model: str = "judge",
    fluency: FluencyScorer | None = None,
    fluency_off_reason: str | None = None,
) -> list[dict[str, Any]]:
    """Score every item; see the module doc for which families apply. Embeddings are computed in one batch.

    Items: ``prompt``, ``response`` and optional ``id`` (or ``prompt_id``), ``reference`` (str or aliases),
    ``keywords``, ``rules``, ``lang``, ``eos``, ``truncated``. ``fp_answers`` maps item id -> the FP model's answer.
    ``fluency`` is the reference LM (fluency.py); without it the family is null with ``fluency_off_reason``.
    """
    for i, item in enumerate(items):
        check_item(item, f"item {i}" + (f" (id {_item_id(item)!r})" if _item_id(item) is not None else ""))
    rows = [_basic(item, fp_answers) for item in items]
    cos_prompt: list[float | None] = [None] * len(rows)
    cos_fp: list[float | None] = [None] * len(rows)
    content = [rel.answer_content(it["response"]) for it in items]
    if relevance and rows:
        a = [it["prompt"] for it in items]
        b = [text or it["response"] for it, (text, _) in zip(items, content, strict=True)]
        fp_idx = [i for i, r in enumerate(rows) if r["_fp"] is not None]
        sims = rel.cosine_pairs(a + [items[i]["response"] for i in fp_idx], b + [rows[i]["_fp"] for i in fp_idx],
                                embedding_model)
        cos_prompt = sims[: len(rows)]
        for j, i in enumerate(fp_idx):
            cos_fp[i] = sims[len(rows) + j]
    _add_fluency(items, rows, fluency, fluency_off_reason)
    for i, (item, row) in enumerate(zip(items, rows, strict=True)):
        row.update(fidelity_scores(item["response"], row.pop("_fp"), cos_fp[i]))
        if not relevance:
            row.update({"relevance": None, "relevance_score": None, "on_topic": None,
                        "relevance_reason": "relevance disabled"})
        elif not item["response"].strip():
            # An empty answer answers nothing: defined as 0, not measured (the embedding of "" is meaningless).
            row.update({"relevance": 0.0, "relevance_score": 0.0, "on_topic": False,
                        "relevance_reason": "empty response (defined as 0)"})
        elif not content[i][0]:
            row.update({"relevance": 0.0, "relevance_score": 0.0, "on_topic": False, "relevance_cosine": None,
                        "content_share": 0.0, "relevance_reason": "no content after removing template tokens, "
                        "markup and list scaffolding (defined as 0)"})
        else:
            c = cos_prompt[i] * content[i][1]
            row.update({"relevance": c, "relevance_score": rel.calibrated(c),
                        "on_topic": bool(c >= rel.ON_TOPIC_THRESHOLD), "relevance_cosine": cos_prompt[i],
                        "content_share": content[i][1]})
    if judge_url:
        from pipeline.quality.judge import judge_items

        for row, verdict in zip(rows, judge_items(items, url=judge_url, model=judge_model), strict=True):
            row.update(verdict)
    return [_finish(r) for r in rows]

