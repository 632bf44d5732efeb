"""The numpy MiniLM encoder against sentence-transformers on the bundled model, and the torch-free scoring path.

WHY: relevance's threshold and every stored relevance value were computed with sentence-transformers; the numpy
encoder replaces it for the bundled model only if the embeddings are the same (to float32 noise), including the
parts that are easy to get subtly wrong: truncation at 256 tokens, lower-casing/accents, packing texts in a
batch.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.quality import minilm
from pipeline.quality import relevance as rel
from tests.quality.cases import INK_ANSWER, LOOPING_ANSWER

REPO = Path(__file__).resolve().parents[2]
LABELLED = Path(__file__).with_name("relevance_labelled.jsonl")
EXTRA = [
    "",
    "   \n\t ",
    "Ünïcödé CAFÉ naïve — 日本語のテキスト、中文 🤖🚀 Ελληνικά",
    LOOPING_ANSWER * 3,  # > 256 tokens: truncated
    INK_ANSWER * 4,
    "<|im_start|>assistant\n<!--\n\nA: 1.\n\nA: 2.",
]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    rows = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines() if line.strip()]
    return list(dict.fromkeys([*(r["prompt"] for r in rows), *(r["response"] for r in rows), *EXTRA]))


@pytest.fixture(scope="module")
def encoder() -> minilm.MiniLMEncoder:
    return rel.load_model()


@pytest.fixture(scope="module")
def reference(texts):
    """sentence-transformers' embeddings and token ids of ``texts`` (the model the numpy encoder must match)."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)  # shared 2-core box
    st = SentenceTransformer(str(rel.bundled_model_dir()), device="cpu", local_files_only=True)
    vecs = st.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    ids = []
    for t in texts:
        feats = st.preprocess([t])
        ids.append(feats["input_ids"][0][feats["attention_mask"][0].bool()].tolist())
    return vecs, ids


def test_bundled_default_is_the_numpy_encoder(encoder):
    assert isinstance(encoder, minilm.MiniLMEncoder)
    assert encoder.spec.max_seq_length == 256 and encoder.spec.num_layers == 6


def test_token_ids_match_sentence_transformers_including_truncation(texts, encoder, reference):
    _, ref_ids = reference
    mine = encoder.token_ids(texts)
    assert mine == ref_ids
    assert max(len(q) for q in mine) == 256, "the long texts must exercise truncation"
    assert mine[texts.index("")] == [101, 102]


def test_embeddings_match_sentence_transformers(texts, encoder, reference):
    ref_vecs, _ = reference
    vecs = encoder.encode(texts)
    assert vecs.dtype == np.float32 and vecs.shape == ref_vecs.shape
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-6)
    per_vector = (vecs * ref_vecs).sum(1)
    assert per_vector.min() > 0.99999, texts[int(per_vector.argmin())][:80]
    assert np.abs(vecs @ vecs.T - ref_vecs @ ref_vecs.T).max() < 1e-5


def test_batch_composition_does_not_change_a_text(texts, encoder):
    """A text encoded alone equals its row when packed with others (attention stays within each text)."""
    batched = encoder.encode(texts, batch_size=7)
    for i in (0, texts.index(EXTRA[2]), len(texts) - 1):
        alone = encoder.encode([texts[i]])[0]
        assert float(alone @ batched[i]) > 0.999999


def test_embed_keeps_rows_and_dedup(encoder):
    vecs = rel.embed(["b", "a", "b"])
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    assert np.array_equal(vecs[0], vecs[2]) and not np.array_equal(vecs[0], vecs[1])


def test_erf_matches_math_erf():
    xs = np.linspace(-9, 9, 36001, dtype=np.float32)
    got = minilm.erf(xs)
    assert got.dtype == np.float32
    assert max(abs(float(g) - math.erf(float(x))) for g, x in zip(got, xs, strict=True)) < 4e-7


def test_token_batches_respect_both_limits():
    lengths = [256, 3, 40, 40, 7, 128, 9, 12, 300, 5]
    batches = minilm.token_batches(lengths, max_texts=4, max_tokens=200)
    assert [i for b in batches for i in b] == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 4 and (len(b) == 1 or sum(lengths[i] for i in b) <= 200)
    assert [256] in [[lengths[i] for i in b] for b in batches]  # longer than the budget: alone


def _copy_configs(tmp_path: Path) -> Path:
    src = rel.bundled_model_dir()
    for name in ("config.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / name, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize(("file", "old", "new", "match"), [
    ("config.json", '"hidden_act": "gelu"', '"hidden_act": "gelu_new"', r"config.json hidden_act='gelu_new'"),
    ("config.json", '"position_embedding_type": "absolute"', '"position_embedding_type": "relative_key"',
     "position_embedding_type='relative_key'"),
    ("config.json", '"model_type": "bert"', '"model_type": "roberta"', "model_type='roberta'"),
    ("1_Pooling/config.json", '"pooling_mode_cls_token": false', '"pooling_mode_cls_token": true',
     r"1_Pooling/config.json: pooling .*only pooling_mode_mean_tokens"),
    ("modules.json", "models.Normalize", "models.Dense", r"modules.json: module types .*Dense"),
    ("sentence_bert_config.json", '"max_seq_length": 256', '"max_seq_length": 4096', "max_seq_length=4096"),
])
def test_unsupported_config_is_refused_naming_file_and_key(tmp_path, file, old, new, match):
    d = _copy_configs(tmp_path)
    minilm.read_spec(d)  # the unmodified copy is accepted
    text = (d / file).read_text()
    assert old in text
    (d / file).write_text(text.replace(old, new))
    with pytest.raises(minilm.MiniLMError, match=match):
        minilm.read_spec(d)


def test_bad_weights_file_is_refused(tmp_path):
    d = _copy_configs(tmp_path)
    shutil.copy(rel.bundled_model_dir() / "tokenizer.json", d / "tokenizer.json")
    (d / minilm.WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(minilm.MiniLMError, match=r"model.safetensors: not a readable safetensors file"):
        minilm.MiniLMEncoder(d)


def test_default_scoring_imports_no_torch(tmp_path):
    """Scoring with the bundled model in a fresh interpreter loads neither torch nor sentence-transformers."""
    code = (
        "import sys\n"
        "from pipeline.quality.composite import score_items\n"
        "rows = score_items([{'prompt': 'tell me a joke.', 'response': 'Why did the chicken cross the road?'},\n"
        "                    {'prompt': 'What is the capital of France?', 'response': 'Paris.'}])\n"
        "assert all(r['relevance'] is not None for r in rows), rows\n"
        "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
