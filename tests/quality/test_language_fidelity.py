"""language_match (script detector) and fidelity (vs the FP answer)."""

from pipeline.quality.fidelity import fidelity_scores, first_divergence
from pipeline.quality.language import detect, language_match


def test_detect_scripts():
    assert detect("北京是中国的首都。") == "zh"
    assert detect("The capital is Beijing.") == "en"
    assert detect("北京 (Beijing) 是首都") == "zh"  # a few Latin words do not flip a Chinese answer
    assert detect("東京は日本の首都です") == "ja"
    assert detect("1234 !!") is None


def test_language_match_values_and_reasons():
    assert language_match("北京。", "zh")[0] == 1.0
    assert language_match("Beijing.", "zh")[0] == 0.0
    assert language_match("Beijing.", None)[2] == "no lang given"
    value, _, reason = language_match("Bonjour", "fr")
    assert value is None and "not supported" in reason
    assert language_match("42", "en")[0] is None


def test_fidelity_identical_and_diverging():
    same = fidelity_scores("Paris is the capital.", "Paris is the capital.")
    assert same["fidelity"] == 1.0 and same["fidelity_exact"] is True and same["fidelity_first_diff_char"] is None
    diff = fidelity_scores("Paris is a city.", "Paris is the capital.", embedding_cosine=0.5)
    assert diff["fidelity_first_diff_char"] == 9 and diff["fidelity_first_diff_word"] == 2
    assert 0 < diff["fidelity"] < 1
    assert diff["fidelity"] == (diff["fidelity_rouge_l"] + 0.5) / 2


def test_fidelity_without_fp_answer_is_null():
    s = fidelity_scores("x", None)
    assert s["fidelity"] is None and "no FP" in s["fidelity_reason"]


def test_first_divergence_prefix():
    assert first_divergence("abc", "abcd") == 3
    assert first_divergence(["a"], ["a"]) is None
