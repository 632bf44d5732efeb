"""reference_match / keyword_recall: whole-word containment, aliases, numbers, zh."""

import pytest

from pipeline.quality.reference import ANSWER_WINDOW, LATE_CREDIT, keyword_recall, reference_scores
from pipeline.quality.text import canonical_number, contains_tokens, rouge_l, tokens


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
    assert keyword_recall("apples", ["banana"]) == 0.0
    assert keyword_recall("x", None) is None


def test_text_helpers():
    assert tokens("Don't STOP, 1,000,000 times!") == ["don't", "stop", "1000000", "times"]
    assert contains_tokens(["a", "b", "c"], ["b", "c"]) and not contains_tokens(["a", "b"], ["b", "a"])
    assert rouge_l(["a", "b", "c"], ["a", "b", "c"]) == 1.0
    assert rouge_l([], ["a"]) == 0.0


@pytest.mark.parametrize(("response", "ref"), [
    ("Water boils at approximately 100.0 degrees Celsius.", "100"),
    ("It is 100.", "100.0"),
    ("About 1,000 people came.", "1000"),
    ("The price is 2.50 dollars.", "2.5"),
    ("In total 1,000.00 units.", "1000"),
])
def test_numeric_normalisation_matches_equal_numbers(response, ref):
    assert reference_scores(response, [ref])["reference_match"] == 1.0


@pytest.mark.parametrize(("response", "ref"), [
    ("It is about 1000 degrees.", "100"),
    ("It is 100.5 degrees.", "100"),
    ("It is 10.0 degrees.", "100"),
    ("Version 1.1.1 shipped.", "1.1"),
])
def test_numeric_normalisation_keeps_different_numbers_apart(response, ref):
    assert reference_scores(response, [ref])["reference_contains"] == 0.0


def test_canonical_number():
    assert [canonical_number(t) for t in ("100.0", "2.50", "0.0", "3.14", "1.1.1", "42")] == \
        ["100", "2.5", "0", "3.14", "1.1.1", "42"]


def test_keyword_recall_accepts_regular_inflections_only():
    assert keyword_recall("A cat named Luna.", ["cat", "name"]) == 1.0
    assert keyword_recall("The history of bicycles is long.", ["bicycle"]) == 1.0
    assert keyword_recall("She was sleeping.", ["sleep"]) == 1.0
    assert keyword_recall("Bicycle racing.", ["racing bicycles"]) == 0.0  # order still matters
    assert keyword_recall("namely", ["name"]) == 0.0 and keyword_recall("catalogue", ["cat"]) == 0.0


def test_reference_named_only_in_passing_gets_half_credit():
    late = ("The closest star to Earth is actually Proxima Centauri, which is approximately 4.22 light-years away "
            "from our solar system. This is a rare celestial body that is not visible from Earth due to its "
            "extremely close proximity to the Sun.")
    s = reference_scores(late, ["Sun", "the Sun"])
    assert s["reference_contains"] == 1.0 and s["reference_position"] >= ANSWER_WINDOW
    assert s["reference_match"] == LATE_CREDIT
    early = reference_scores("Sure. The answer is the Sun, a star about 8 light-minutes away.", ["Sun", "the Sun"])
    assert early["reference_match"] == 1.0 and early["reference_position"] == 4
    assert reference_scores("Proxima Centauri.", ["Sun"])["reference_position"] is None
