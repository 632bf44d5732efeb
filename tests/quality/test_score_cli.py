"""score_items and the `python -m pipeline.quality` CLI contract (real subprocess)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.quality.composite import FAMILIES, QualityError, score_items
from tests.quality.cases import INK_ANSWER, JOKE_ANSWER, JOKE_PROMPT, LOOPING_ANSWER

ROOT = Path(__file__).resolve().parents[2]


def test_families_in_order_and_applicability_without_relevance():
    qa, free = score_items(
        [
            {"id": "q1", "prompt": "What is 2+2?", "response": "It is 4.", "reference": ["4", "four"], "lang": "en",
             "eos": True, "truncated": False},
            {"prompt": "say something", "response": "Hello there."},
        ],
        relevance=False,
    )
    assert list(qa)[: len(FAMILIES) + 1] == ["id", *FAMILIES]
    assert qa["reference_match"] == 1.0 and qa["eos_rate"] == 1.0 and qa["truncation_rate"] == 0.0
    assert qa["quality_families"] == "reference_match,degeneration,language_match"
    assert qa["quality_content"] == 1.0
    assert qa["quality_form"] == pytest.approx(min(1.0, (1 - qa["degeneration"]) ** 0.5))
    assert qa["quality_score"] == pytest.approx(qa["quality_content"] * qa["quality_form"])
    assert qa["fluency"] is None and qa["fluency_reason"] == "no reference LM"
    assert qa["relevance"] is None and qa["on_topic"] is None and qa["relevance_reason"] == "relevance disabled"
    assert free["reference_match"] is None and free["reference_match_reason"] == "no reference"
    assert free["eos_rate"] is None and "eos" in free["eos_rate_reason"]
    assert free["quality_families"] == "degeneration"
    assert free["quality_content"] is None and "form only" in free["quality_score_basis"]


def test_form_families_never_lift_the_score_above_what_the_content_earns():
    """The issue-32 guarantee: quality_score <= the mean of the content families, whatever the form says."""
    answers = ["The capital of France is Paris.", "Lyon is a city.", "France France France France France France",
               "<|im_end|>Paris", "capital capital", "巴黎", "I think it is Paris, the capital of France, yes."]
    rows = score_items([{"prompt": "What is the capital of France?", "response": a, "reference": ["Paris"],
                         "lang": "en"} for a in answers])
    for r in rows:
        assert r["quality_content"] is not None and r["quality_score"] <= r["quality_content"] + 1e-12, r
        assert not (r["on_topic"] and not r["is_answer"]), r  # on-topic implies an answer: they cannot contradict


def test_seed_case_scores_low_and_off_topic_with_relevance_on():
    ink, joke, loop = score_items(
        [
            {"id": "joke", "prompt": JOKE_PROMPT, "response": INK_ANSWER, "rules": [{"name": "joke_shape"}]},
            {"id": "joke", "prompt": JOKE_PROMPT, "response": JOKE_ANSWER, "rules": [{"name": "joke_shape"}]},
            {"id": "loop", "prompt": "Who are you?", "response": LOOPING_ANSWER},
        ],
    )
    assert ink["on_topic"] is False and ink["rule_pass_rate"] == 0.0 and ink["relevance_score"] < 0.5
    assert joke["on_topic"] is True and joke["rule_pass_rate"] == 1.0
    assert ink["quality_score"] < 0.5 < joke["quality_score"]
    assert loop["degeneration"] > 0.8


def test_fidelity_uses_fp_answers_by_id():
    same, other = score_items(
        [{"id": "a", "prompt": "p", "response": "Paris is the capital."},
         {"id": "b", "prompt": "p", "response": "Lyon, maybe."}],
        fp_answers={"a": "Paris is the capital.", "b": "Paris is the capital."},
    )
    assert same["fidelity"] == pytest.approx(1.0, abs=1e-5) and same["fidelity_exact"] is True
    assert other["fidelity"] < 0.6 and other["fidelity_first_diff_char"] == 0


def test_empty_answer_is_defined_off_topic():
    (row,) = score_items([{"prompt": "tell me a joke.", "response": ""}])
    assert row["relevance"] == 0.0 and row["on_topic"] is False and "empty" in row["relevance_reason"]
    assert row["degeneration"] is None


def test_bad_items_name_the_item():
    with pytest.raises(QualityError, match=r"item 1 \(id 'x'\): 'response' must be a string"):
        score_items([{"prompt": "a", "response": "b"}, {"id": "x", "prompt": "a"}], relevance=False)
    with pytest.raises(QualityError, match="unknown rule 'nope'"):
        score_items([{"prompt": "a", "response": "b", "rules": [{"name": "nope"}]}], relevance=False)


def _cli(*args, stdin=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline.quality", *args], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_cli_scores_a_hand_typed_transcript(tmp_path):
    f = tmp_path / "answers.jsonl"
    f.write_text(
        json.dumps({"prompt": JOKE_PROMPT, "response": INK_ANSWER, "keywords": ["joke"]}) + "\n\n"
        + json.dumps({"prompt": "Capital of France?", "response": "Paris.", "reference": "Paris"}) + "\n",
        encoding="utf-8",
    )
    proc = _cli(str(f), "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 2
    assert all(set(FAMILIES) | {"quality_score", "on_topic"} <= set(r) for r in rows)
    assert rows[0]["on_topic"] is False and rows[0]["keyword_recall"] == 0.0
    assert rows[1]["on_topic"] is True and rows[1]["reference_match"] == 1.0


def test_cli_no_relevance_and_stdin():
    proc = _cli("-", "--no-relevance", stdin=json.dumps({"prompt": "p", "response": "r"}) + "\n")
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert row["relevance"] is None and row["on_topic"] is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "p", "response": "r"}\n{"prompt": "p", "response": \n', "x.jsonl:2: invalid JSON"),
        ('{"prompt": "p"}\n', "x.jsonl:1: 'response' must be a string"),
        ('{"prompt": "p", "response": "r", "rules": [{"name": "max_word", "n": 1}]}\n', "x.jsonl:1: unknown rule"),
    ],
)
def test_cli_errors_are_one_line_with_file_and_line(tmp_path, content, message):
    f = tmp_path / "x.jsonl"
    f.write_text(content, encoding="utf-8")
    proc = _cli(str(f), "--no-relevance")
    assert proc.returncode == 2 and proc.stdout == ""
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_correct_answers_to_the_qa_set_score_one_on_reference_match():
    """Every qa item answered correctly in a chatty sentence scores 1; answered with another item's answer, < 1."""
    from pipeline.run.prompts import load_prompts

    path = ROOT / "prompts" / "qa.jsonl"
    if not path.exists():
        pytest.skip("prompts/qa.jsonl not written yet")
    qa = load_prompts(path)
    right = [{**p.to_item(), "response": f"Sure. The answer is {p.reference[0]}."} for p in qa]
    wrong = [{**p.to_item(), "response": f"The answer is {q.reference[0]}."}
             for p, q in zip(qa, qa[1:] + qa[:1], strict=True) if not set(p.reference) & set(q.reference)]
    assert all(r["reference_match"] == 1.0 for r in score_items(right, relevance=False))
    assert sum(r["reference_match"] == 1.0 for r in score_items(wrong, relevance=False)) <= len(wrong) // 10


