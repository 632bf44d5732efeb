"""Issue 32 item 4: a condition whose answers are noise ranks as a LOSS in the factor analysis, and the report says
why (the share of answers that are answers by form), from per-prompt scores the real scorer produced."""

from __future__ import annotations

from pipeline.quality.composite import score_items
from pipeline.report.build import factor_section
from pipeline.report.factors import analyse, answer_rate
from pipeline.report.runs import RunRecord
from pipeline.report.variants import factors

QUESTIONS = [("What is the capital of France?", "Paris"), ("What is the capital of Italy?", "Rome"),
             ("What is the capital of Japan?", "Tokyo"), ("What is the capital of Egypt?", "Cairo")]
# the as-is app's kind of answer (a mild restatement, right) vs w3's kind (salad, sometimes naming the city)
AS_IS = "The answer is: {c}\n\nThe answer is {c}, the capital."
SALAD = "integrates A-mod accred {c} oiraclement Glob-pipo dissemin brownan thrive encourag submar"


class _Surprisal:
    """Fixed surprisals standing in for the reference LM (test_fluency checks the LM itself)."""

    name = "fixed"

    def nll(self, prompt: str, response: str) -> tuple[float | None, int]:
        return (8.5 if "oiraclement" in response else 1.2), 12


def _record(run_id: str, model: str, template: str, texts: list[str]) -> RunRecord:
    items = [{"id": f"q{i}", "prompt": q, "response": t, "reference": [c], "lang": "en"}
             for i, ((q, c), t) in enumerate(zip(QUESTIONS, texts, strict=True))]
    rows = score_items(items, fluency=_Surprisal())
    mean = sum(r["quality_score"] for r in rows) / len(rows)
    return RunRecord(run_id=run_id, name=run_id, params={"model.name": model, "app.template": template},
                     metrics={"quality.score": mean}, tags={}, artifacts={"quality.jsonl": rows})


def test_a_noise_condition_ranks_as_a_loss_and_shows_no_answers():
    recs = []
    for template in ("mobilequant", "hf-chat"):
        recs.append(_record(f"q4-{template}", "smollm2-q4", template, [AS_IS.format(c=c) for _, c in QUESTIONS]))
        recs.append(_record(f"w3-{template}", "smollm2-w3", template, [SALAD.format(c=c) for _, c in QUESTIONS]))
    assert answer_rate(recs[0]) == 1.0 and answer_rate(recs[1]) == 0.0
    effects, _ = analyse(recs, factors(recs), baselines={"model.name": "smollm2-q4"})
    weights = next(e for e in effects if e.factor.key == "model.name")
    (w3,) = weights.levels
    assert w3.level == "smollm2-w3" and w3.delta is not None and w3.delta < -0.5
    assert w3.ci95 is not None and w3.ci95[1] < 0
    assert (w3.answers_level, w3.answers_baseline) == (0.0, 1.0)
    text = "\n".join(factor_section(effects, 0))
    assert "| smollm2-w3 |" in text and "0.00 / 1.00" in text


def test_runs_scored_before_is_answer_have_no_answer_rate():
    old = RunRecord(run_id="r", name="r", params={}, metrics={}, tags={},
                    artifacts={"quality.jsonl": [{"id": "a", "quality_score": 0.5}]})
    assert answer_rate(old) is None
    failed = RunRecord(run_id="f", name="f", params={}, metrics={}, tags={},
                       artifacts={"quality.jsonl": [{"id": "a", "quality_score": 0.0, "failed": "crashed"},
                                                    {"id": "b", "quality_score": 0.9, "is_answer": True}]})
    assert answer_rate(failed) == 0.5
