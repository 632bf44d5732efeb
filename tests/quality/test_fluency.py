"""fluency: the batched numpy forward, the surprisal of novel tokens, the ramp, the reference lookup — all on the
project's own tiny model (no SmolLM2 at test time; its recorded surprisals are checked in test_pipeline_labelled)."""

import random

import numpy as np
import pytest

from pipeline.guest.npllama import NumpyLlama
from pipeline.models.tiny import load_examples
from pipeline.quality import fluency as flu
from pipeline.quality.composite import score_items


@pytest.fixture(scope="module")
def tiny_lm(tiny_model):
    return flu.ReferenceLM.from_dir(tiny_model("tiny-fp"), "tiny-fp")


def test_batched_logprobs_equal_the_engines_token_by_token_forward(tiny_lm):
    ex = load_examples("train")[0]
    context, answer = tiny_lm.chat(ex.prompt), tiny_lm.encode(ex.answer)
    ids = context + answer
    got = flu.sequence_logprobs(tiny_lm.model, ids, len(context))
    engine: NumpyLlama = tiny_lm.model
    cache, want = engine.new_cache(len(ids)), []
    for pos, tok in enumerate(ids[:-1]):
        logits = engine.forward(tok, pos, cache).astype(np.float64)
        if pos >= len(context) - 1:
            want.append(logits[ids[pos + 1]] - np.log(np.exp(logits - logits.max()).sum()) - logits.max())
    assert len(got) == len(answer)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_trained_answers_are_less_surprising_than_their_pieces_scrambled(tiny_lm):
    """The property fluency rests on: language the model knows beats the same pieces out of order (words shuffled
    for the multi-word answers, characters reversed for every answer)."""
    rng = random.Random(0)
    examples = load_examples("train")
    pairs = []
    for ex in examples:
        words = ex.answer.split()
        if len(words) >= 4:
            rng.shuffle(words)
            pairs.append((ex, " ".join(words)))
        pairs.append((ex, ex.answer[::-1]))
    wins = sum(tiny_lm.nll(ex.prompt, ex.answer)[0] < tiny_lm.nll(ex.prompt, noise)[0] for ex, noise in pairs)
    assert len(pairs) >= 40 and wins >= 0.95 * len(pairs)


def test_novel_positions_skip_repeated_trigrams():
    assert flu.novel_positions([5, 6, 7, 5, 6, 7, 5, 6, 7]) == [0, 1, 2, 3, 4]
    assert flu.novel_positions([1, 2, 3, 4]) == [0, 1, 2, 3]
    assert flu.novel_positions([]) == []


def test_whitespace_around_the_answer_is_not_scored(tiny_lm):
    ex = load_examples("train")[1]
    assert tiny_lm.nll(ex.prompt, "\n\n" + ex.answer + "  ") == tiny_lm.nll(ex.prompt, ex.answer)
    assert tiny_lm.nll(ex.prompt, " \n ") == (None, 0)


def test_fluency_score_ramp():
    assert flu.fluency_score(0.3) == 1.0 and flu.fluency_score(flu.FLUENT_NLL) == 1.0
    assert flu.fluency_score(flu.NOISE_NLL) == 0.0 and flu.fluency_score(11.0) == 0.0
    assert flu.fluency_score(flu.NOISE_AT) == pytest.approx(0.5)
    xs = np.linspace(0, 12, 49)
    assert all(flu.fluency_score(a) >= flu.fluency_score(b) for a, b in zip(xs, xs[1:], strict=False))


def test_recorded_surprisals_refuse_text_they_do_not_cover():
    rec = flu.RecordedFluency("t", {flu.text_key("p", "a"): (1.5, 3)})
    assert rec.nll("p", "a") == (1.5, 3)
    with pytest.raises(flu.FluencyError, match="no recorded surprisal"):
        rec.nll("p", "b")
    assert flu.text_key("ab", "c") != flu.text_key("a", "bc")


def test_reference_lookup_by_model_prefix(tiny_model):
    tiny_model("tiny-fp")  # built into the session cache, which reference_dir resolves through
    lm, why = flu.reference_for("tiny-w4", "auto", {"tiny-": "tiny-fp"})
    assert why is None and lm is not None and lm.name == "tiny-fp"
    none, why = flu.reference_for("mobilequant-w4a8-8gen3", "auto", {"tiny-": "tiny-fp"})
    assert none is None and "no reference LM for model 'mobilequant-w4a8-8gen3'" in why
    assert flu.reference_for("tiny-w4", None, {})[0] is None
    none, why = flu.reference_for("x", "tinyllama-chat-fp", {})
    assert none is None and "not available offline" in why


class _Fixed:
    """A reference LM stand-in with fixed surprisals: tests the combination, not the LM."""

    name = "fixed"

    def __init__(self, nll: dict[str, float]) -> None:
        self.table = nll

    def nll(self, prompt: str, response: str) -> tuple[float | None, int]:
        return self.table[response], 10


def test_noise_is_not_an_answer_however_relevant_and_clean():
    salad = "capital France Paris integrates accred oiraclement Glob pipo dissemin"
    right = "The capital of France is Paris."
    rows = score_items([{"prompt": "What is the capital of France?", "response": r, "reference": ["Paris"],
                         "lang": "en"} for r in (salad, right)], fluency=_Fixed({salad: 8.0, right: 0.4}))
    noise, good = rows
    assert noise["degeneration"] < 0.3 and noise["language_match"] == 1.0 and noise["reference_match"] == 1.0
    assert noise["is_answer"] is False and "not language" in noise["is_answer_reason"]
    assert noise["on_topic"] is False and noise["quality_score"] == 0.0
    assert good["is_answer"] is True and good["on_topic"] is True and good["quality_score"] > 0.9
