"""numpy Llama engine vs transformers: logits step by step, whole-REPL greedy output, imports, engine selection."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.guest import npllama
from pipeline.guest import reference_app as ra
from pipeline.guest.engine import SEQ_LEN
from pipeline.models import tiny

REPO = Path(__file__).resolve().parents[2]
TOK_S = re.compile(rb"\(\d+\.\d+ tok/s\)")
ATOL = 1e-4


def _tokens(vocab: int, n: int = 30, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(3, vocab, n).tolist()


def _hf_logits(model_dir: Path, tokens: list[int]) -> list[np.ndarray]:
    """transformers' logits for ``tokens`` fed one at a time through its own cache (the reference)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    cache, out = None, []
    with torch.inference_mode():
        for t in tokens:
            r = model(input_ids=torch.tensor([[t]]), cache=cache, use_cache=True)
            cache = r.cache
            out.append(r.logits[0, -1].numpy().copy())
    return out


def _run_app(model_dir: Path, stdin: bytes, engine: str, *args: str,
             py_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *py_flags, "-m", "pipeline.guest.reference_app", str(model_dir), *args],
                          input=stdin, capture_output=True, cwd=REPO, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "ODEVAL_ENGINE": engine})


@pytest.mark.parametrize("name", ["tiny-fp", "tiny-random"])
def test_engine_logits_match_transformers_step_by_step(tiny_model, name: str) -> None:
    d = tiny_model(name)
    np_eng = ra.load_engine(d, threads=1, engine="numpy")
    pt_eng = ra.load_engine(d, threads=1, engine="torch")
    assert (np_eng.backend, pt_eng.backend) == ("numpy", "torch")
    assert np_eng.stop_ids == pt_eng.stop_ids
    tokens = np_eng.prompt_format("mobilequant").ids("What is the capital of France?")
    tokens = (tokens + _tokens(len(np_eng.codec)))[:30]
    assert len(tokens) == 30
    for step, t in enumerate(tokens):
        got, want = np_eng.forward(t), pt_eng.forward(t).numpy()
        assert got.shape == want.shape == (len(np_eng.codec),)
        diff = float(np.abs(got - want).max())
        assert diff <= ATOL, f"step {step}: max |numpy - torch| = {diff}"
        assert int(got.argmax()) == int(want.argmax())
    assert np_eng.pos == pt_eng.pos == 29
    assert np_eng.cache.get_seq_length() == pt_eng.cache.get_seq_length() == 30


