"""The off-topic report's two extra sections: the two ends compared directly, and the seed prompt's answers."""

from __future__ import annotations

import pytest

from pipeline.report import ReportError
from pipeline.report.contrasts import SEED_PROMPT, answers_section, compare_ends, ends_section, parse_spec
from pipeline.report.runs import RunRecord
from pipeline.report.variants import factors

PROMPTS = {"joke": SEED_PROMPT, "q1": "What is 2 plus 2?", "q2": "Capital of Peru?"}


def _run(i: int, template: str, session: str, scores: dict[str, float], answer: str,
         past_end: dict | None) -> RunRecord:
    resp = [{"prompt_id": k, "prompt": PROMPTS[k], "response": answer if k == "joke" else "x", "warmup": False,
             "past_end": past_end, "error": None} for k in scores]
    qual = [{"id": k, "quality_score": v} for k, v in scores.items()]
    return RunRecord(run_id=f"r{i:07d}", name=f"r{i}", start_time=i,
                     params={"app.template": template, "session.mode": session, "model.name": "m"},
                     metrics={"quality.score": sum(scores.values()) / len(scores)}, tags={},
                     artifacts={"responses.jsonl": resp, "quality.jsonl": qual})


def test_ends_are_paired_per_prompt_and_answers_are_shown_verbatim() -> None:
    a = _run(1, "mobilequant", "shared", {"joke": 0.0, "q1": 0.5, "q2": 0.2}, "The 100-year|old\nlady",
             {"case": "unwritten", "id_fed": 0, "index": 22})
    b = _run(2, "hf-chat", "fresh", {"joke": 1.0, "q1": 0.5, "q2": 0.8}, "Why did the chicken", None)
    recs = [a, b]
    r = compare_ends(recs, parse_spec("app.template=mobilequant,session.mode=shared"),
                     parse_spec("app.template=hf-chat, session.mode=fresh"))
    assert (r.a, r.b, r.n_prompts) == (a, b, 3)
    assert r.delta == pytest.approx((1.0 + 0.0 + 0.6) / 3)
    assert r.ci95 is not None and r.ci95[0] <= r.delta <= r.ci95[1]
    facs = factors(recs)
    md = "\n".join(ends_section(recs, facs, {"app.template": "mobilequant"}, {"app.template": "hf-chat"}))
    assert "+0.533" in md and "| 3 |" in md
    md = "\n".join(answers_section(recs, facs))
    assert "The 100-year\\|old⏎lady" in md and "unwritten / 0" in md and "Why did the chicken" in md
    assert "| 0.00 |" in md and "| 1.00 |" in md


def test_missing_end_and_bad_spec_are_reported() -> None:
    a = _run(1, "mobilequant", "shared", {"q1": 0.5}, "", None)
    md = "\n".join(ends_section([a], factors([a]), {"app.template": "mobilequant"}, {"app.template": "hf-chat"}))
    assert "Not computed: no run matches {'app.template': 'hf-chat'}" in md
    assert answers_section([a], factors([a])) == []  # no run answered the seed prompt: no section
    with pytest.raises(ReportError, match="expected KEY=LEVEL"):
        parse_spec("app.template")
