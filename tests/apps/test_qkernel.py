"""The native engine (pipeline/guest/qkernel.{c,py}): float-rounding agreement with the numpy engine on every stored
format, batched prefill = token-by-token bit for bit, thread count and SIMD path change no bit, the app's prefill
choice, the fallback without a compiler, and the build cache."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import native_kernel
from pipeline.guest import engine as engine_mod
from pipeline.guest import native_build, npllama, qkernel
from pipeline.guest import reference_app as ra

REPO = Path(__file__).resolve().parents[2]
TOKENS = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 11, 2, 198, 1, 4093, 198, 23, 30, 47, 13]


def _native(d: Path, threads: int = 1) -> qkernel.NativeLlama:
    model, why = qkernel.load(d, threads)
    assert model is not None, why
    return model


def _steps(model, tokens: list[int], start: int = 0):
    cache = model.new_cache(64)
    return [model.forward(t, start + p, cache) for p, t in enumerate(tokens)], cache


@pytest.mark.parametrize("variant", ["gguf", "w8", "w4", "fp16", "gguf-a8"])
def test_native_matches_the_numpy_engine_to_float_rounding(native, smollm2, variant: str) -> None:
    """Same weights (each block expanded to the numpy engine's float32 values), float32 activations: the logits
    differ only by summation order — a few 1e-5 on logits of magnitude ~30 — and every argmax is the same.
    A8 (gguf-a8) only at the first position: later, one 8-bit rounding flip moves logits by ~1.5 (why auto keeps
    A8 on the numpy engine, tested below)."""
    d = smollm2(variant)
    ref = npllama.NumpyLlama.from_pretrained(d)
    tokens = TOKENS[:1] if variant == "gguf-a8" else TOKENS
    got, _ = _steps(_native(d), tokens)
    want, _ = _steps(ref, tokens)
    for g, w in zip(got, want, strict=True):
        assert int(g.argmax()) == int(w.argmax())
        np.testing.assert_allclose(g, w, rtol=0, atol=2e-4 * float(np.abs(w).max()))
    assert not all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))  # a different code path indeed


def test_auto_keeps_a8_on_the_numpy_engine(native, smollm2) -> None:
    eng = ra.load_engine(smollm2("gguf-a8"), threads=1, engine="auto")
    assert eng.backend == "numpy" and eng.native_reason == engine_mod.A8_ON_NUMPY and eng.model.spec.act_bits == 8
    eng = ra.load_engine(smollm2("gguf-a8"), threads=1, engine="native")
    assert eng.backend == "native" and eng.model.spec.act_bits == 8


@pytest.mark.parametrize(("variant", "fmt"), [("gguf", qkernel.F_Q4_1), ("w8", qkernel.F_I8), ("w4", qkernel.F_I4),
                                              ("fp16", qkernel.F_F16)])
def test_each_format_multiplies_like_its_dequantised_float32_weights(native, smollm2, variant: str, fmt: int) -> None:
    """One stored matrix (and the Q8_0/codes embedding as lm_head) against the numpy engine's float32 weights:
    float-rounding agreement for 1 and 5 tokens, and the 5-token rows equal the 1-token ones bit for bit."""
    d = smollm2(variant)
    model, ref = _native(d), npllama.NumpyLlama.from_pretrained(d)
    x = np.random.default_rng(1).standard_normal((5, ref.spec.hidden_size)).astype(np.float32)
    inter = ref.spec.intermediate_size
    for mat, dense in ((model.model.layers[3].wg, ref.layers[3].wgu[:inter]), (model.model.lm_head, ref.lm_head)):
        if mat is model.model.layers[3].wg:
            assert mat.fmt == fmt
        got = model.matmul(mat, x)
        np.testing.assert_allclose(got, x @ dense.T, rtol=0, atol=1e-5 * float(np.abs(x @ dense.T).max()))
        assert np.array_equal(got[2:3], model.matmul(mat, x[2:3]))


def test_native_runs_the_tiny_float32_models_like_torch(native, tiny_model) -> None:
    """float32 safetensors, head_dim 16: the native engine against transformers' own logits (the numpy engine's
    reference in tests/apps/test_npllama.py, same tolerance)."""
    from tests.apps.test_npllama import ATOL, _hf_logits

    d = tiny_model("tiny-fp")
    tokens = [5, 17, 42, 9, 300, 77, 3, 8]
    got, _ = _steps(_native(d), tokens)
    for g, w in zip(got, _hf_logits(d, tokens), strict=True):
        np.testing.assert_allclose(g, w, atol=ATOL)


@pytest.mark.parametrize("variant", ["gguf", "w4", "gguf-a8"])
def test_batched_prefill_equals_token_by_token_bit_for_bit(native, smollm2, variant: str) -> None:
    """Logits of the last token and every K/V value, for a batch starting mid-context, with 1 and 2 threads."""
    d = smollm2(variant)
    one, two = _native(d, threads=1), _native(d, threads=2)
    step_logits, step_cache = _steps(one, TOKENS)
    for model in (one, two):
        cache = model.new_cache(64)
        model.forward_batch(TOKENS[:5], 0, cache)  # a context first: the batch attends to it
        last = model.forward_batch(TOKENS[5:], 5, cache)
        assert np.array_equal(last, step_logits[-1])
        assert np.array_equal(cache.k, step_cache.k) and np.array_equal(cache.v, step_cache.v)
        assert cache.length == step_cache.length == len(TOKENS)


def test_portable_path_equals_the_simd_path(native, smollm2) -> None:
    """The portable C (fmaf per lane) computes what the AVX-512 intrinsics compute: a machine without AVX-512 gets
    the same numbers, only slower."""
    model = _native(smollm2("w4"))
    if model.simd != "avx512":
        pytest.skip("this CPU has no AVX-512: the portable path is the only one")
    fast, _ = _steps(model, TOKENS[:6])
    model.lib.qk_set_generic(1)
    try:
        slow, _ = _steps(model, TOKENS[:6])
    finally:
        model.lib.qk_set_generic(0)
    assert all(np.array_equal(a, b) for a, b in zip(fast, slow, strict=True))


def _gen(eng: ra.Engine, ids: list[int], batch: bool, **kw) -> tuple[ra.GenResult, bytes]:
    out = io.BytesIO()
    r = ra.generate(eng, ids, out, batch=batch, **kw)
    return r, out.getvalue()


def test_generate_prefills_in_one_pass_with_the_same_answer(native, smollm2) -> None:
    eng = ra.load_engine(smollm2("gguf"), threads=1, engine="auto")
    assert eng.backend == "native" and eng.native_reason == ""
    ids = eng.prompt_format("mobilequant").ids(b"tell me a joke.")
    results = []
    for batch in (True, False):
        eng.reset()
        r, text = _gen(eng, ids, batch, max_steps=len(ids) + 12, past_end_token=0)
        results.append((r.output_ids, text.rsplit(b"(", 1)[0], eng.pos, eng.cache.k.copy()))
        assert r.prefill == ("batched" if batch else "token-by-token: forced")
        assert r.steps == len(ids) + 12 and text.endswith(b" tok/s)\n")
    assert results[0][:3] == results[1][:3] and np.array_equal(results[0][3], results[1][3])


def test_prefill_stays_token_by_token_where_simple_app_semantics_need_it(native, smollm2) -> None:
    eng = ra.load_engine(smollm2("gguf"), threads=1, engine="native")
    ids = eng.prompt_format("mobilequant").ids(b"What is the capital of France?")
    eng.reset()
    eng.pos = engine_mod.SEQ_LEN - 10  # the ring wraps inside this prompt: simple_app's positions, cache cleared
    r, _ = _gen(eng, ids, True, max_steps=len(ids) + 2)
    assert r.prefill.startswith("token-by-token: the KV ring wraps inside the prompt")
    eng.reset()
    r, _ = _gen(eng, ids, True, max_steps=5)  # the app stops inside the prompt
    assert r.prefill.startswith("token-by-token: max_steps ends inside the prompt") and r.output_ids == []
    numpy_eng = ra.load_engine(smollm2("gguf"), threads=1, engine="numpy")
    r, _ = _gen(numpy_eng, ids, True, max_steps=len(ids) + 1)
    assert r.prefill == "token-by-token: the numpy engine feeds one token per forward"


def test_the_cli_reports_the_native_engine_and_batched_prefill(native, smollm2) -> None:
    proc = subprocess.run([sys.executable, "-m", "pipeline.guest.reference_app", str(smollm2("gguf")), "--template",
                           "hf-chat"], input=b"What is the capital of France?\n", capture_output=True, cwd=REPO,
                          timeout=240, env={**os.environ, "ODEVAL_APP_DEBUG": "1", "ODEVAL_THREADS": "2"})
    err = proc.stderr.decode()
    assert proc.returncode == 0 and ">>> The capital of France is Paris.</s>(" in proc.stdout.decode(), err
    assert "(native engine, 2 thread(s))" in err and "prefill batched" in err, err


def test_without_a_compiler_the_numpy_engine_runs_and_says_why(smollm2, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ODEVAL_CACHE", str(tmp_path))  # nothing built here
    monkeypatch.setenv("PATH", str(tmp_path))  # no cc/gcc
    monkeypatch.delenv("CC", raising=False)
    assert native_kernel.find() == (None, native_kernel.NO_COMPILER)
    with pytest.raises(native_build.BuildError, match="no C compiler"):
        native_build.ensure_built(progress=False)
    assert native_build.status()["status"] == "unavailable"
    eng = ra.load_engine(smollm2("gguf"), threads=1, engine="auto")
    assert eng.backend == "numpy" and "no C compiler" in eng.native_reason
    with pytest.raises(ra.ReferenceAppError, match="ODEVAL_ENGINE=native cannot run this model .*no C compiler"):
        ra.load_engine(smollm2("gguf"), threads=1, engine="native")
    monkeypatch.setenv(native_kernel.ENV_LIB, "unavailable: the daemon found no kernel")
    assert native_kernel.library_for_app() == (None, "the daemon found no kernel")


def test_the_build_is_keyed_by_its_inputs(native, tmp_path: Path) -> None:
    cc = native_kernel.compiler()
    assert cc is not None
    key = native_kernel.build_key(cc)
    assert native_kernel.find() == (native, "")
    assert native.parent == native_kernel.key_dir(key) and (native.parent / "build.json").is_file()
    assert native.parent.parent == native_kernel.cache_dir() == Path(os.environ["ODEVAL_CACHE"]) / "native"
    src = tmp_path / "qkernel.c"
    src.write_text(native_kernel.SOURCE.read_text() + "\n/* changed */\n")
    assert native_kernel.key_dir(native_kernel.build_key(cc, src)) != native.parent
    assert native_kernel.find(src)[0] is None  # a changed source is not built yet: the app would not load a stale one
    st = native_build.status(build=False)
    assert st["status"] == "built" and st["dir"] == native.parent.name and st["source_sha256"] == key["source_sha256"]


def test_odeval_threads_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ODEVAL_THREADS", "0")
    with pytest.raises(ra.ReferenceAppError, match="ODEVAL_THREADS='0'"):
        engine_mod._env_threads()
    monkeypatch.setenv("ODEVAL_THREADS", "3")
    assert engine_mod._env_threads() == 3
    monkeypatch.delenv("ODEVAL_THREADS")
    assert engine_mod._env_threads() == qkernel.default_threads() >= 1


def _diagnose_prompts() -> list[bytes]:
    rows = (REPO / "prompts" / "diagnose.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(r)["prompt"].encode() for r in rows if r.strip()]


def _transcript(eng: ra.Engine, lines: list[bytes], template: str, past_end: str | None, max_steps: int) -> bytes:
    """What the app prints for ``lines`` typed into one process (the REPL: shared KV under mobilequant, a fresh
    context per prompt under hf-chat), its measured tok/s masked.

    One BLAS thread, as the app pins it at start (numpy is imported long before in a test session): the numpy
    engine's matvecs on two BLAS threads crawl when the host is busy (2 tok/s instead of 15 on a loaded 2-core
    host). threadpoolctl comes with scikit-learn (an MLflow dependency); without it the test is only slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    eng.reset()
    out = io.BytesIO()
    stdin = io.BytesIO(b"".join(line + b"\n" for line in lines))
    with threadpool_limits(1) if threadpool_limits else contextlib.nullcontext():
        assert ra.repl(eng, "models", template, max_steps, stdin, out, ra.Faults(), past_end) == 0
    return re.sub(rb"\([0-9.]+ tok/s\)", b"(N tok/s)", out.getvalue())


