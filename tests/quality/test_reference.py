"""reference_match / keyword_recall: whole-word containment, aliases, numbers, zh."""

import pytest

from pipeline.quality.reference import keyword_recall, reference_scores
from pipeline.quality.text import contains_tokens, rouge_l, tokens


def test_four_is_not_inside_42():
    assert reference_scores("The answer is 42.", ["4"])["reference_match"] == 0.0
    assert reference_scores("The answer is 4.2", "4")["reference_contains"] == 0.0
    assert reference_scores("It is 4, of course.", "4")["reference_match"] == 1.0


def test_correct_qa_answer_scores_one_with_aliases():
    s = reference_scores("The capital of France is Paris.", ["Paris"])
    assert s["reference_match"] == 1.0
    assert s["reference_em"] == 0.0  # EM alone would have called this answer wrong
    assert reference_scores("Four.", ["4", "four"])["reference_match"] == 1.0
    assert reference_scores("Paris", ["paris"])["reference_em"] == 1.0


def test_wrong_answer_scores_below_one():
    s = reference_scores("The capital of France is Lyon.", ["Paris"])
    assert s["reference_contains"] == 0.0
    assert s["reference_match"] < 1.0


def test_thousands_separator_and_articles():
    assert reference_scores("About 1,000 people came.", "1000")["reference_match"] == 1.0
    assert reference_scores("the Pacific Ocean", "Pacific Ocean")["reference_em"] == 1.0


def test_partial_credit_is_rouge_l_for_long_reference():
    ref = "water boils at one hundred degrees celsius"
    s = reference_scores("at sea level water boils at one hundred degrees", ref)
    assert 0 < s["reference_match"] < 1
    assert s["reference_match"] == pytest.approx(s["reference_rouge_l"])


def test_no_reference_is_null():
    assert reference_scores("anything", None)["reference_match"] is None
    assert reference_scores("anything", [])["reference_match"] is None


def test_chinese_is_matched_per_character():
    assert reference_scores("中国的首都是北京。", ["北京"])["reference_match"] == 1.0
    assert reference_scores("中国的首都是上海。", ["北京"])["reference_contains"] == 0.0


def test_keyword_recall_fraction():
    assert keyword_recall("A red apple and a green pear.", ["apple", "pear", "plum"]) == pytest.approx(2 / 3)
    assert keyword_recall("pineapple", ["apple"]) == 0.0
    assert keyword_recall("x", None) is None


def test_text_helpers():
    assert tokens("Don't STOP, 1,000,000 times!") == ["don't", "stop", "1000000", "times"]
    assert contains_tokens(["a", "b", "c"], ["b", "c"]) and not contains_tokens(["a", "b"], ["b", "a"])
    assert rouge_l(["a", "b", "c"], ["a", "b", "c"]) == 1.0
    assert rouge_l([], ["a"]) == 0.0
