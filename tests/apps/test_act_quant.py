"""Activation fake-quantisation of the numpy engine (config.json odeval_activation_quant, the gguf-a8 variant)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.guest import npllama
from pipeline.guest import reference_app as ra
from pipeline.models.act_quant import ACT_QUANT_KEY, ActQuantError, parse_act_quant

A8 = {"bits": 8, "scheme": "dynamic-symmetric-per-token"}


def _f32(values: list[float]) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def _with_config(src: Path, dst: Path, **changes: object) -> Path:
    """A copy of model dir ``src`` whose config.json has ``changes`` applied (the fixture's dir is shared)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_fake_quant_hand_worked_values() -> None:
    # bits=3: qmax=3, max|x|=3 -> s=1 exactly; rint rounds half to even (0.5 -> 0, 1.5 -> 2, 2.5 -> 2)
    got = npllama.fake_quant(_f32([0.5, -3.0, 1.5, 2.5, 1.2, 0.0]), 3)
    np.testing.assert_array_equal(got, _f32([0.0, -3.0, 2.0, 2.0, 1.0, 0.0]))
    # bits=8: qmax=127, max|x|=127 -> s=1; 126.6 -> 127, 0.49 -> 0, 63.5 -> 64
    got = npllama.fake_quant(_f32([126.6, -127.0, 0.49, 63.5, -10.2]), 8)
    np.testing.assert_array_equal(got, _f32([127.0, -127.0, 0.0, 64.0, -10.0]))
    # bits=2: qmax=1, s=max|x|=2: only -2, 0, 2 survive
    got = npllama.fake_quant(_f32([0.9, -2.0, 1.1, -1.0]), 2)
    np.testing.assert_array_equal(got, _f32([0.0, -2.0, 2.0, -0.0]))
    # a scale that is not a power of two: s = 1/127; codes 127, round(-31.75) = -32, round(12.7) = 13
    x = _f32([1.0, -0.25, 0.1])
    got = npllama.fake_quant(x, 8)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _f32([127, -32, 13]) / np.float32(127), rtol=1e-6)
    assert np.abs(got - x).max() <= 0.5 / 127 + 1e-7  # at most half a step from the input


def test_fake_quant_zero_vector_is_unchanged_without_warnings() -> None:
    z = np.zeros(5, dtype=np.float32)
    with np.errstate(all="raise"):  # no 0/0
        got = npllama.fake_quant(z, 8)
    np.testing.assert_array_equal(got, z)
    assert got.dtype == np.float32


@pytest.mark.parametrize("bad, match", [
    ({"bits": 9, "scheme": A8["scheme"]}, r"odeval_activation_quant\.bits=9: must be an integer from 2 to 8"),
    ({"bits": 1, "scheme": A8["scheme"]}, r"odeval_activation_quant\.bits=1"),
    ({"bits": 8.0, "scheme": A8["scheme"]}, r"odeval_activation_quant\.bits=8\.0"),
    ({"bits": True, "scheme": A8["scheme"]}, r"odeval_activation_quant\.bits=True"),
    ({"bits": 8, "scheme": "static-asymmetric"}, r"odeval_activation_quant\.scheme='static-asymmetric' is unknown"),
    ({"bits": 8}, r"exactly the keys 'bits' and 'scheme'"),
    ({**A8, "per": "tensor"}, r"exactly the keys 'bits' and 'scheme'"),
    (8, r"config.json odeval_activation_quant=8: must be an object"),
])
def test_act_quant_config_is_validated(bad: object, match: str) -> None:
    with pytest.raises(ActQuantError, match=match):
        parse_act_quant({ACT_QUANT_KEY: bad})


def test_act_quant_config_parses() -> None:
    assert parse_act_quant({ACT_QUANT_KEY: A8}) == 8
    assert parse_act_quant({ACT_QUANT_KEY: {**A8, "bits": 4}}) == 4
    assert parse_act_quant({}) is None
    assert parse_act_quant({ACT_QUANT_KEY: None}) is None


def test_a8_logits_differ_from_float_but_stay_close(tiny_model, tmp_path: Path) -> None:
    src = tiny_model("tiny-fp")
    a8_dir = _with_config(src, tmp_path / "a8", **{ACT_QUANT_KEY: A8})
    fp, a8 = npllama.NumpyLlama.from_pretrained(src), npllama.NumpyLlama.from_pretrained(a8_dir)
    assert (fp.spec.act_bits, a8.spec.act_bits) == (None, 8)
    calls = []
    quantise = a8.act_quant
    a8.act_quant = lambda x: calls.append(x.shape) or quantise(x)
    tokens = np.random.default_rng(0).integers(3, fp.spec.vocab_size, 30).tolist()
    c_fp, c_a8 = fp.new_cache(64), a8.new_cache(64)
    diffs, cosines = [], []
    for pos, t in enumerate(tokens):
        want, got = fp.forward(t, pos, c_fp), a8.forward(t, pos, c_a8)
        diffs.append(float(np.abs(got - want).max()))
        cosines.append(float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want))))
    s = fp.spec
    # 4 quantised inputs per layer (qkv, o, gate/up, down) and none for lm_head
    assert calls[: 4 * s.num_layers] == [(s.hidden_size,), (s.num_heads * s.head_dim,), (s.hidden_size,),
                                         (s.intermediate_size,)] * s.num_layers
    assert len(calls) == 4 * s.num_layers * len(tokens)
    assert min(diffs) > 0, diffs  # every step changed
    assert min(cosines) > 0.99, cosines


def test_absent_or_null_key_is_the_float_path(tiny_model, tmp_path: Path) -> None:
    """No key (every existing model) → the identity, bit-identical logits to a null key; vs transformers: see
    test_npllama (the float path is unchanged)."""
    src = tiny_model("tiny-random")
    null_dir = _with_config(src, tmp_path / "null", **{ACT_QUANT_KEY: None})
    plain, null = npllama.NumpyLlama.from_pretrained(src), npllama.NumpyLlama.from_pretrained(null_dir)
    assert plain.act_quant is npllama._identity and null.act_quant is npllama._identity
    c1, c2 = plain.new_cache(16), null.new_cache(16)
    for pos, t in enumerate((5, 9, 11, 3)):
        np.testing.assert_array_equal(plain.forward(t, pos, c1), null.forward(t, pos, c2))


def test_torch_engine_refuses_a8_and_auto_never_falls_back(tiny_model, tmp_path: Path) -> None:
    src = tiny_model("tiny-fp")
    a8_dir = _with_config(src, tmp_path / "a8", **{ACT_QUANT_KEY: A8})
    with pytest.raises(ra.ReferenceAppError, match=r"torch engine cannot run this model \(config.json "
                                                   r"odeval_activation_quant=.*use ODEVAL_ENGINE=numpy or auto"):
        ra.load_engine(a8_dir, threads=1, engine="torch")
    eng = ra.load_engine(a8_dir, threads=1, engine="auto")
    assert eng.backend == "numpy" and eng.model.spec.act_bits == 8
    bad = _with_config(src, tmp_path / "bad", **{ACT_QUANT_KEY: {**A8, "bits": 16}})
    with pytest.raises(ra.ReferenceAppError, match=r"odeval_activation_quant\.bits=16.*torch cannot emulate"):
        ra.load_engine(bad, threads=1, engine="auto")  # numpy refuses it; torch would silently run float
    assert npllama.numpy_only_reason(src) is None