def test_gqa_tied_biased_head_dim_config_matches_transformers(tmp_path: Path) -> None:
    """Paths the tiny builds do not exercise: GQA, tied lm_head, biases, head_dim != hidden/heads, rope_theta."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=12, max_position_embeddings=64, rms_norm_eps=1e-6,
                      tie_word_embeddings=True, attention_bias=True, mlp_bias=True, rope_theta=500000.0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)  # non-zero biases and norms, so a dropped term shows
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["tie_word_embeddings"] is True
    npm = npllama.NumpyLlama.from_pretrained(tmp_path)
    assert npm.lm_head is npm.embed and npm.spec.rope_theta == 500000.0 and npm.spec.num_kv_heads == 2
    tokens = _tokens(97, seed=1)
    want = _hf_logits(tmp_path, tokens)
    cache = npm.new_cache(64)
    for pos, (t, w) in enumerate(zip(tokens, want, strict=True)):
        diff = float(np.abs(npm.forward(t, pos, cache) - w).max())
        assert diff <= ATOL, f"pos {pos}: max |numpy - transformers| = {diff}"


@pytest.mark.parametrize("name, steps", [("tiny-fp", "2048"), ("tiny-random", "48")])
def test_repl_greedy_output_identical_numpy_vs_torch(tiny_model, name: str, steps: str) -> None:
    d = tiny_model(name)
    prompts = [e.prompt for e in tiny.load_examples("qa-train")[:5]]
    stdin = "".join(f"{p}\n" for p in prompts).encode() + b"!exit\n"
    outs = {}
    for engine in ("numpy", "torch"):
        r = _run_app(d, stdin, engine, "--max-steps", steps)
        assert r.returncode == 0, r.stderr
        assert len(TOK_S.findall(r.stdout)) == 5, r.stdout
        outs[engine] = TOK_S.sub(b"(N tok/s)", r.stdout)
    assert outs["numpy"] == outs["torch"]
    if name == "tiny-fp":
        assert outs["numpy"].count(b"</s>(N tok/s)") == 5  # trained: every answer ends with EOS


def test_numpy_engine_process_imports_no_torch_or_transformers(tiny_model) -> None:
    d = tiny_model("tiny-fp")
    r = _run_app(d, b"What is 2 plus 2?\n!exit\n", "numpy", py_flags=("-X", "importtime"))
    assert r.returncode == 0 and TOK_S.search(r.stdout), r.stderr[-2000:]
    modules = {line.rsplit(b"|", 1)[1].strip().decode() for line in r.stderr.splitlines()
               if line.startswith(b"import time:") and line.count(b"|") == 2}
    assert "numpy" in modules and "safetensors" in modules  # the probe sees imports at all
    heavy = sorted(m for m in modules if m.split(".")[0] in ("torch", "transformers"))
    assert heavy == []
    auto = _run_app(d, b"What is 2 plus 2?\n!exit\n", "auto", py_flags=("-X", "importtime"))
    assert auto.returncode == 0 and b"| torch" not in auto.stderr and b"| transformers" not in auto.stderr
    assert TOK_S.sub(b"", auto.stdout) == TOK_S.sub(b"", r.stdout)


def test_position_wrap_clears_the_numpy_cache_like_torch(tiny_model) -> None:
    eng = ra.load_engine(tiny_model("tiny-fp"), threads=1, engine="numpy")
    first = eng.forward(5)
    eng.forward(7)
    eng.pos = SEQ_LEN - 2  # the next step wraps to position 0
    again = eng.forward(5)
    assert eng.pos == 0 and eng.cache.get_seq_length() == 1
    np.testing.assert_array_equal(again, first)
    eng.reset()
    assert eng.cache is None and eng.pos == -1
    np.testing.assert_array_equal(eng.forward(5), first)


def test_unsupported_configs_are_refused_and_auto_falls_back_to_torch(tiny_model, tmp_path: Path) -> None:
    src = tiny_model("tiny-random")
    d = tmp_path / "scaled"
    shutil.copytree(src, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(npllama.NpLlamaError, match="rope"):
        npllama.parse_spec(cfg)
    assert "rope" in (npllama.numpy_ineligible_reason(d) or "")
    with pytest.raises(ra.ReferenceAppError, match="ODEVAL_ENGINE=numpy cannot run"):
        ra.load_engine(d, threads=1, engine="numpy")
    assert ra.load_engine(d, threads=1, engine="auto").backend == "torch"
    with pytest.raises(ra.ReferenceAppError, match="ODEVAL_ENGINE='jax' is unknown"):
        ra.load_engine(src, threads=1, engine="jax")


def test_rope_theta_resolution_and_refusals() -> None:
    assert npllama.rope_theta({}) == 10000.0
    assert npllama.rope_theta({"rope_theta": 5e5, "rope_scaling": None}) == 5e5  # transformers 4.x layout
    assert npllama.rope_theta({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}) == 1e6
    for bad in ({"rope_scaling": {"type": "linear", "factor": 2.0}},
                {"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4}},
                {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}}):
        with pytest.raises(npllama.NpLlamaError, match="ODEVAL_ENGINE=torch"):
            npllama.rope_theta(bad)
    with pytest.raises(npllama.NpLlamaError, match="model_type"):
        npllama.parse_spec({"model_type": "gemma"})


def test_param_count_from_header_and_size_gate(tiny_model) -> None:
    d = tiny_model("tiny-fp")
    params = json.loads((d / "model.json").read_text())["param_count"]  # torch's count at build time
    assert npllama.safetensors_param_count(d / "model.safetensors") == params
    assert npllama.numpy_ineligible_reason(d) is None
    assert "parameters" in (npllama.numpy_ineligible_reason(d, max_params=params - 1) or "")