# the diagnosis sweep's two ends (conf/diag/as-is.yaml, conf/diag/fixed.yaml)
DIAG_ENDS = [("mobilequant", "faithful"), ("hf-chat", None)]


def test_greedy_answers_on_smollm2_q4_equal_the_numpy_engines(native, smollm2) -> None:
    """smollm2-q4 (the shipped Q4_1 GGUF) through the REPL as the diagnosis sweep's baseline runs it (mobilequant,
    shared KV, the faithful read past the prompt): the native engine with its batched prefill prints what the
    numpy engine prints, byte for byte. The first 2 diagnosis prompts here; all 16, both ends, in the slow test."""
    d = smollm2("gguf")
    native_eng = ra.load_engine(d, threads=1, engine="auto")
    numpy_eng = ra.load_engine(d, threads=1, engine="numpy")
    assert native_eng.backend == "native" and numpy_eng.backend == "numpy"
    lines = _diagnose_prompts()[:2]
    want = _transcript(numpy_eng, lines, "mobilequant", "faithful", 40)
    assert _transcript(native_eng, lines, "mobilequant", "faithful", 40) == want and want.count(b"(N tok/s)") == 2


@pytest.mark.slow
@pytest.mark.parametrize(("template", "past_end"), DIAG_ENDS)
def test_all_diagnosis_answers_on_smollm2_q4_equal_the_numpy_engines(native, smollm2, template: str,
                                                                     past_end: str | None) -> None:
    """All 16 diagnosis prompts in one process, up to 96 steps each (prompt + answer, more than the sweep's 40
    new tokens): the transcripts are identical."""
    d = smollm2("gguf")
    lines = _diagnose_prompts()
    want = _transcript(ra.load_engine(d, threads=1, engine="numpy"), lines, template, past_end, 96)
    got = _transcript(ra.load_engine(d, threads=2, engine="native"), lines, template, past_end, 96)
    assert got == want and want.count(b"(N tok/s)") == len(lines)
