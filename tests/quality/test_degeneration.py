"""degeneration: loops score high, normal prose low."""

import pytest

from pipeline.quality.degeneration import (
    char_loop,
    degeneration_scores,
    distinct_n,
    is_skeleton_line,
    list_skeleton,
    longest_repeated_ngram,
    phrase_repeat,
    strip_markup,
    template_leak,
    template_leaks,
)
from pipeline.quality.text import tokens
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


# --- rules added for real SmolLM2 failures (hand-written examples of each) ---

SKELETON_JOKE = "<!--\n\nA: 1.\n\nA: 2.\n\nA: 3.\n\nA: 4.\n\nA: 5.\n\nA: 6."


def test_phrase_restated_three_times_is_a_loop_twice_is_not():
    line = "A moment of stillness, a fleeting sight, under the silver moon we stand."
    filler = "The river bends and the wind moves through the tall reeds by the shore."
    assert phrase_repeat(tokens(" ".join([line, filler] * 4))) > 0.4
    assert degeneration_scores(" ".join([line, filler] * 4))["degeneration"] > 0.4
    assert phrase_repeat(tokens(f"{line} {filler} {line}")) == 0.0


def test_digit_and_char_loops():
    s = degeneration_scores("1. **1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1")
    assert s["char_loop"] > 0.8 and s["degeneration"] > 0.8
    assert char_loop("~~~~~~~~~~~~~~~~,~~~~,~~~~,~~~~,~~~~,") > 0.9
    assert degeneration_scores("~~~~~~~~~~~~~~~~~~~~")["degeneration"] == 1.0  # no word tokens, still degenerate


@pytest.mark.parametrize("text", ["Heading\n-----------\nbody text here", "a\n* * *\nb", "Wait... what?!",
                                  "It costs 1000000 dollars.", "Version 1.2.3 is out."])
def test_layout_and_ordinary_numbers_are_not_char_loops(text):
    assert char_loop(text) == 0.0


def test_template_token_leaks():
    assert template_leaks("Sure!<|assistant|>\n<|assistant|>") == 2
    assert degeneration_scores("a <|user|> b <|user|> c <|user|>")["template_leaks"] == 3
    assert degeneration_scores("Sure! <|im_end|> <|im_start|>assistant")["template_leak"] == 1.0
    assert degeneration_scores("Paris.</s>")["template_leak"] == 1.0  # one leaked control token is a broken template
    assert degeneration_scores("Hi <|bee|> there")["template_leak"] == 1.0  # any <|name|> chat marker
    assert template_leak("<!-- hi") == 0.5 and template_leak("Use <!-- to open an HTML comment.") == 0.0
    assert template_leaks("<!-- hi") == 1 and template_leaks("Use <!-- to open an HTML comment.") == 0
    assert template_leak("x < y and a|b > c") == 0.0
    assert strip_markup("hi <|user|> there </s>").split() == ["hi", "there"]


def test_list_skeleton():
    assert list_skeleton(SKELETON_JOKE) == 1.0
    assert degeneration_scores(SKELETON_JOKE)["degeneration"] == 1.0
    assert list_skeleton("1. Boil water\n2. Add tea\n3. Wait\n4. Pour") == 0.0
    assert list_skeleton("Steps:\n1.\n2.\nDone") == 0.0  # two empty bullets: a slip, not a skeleton
    assert is_skeleton_line("- **2.**") and is_skeleton_line("A: 1.") and not is_skeleton_line("A: Paris.")


def test_every_signal_stays_in_unit_interval():
    for text in (SKELETON_JOKE, LOOPING_ANSWER, "x", "<|user|>" * 9, "1." * 80):
        s = degeneration_scores(text)
        for key in ("degeneration", "phrase_repeat", "char_loop", "template_leak", "list_skeleton"):
            assert 0.0 <= s[key] <= 1.0, (key, text[:20])


@pytest.mark.timeout(30)  # a hang detector, not a speed assertion: the old marker regex backtracked for minutes
@pytest.mark.parametrize("line", ["\\_" * 3000 + "x", "1" * 5000 + "x", ". " * 3000 + "x", "A: 1. " * 800 + "x"])
def test_list_skeleton_check_is_linear_on_long_failing_lines(line):
    from pipeline.quality.degeneration import degeneration_scores

    out = degeneration_scores("\n".join([line] * 4))
    assert 0.0 <= out["degeneration"] <= 1.0
