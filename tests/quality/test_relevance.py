"""relevance: the real bundled MiniLM (verified), the on/off-topic threshold justified on labelled pairs."""

import json
import shutil
from pathlib import Path

import pytest

from pipeline.quality import relevance as rel
from tests.quality.cases import INK_ANSWER, JOKE_ANSWER, JOKE_PROMPT

LABELLED = Path(__file__).with_name("relevance_labelled.jsonl")


@pytest.fixture(scope="module")
def labelled():
    rows = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines() if line.strip()]
    cos = rel.cosine_pairs([r["prompt"] for r in rows], [r["response"] for r in rows])
    return [(c, r["on_topic"]) for c, r in zip(cos, rows, strict=True)]


def _best_gap(pairs):
    """(highest off-topic cosine, lowest on-topic cosine) — a separating gap when the first is smaller."""
    return max(c for c, y in pairs if not y), min(c for c, y in pairs if y)


def _accuracy(pairs, threshold):
    return sum((c >= threshold) == y for c, y in pairs) / len(pairs)


def test_labelled_set_is_balanced_enough(labelled):
    n_on = sum(y for _, y in labelled)
    assert len(labelled) >= 40 and 0.35 < n_on / len(labelled) < 0.65


def test_threshold_is_justified(labelled):
    hi_off, lo_on = _best_gap(labelled)
    assert hi_off < lo_on, f"labelled pairs no longer separate: off-topic max {hi_off:.3f} >= on-topic min {lo_on:.3f}"
    assert hi_off < rel.ON_TOPIC_THRESHOLD < lo_on
    assert round((hi_off + lo_on) / 2, 2) == pytest.approx(rel.ON_TOPIC_THRESHOLD)
    assert _accuracy(labelled, rel.ON_TOPIC_THRESHOLD) == 1.0


def test_threshold_generalises_across_a_split(labelled):
    """Pick the threshold on half the pairs, measure accuracy on the other half (a guard against overfitting)."""
    fit, held = labelled[0::2], labelled[1::2]
    hi_off, lo_on = _best_gap(fit)
    assert _accuracy(held, (hi_off + lo_on) / 2) >= 0.9


def test_seed_ink_answer_is_off_topic_and_a_joke_is_on_topic():
    ink, joke = rel.cosine_pairs([JOKE_PROMPT, JOKE_PROMPT], [INK_ANSWER, JOKE_ANSWER])
    assert ink < rel.ON_TOPIC_THRESHOLD <= joke
    assert rel.calibrated(ink) < 0.5 <= rel.calibrated(joke)


def test_bundled_model_passes_verification_and_is_cached():
    rel.verify_model_dir(rel.bundled_model_dir())
    assert rel.load_model() is rel.load_model()


def test_tampered_model_file_is_refused(tmp_path):
    src = rel.bundled_model_dir()
    small = {k: v for k, v in rel.PINNED_SHA256.items() if k != "model.safetensors"}
    for name in small:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / name, tmp_path / name)
    rel.verify_model_dir(tmp_path, small)
    cfg = tmp_path / "config.json"
    cfg.write_text(cfg.read_text().replace('"hidden_size": 384', '"hidden_size": 385'))
    with pytest.raises(rel.RelevanceError, match=r"config.json: sha256 .* != pinned 953f9c0d"):
        rel.verify_model_dir(tmp_path, small)
    (tmp_path / "vocab.txt").unlink()
    with pytest.raises(rel.RelevanceError, match="missing"):
        rel.verify_model_dir(tmp_path, {"vocab.txt": small["vocab.txt"]})


def test_default_model_loads_without_network(monkeypatch):
    """Load the bundled model from scratch with every non-loopback connect() refused and HF_HUB_OFFLINE unset."""
    import socket

    real_connect = socket.socket.connect

    def guarded(sock, addr):
        if isinstance(addr, tuple) and addr[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"relevance tried to reach {addr}")
        return real_connect(sock, addr)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(rel, "_CACHE", {})
    (c,) = rel.cosine_pairs([JOKE_PROMPT], [JOKE_ANSWER])
    assert c > rel.ON_TOPIC_THRESHOLD


def test_content_extraction_leaves_the_labelled_set_and_its_threshold_unchanged(labelled):
    """relevance is measured on answer_content(): for the labelled prose answers it must change nothing."""
    rows = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines() if line.strip()]
    content = [rel.answer_content(r["response"]) for r in rows]
    assert all(share == 1.0 for _, share in content)
    cos = rel.cosine_pairs([r["prompt"] for r in rows], [text for text, _ in content])
    assert _accuracy(list(zip(cos, [r["on_topic"] for r in rows], strict=True)), rel.ON_TOPIC_THRESHOLD) == 1.0


def test_answer_content_drops_markup_and_scaffolding():
    assert rel.answer_content("<!--\n\nA: 1.\n\nA: 2.\n\nA: 3.") == ("", 0.0)
    assert rel.answer_content("~~~~~~~~") == ("", 0.0)
    assert rel.answer_content("Here is a joke:\nA: 1.\nA: 2.\nA: 3.") == ("Here is a joke:", 0.25)
    text, share = rel.answer_content("Paris <|im_end|>\nParis <|im_end|>")
    assert text.split() == ["Paris"] and share == 1.0
