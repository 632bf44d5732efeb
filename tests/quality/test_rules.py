"""IFEval-style rules: each passes and fails on crafted answers; specs are validated."""

import pytest

from pipeline.quality.rules import RULES, RuleError, check_rule, rule_scores, validate_rule
from tests.quality.cases import INK_ANSWER, JOKE_ANSWER

CASES = [  # (spec, passing answer, failing answer)
    ({"name": "max_words", "n": 5}, "one two three four five", "one two three four five six"),
    ({"name": "min_words", "n": 3}, "one two three", "one two"),
    ({"name": "max_sentences", "n": 1}, "The moon is Earth's satellite.", "It is big. It is grey."),
    ({"name": "min_sentences", "n": 2}, "It is big. It is grey.", "It is big."),
    ({"name": "max_chars", "n": 10}, "short", "this is far too long"),
    ({"name": "bullet_count", "n": 3}, "- apple\n- pear\n- plum", "- apple\n- pear"),
    ({"name": "bullet_count", "n": 2}, "1. boil water\n2. add tea", "1. boil water"),
    ({"name": "lowercase"}, "the sky is blue because of scattering.", "The sky is blue."),
    ({"name": "uppercase"}, "HAPPY BIRTHDAY!", "Happy Birthday!"),
    ({"name": "must_include", "words": ["blue"]}, "The ocean is blue.", "The ocean is bluegreen."),
    ({"name": "must_not_include", "words": ["the"]}, "A cat sleeps all day.", "The cat sleeps."),
    ({"name": "keyword_frequency", "word": "apple", "n": 3}, "apple apple apple pie", "apple pie, apple tart"),
    ({"name": "starts_with", "text": "Yes"}, "  yes, it is round.", "Well, yes."),
    ({"name": "ends_with", "text": "Thank you!"}, "Great work. Thank you!  ", "Thank you! Great work."),
    ({"name": "no_commas"}, "No commas here.", "Well, here is one."),
    ({"name": "paragraph_count", "n": 2}, "Trees grow.\n\nTrees give shade.", "Trees grow. Trees give shade."),
    ({"name": "json_format"}, '```json\n{"name": "Ann", "age": 3}\n```', "name: Ann, age: 3"),
    ({"name": "wrapped_in_quotes"}, '"Read more, worry less."', "Read more, worry less."),
    ({"name": "ends_with_question"}, "Bees dance. Did you know?", "Bees dance."),
    ({"name": "matches", "pattern": r"\b1945\b"}, "It ended in 1945.", "It ended in 19450."),
    ({"name": "language", "lang": "zh"}, "草是绿色的。", "Grass is green."),
    ({"name": "joke_shape"}, JOKE_ANSWER, INK_ANSWER),
]


@pytest.mark.parametrize(("spec", "good", "bad"), CASES, ids=[f"{c[0]['name']}-{i}" for i, c in enumerate(CASES)])
def test_rule_passes_and_fails(spec, good, bad):
    assert check_rule(good, spec) is True
    assert check_rule(bad, spec) is False


def test_every_registered_rule_has_a_crafted_case():
    assert {c[0]["name"] for c in CASES} == set(RULES)


def test_seed_ink_answer_fails_the_joke_rule():
    s = rule_scores(INK_ANSWER, [{"name": "joke_shape"}, {"name": "must_include", "words": ["joke"]}])
    assert s["rule_pass_rate"] == 0.0
    assert s["rules_failed"] == "joke_shape,must_include"


def test_rule_pass_rate_is_a_fraction():
    s = rule_scores("the sky is blue", [{"name": "lowercase"}, {"name": "max_words", "n": 2}])
    assert s == {"rule_pass_rate": 0.5, "rules_passed": 1, "rules_total": 2, "rules_failed": "max_words"}
    assert rule_scores("x", [])["rule_pass_rate"] is None


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"name": "max_word"}, "unknown rule 'max_word' — known rules: max_words(n)"),
        ({"name": "max_words"}, "missing argument(s) ['n']"),
        ({"name": "max_words", "n": 3, "m": 1}, "unknown argument(s) ['m']"),
        ({"name": "max_words", "n": "3"}, "n='3' must be a non-negative integer"),
        ({"name": "max_words", "n": True}, "must be a non-negative integer"),
        ({"name": "must_include", "words": "blue"}, "must be a non-empty list"),
        ({"name": "matches", "pattern": "("}, "not a valid regex"),
        ({"name": "language", "lang": "xx"}, "supported: en, zh"),
        ("max_words", "must be an object"),
    ],
)
def test_bad_specs_are_rejected_with_the_fix(spec, fragment):
    with pytest.raises(RuleError) as ei:
        validate_rule(spec)
    assert fragment in str(ei.value)
