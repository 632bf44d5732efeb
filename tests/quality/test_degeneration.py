"""degeneration: loops score high, normal prose low."""

import pytest

from pipeline.quality.degeneration import degeneration_scores, distinct_n, longest_repeated_ngram
from tests.quality.cases import INK_ANSWER, JOKE_ANSWER, LOOPING_ANSWER


def test_looping_text_scores_high():
    s = degeneration_scores(LOOPING_ANSWER)
    assert s["degeneration"] > 0.8
    assert s["distinct_2"] < 0.2
    assert s["longest_repeat"] > 50


@pytest.mark.parametrize("text", [INK_ANSWER, JOKE_ANSWER, "Paris.", "The capital of France is Paris."])
def test_normal_answers_score_low(text):
    assert degeneration_scores(text)["degeneration"] < 0.2


def test_single_token_loop_and_repeated_lines():
    assert degeneration_scores("the " * 30)["degeneration"] > 0.9
    s = degeneration_scores("- buy milk\n- buy milk\n- buy milk\n- buy eggs")
    assert s["repeated_line_ratio"] == pytest.approx(0.5)
    assert s["degeneration"] >= 0.5


def test_empty_answer_is_null_with_reason():
    s = degeneration_scores("   ")
    assert s["degeneration"] is None and s["degeneration_reason"] == "empty response"


def test_helpers():
    assert longest_repeated_ngram(["a", "b", "c", "a", "b", "c", "a", "b", "c"]) == 6  # overlapping occurrences count
    assert longest_repeated_ngram(["a", "b", "c", "d"]) == 0
    assert distinct_n(["a"], 2) is None
    assert distinct_n(["a", "b", "a", "b"], 2) == pytest.approx(2 / 3)