def test_strongly_degenerate_answers_are_capped_below_the_pass_threshold():
    from pipeline.quality.composite import DEGENERATE_AT, PASS_THRESHOLD

    twice, thrice, leak = score_items(
        [{"prompt": "How many months are in a year?", "response": "The answer is 12.\n\nThe answer is 12.",
          "reference": ["12"]},
         {"prompt": "How many months are in a year?",
          "response": "The answer is 12.\n\nThe answer is 12.\n\nThe answer is 12.", "reference": ["12"]},
         {"prompt": "What is the capital of Italy?", "response": "The capital of Italy is Rome.</s>",
          "reference": ["Rome"]}],
        relevance=False,
    )
    assert twice["degeneration"] < DEGENERATE_AT and "quality_gate" not in twice  # said twice: mild, only averaged
    assert twice["quality_score"] > PASS_THRESHOLD
    for row in (thrice, leak):
        assert row["degeneration"] >= DEGENERATE_AT and "capped" in row["quality_gate"]
        assert row["quality_score"] == pytest.approx(1 - row["degeneration"]) and row["quality_score"] < PASS_THRESHOLD
        assert row["reference_match"] == 1.0  # the cap, not the fact, sinks them


def test_content_free_answer_has_zero_relevance_and_is_off_topic():
    (row,) = score_items([{"prompt": JOKE_PROMPT, "response": "<!--\n\nA: 1.\n\nA: 2.\n\nA: 3.\n\nA: 4."}])
    assert row["relevance"] == 0.0 and row["on_topic"] is False and "no content" in row["relevance_reason"]
    assert row["quality_score"] == 0.0


def test_whitespace_only_answer_is_not_an_answer_and_scores_zero():
    """smollm2-w4's real answer to "What is the opposite of hot?" was 40 vertical tabs: no form signal applies."""
    (row,) = score_items([{"prompt": "What is the opposite of hot?", "response": "\x0b" * 40, "reference": ["cold"],
                           "lang": "en"}])
    assert row["is_answer"] is False and row["is_answer_reason"] == "empty answer"
    assert row["quality_score"] == 0.0 and row["on_topic"] is False and "capped at 0.40" in row["quality_gate"]
