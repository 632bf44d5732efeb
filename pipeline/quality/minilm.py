"""A numpy sentence encoder for the bundled all-MiniLM-L6-v2 (the relevance metric's default embedding backend).

WHY: every process that scores (each score stage run, each sweep job, many test subprocesses) paid ``import torch``
~1.0 s + ``import sentence_transformers`` ~3.2 s + model load ~0.24 s to embed a handful of short texts with a
22M-parameter BERT. This module needs only numpy, safetensors and tokenizers (all already installed) and loads in
well under a second, so the score stage and the forked sweep workers no longer serialise on that start-up.

What it reproduces, exactly: the ``SentenceTransformer`` pipeline of the model dir's ``modules.json`` —
``Transformer`` (a ``transformers`` ``BertModel``, float32, inference) → ``Pooling`` (mean over the attention mask)
→ ``Normalize`` (L2, ``F.normalize`` eps 1e-12). Tokenisation is ``tokenizer.json`` through the ``tokenizers``
library with ``[CLS] … [SEP]`` (its post-processor), truncated to ``sentence_bert_config.json`` max_seq_length
(256, special tokens included, like sentence-transformers' ``truncation="longest_first"``); ``do_lower_case``
there lower-cases the text first. Texts are never padded: each attends over its own tokens only, which is what the
padded, masked batch of ``transformers`` computes (masked keys get weight exactly 0 there).

BERT numerics (``modeling_bert.py``): embeddings = word + absolute position (0..L-1) + token_type 0, LayerNorm
(``layer_norm_eps``); per layer: self-attention with scores scaled by ``head_dim ** -0.5``, output dense +
residual + LayerNorm, intermediate dense + exact (erf) GELU, output dense + residual + LayerNorm. numpy has no erf,
so :func:`erf` evaluates the Numerical Recipes Chebyshev-fitted erfc in float32 (|error| < 4e-7, a few float32
ulp), far below what separates torch's own kernels: embeddings agree with sentence-transformers to ~3e-7
(tests/quality/test_minilm.py). Anything in the config that this forward does not implement raises
:class:`MiniLMError` naming the file and key (use sentence-transformers).

Throughput (2 cores, benchmarks/score_speed.py): as fast as sentence-transformers for a score stage's few dozen
answers (50 pairs 0.46 s vs 0.54 s), slower on big batches (1 000 responses 7.8 s vs 5.4 s with 2 torch threads:
torch's fused GELU/LayerNorm kernels win there) — the ~4.4 s start-up saved per process dominates either way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

WEIGHTS_FILE = "model.safetensors"
_PIPELINE = ("Transformer", "Pooling", "Normalize")  # modules.json, in this order
BATCH_TOKENS = 4096  # tokens per forward: bounds the (tokens, intermediate_size) activations (~25 MB)


class MiniLMError(Exception):
    """The model dir is not a BERT sentence encoder this module reproduces (message names the file and key)."""


@dataclass(frozen=True)
class BertSpec:
    """The fields of config.json / sentence_bert_config.json the forward pass depends on (validated)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    layer_norm_eps: float
    max_position_embeddings: int
    type_vocab_size: int
    max_seq_length: int
    do_lower_case: bool
    pooling_dir: str


def read_json(path: Path) -> dict[str, Any] | list[Any]:
    """A JSON file's content (one-line error if missing or not JSON)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MiniLMError(f"{path}: cannot read ({exc})") from exc


def _object(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise MiniLMError(f"{path}: not a JSON object")
    return data


def check_modules(model_dir: Path) -> str:
    """Validate modules.json is Transformer → Pooling → Normalize (Transformer at the root); the Pooling dir."""
    path = model_dir / "modules.json"
    mods = read_json(path)
    kinds = tuple(str(m.get("type", "")).rsplit(".", 1)[-1] for m in mods) if isinstance(mods, list) else ()
    if kinds != _PIPELINE or not all(isinstance(m, dict) for m in mods):
        raise MiniLMError(f"{path}: module types {kinds!r} are not supported by the numpy encoder "
                          f"(only {' -> '.join(_PIPELINE)}); use embedding_model=<dir> (sentence-transformers)")
    if mods[0].get("path", "") != "":
        raise MiniLMError(f"{path}: Transformer path={mods[0]['path']!r} is not supported (only '')")
    return str(mods[1].get("path", ""))


def check_pooling(model_dir: Path, pooling_dir: str, hidden: int) -> None:
    """Only mean pooling over the token embeddings (no prompt exclusion) is implemented."""
    path = model_dir / pooling_dir / "config.json"
    cfg = _object(path)
    modes = {k: v for k, v in cfg.items() if k.startswith("pooling_mode_")}
    if cfg.get("pooling_mode") not in (None, "mean") or not modes.pop("pooling_mode_mean_tokens", False) \
            or any(modes.values()):
        raise MiniLMError(f"{path}: pooling {cfg!r} is not supported by the numpy encoder (only "
                          "pooling_mode_mean_tokens); use embedding_model=<dir> (sentence-transformers)")
    if cfg.get("include_prompt", True) is not True:
        raise MiniLMError(f"{path}: include_prompt={cfg['include_prompt']!r} is not supported (only true)")
    if int(cfg.get("word_embedding_dimension", hidden)) != hidden:
        raise MiniLMError(f"{path}: word_embedding_dimension={cfg['word_embedding_dimension']!r} != config.json "
                          f"hidden_size={hidden}")


def _require(cfg: dict[str, Any], key: str, want: Any, default: Any) -> None:
    got = cfg.get(key, default)
    if got != want:
        raise MiniLMError(f"config.json {key}={got!r} is not supported by the numpy encoder (only {want!r}); "
                          "use embedding_model=<dir> (sentence-transformers)")


def read_spec(model_dir: Path) -> BertSpec:
    """Validate the model dir's config files for this forward (raises :class:`MiniLMError` naming the key)."""
    model_dir = Path(model_dir)
    cfg = _object(model_dir / "config.json")
    _require(cfg, "model_type", "bert", None)
    _require(cfg, "hidden_act", "gelu", None)
    _require(cfg, "position_embedding_type", "absolute", "absolute")
    _require(cfg, "is_decoder", False, False)
    _require(cfg, "add_cross_attention", False, False)
    sb_path = model_dir / "sentence_bert_config.json"
    sb = _object(sb_path) if sb_path.is_file() else {}
    try:
        spec = BertSpec(
            vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]), num_layers=int(cfg["num_hidden_layers"]),
            num_heads=int(cfg["num_attention_heads"]), layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
            max_position_embeddings=int(cfg["max_position_embeddings"]),
            type_vocab_size=int(cfg.get("type_vocab_size", 2)),
            max_seq_length=int(sb.get("max_seq_length") or cfg["max_position_embeddings"]),
            do_lower_case=bool(sb.get("do_lower_case", False)), pooling_dir="")
    except (KeyError, TypeError, ValueError) as exc:
        raise MiniLMError(f"{model_dir / 'config.json'}: missing or invalid BERT field ({exc!r})") from exc
    if spec.hidden_size % spec.num_heads:
        raise MiniLMError(f"config.json hidden_size={spec.hidden_size} is not a multiple of "
                          f"num_attention_heads={spec.num_heads}")
    if not 2 <= spec.max_seq_length <= spec.max_position_embeddings:
        raise MiniLMError(f"{sb_path}: max_seq_length={spec.max_seq_length} must be 2..max_position_embeddings="
                          f"{spec.max_position_embeddings}")
    pooling_dir = check_modules(model_dir)
    check_pooling(model_dir, pooling_dir, spec.hidden_size)
    return BertSpec(**{**spec.__dict__, "pooling_dir": pooling_dir})


_ERFC_COEFFS = tuple(np.float32(c) for c in (  # Numerical Recipes erfcc, highest power first
    0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418, 0.37409196,
    1.00002368, -1.26551223))


def erf(x: np.ndarray) -> np.ndarray:
    """Error function in float32, |error| < 4e-7 (Numerical Recipes ``erfcc`` Chebyshev fit, ~1e-7 in exact
    arithmetic, plus float32 rounding). In place on temporaries: this is the hottest op of the forward."""
    z = np.abs(x, dtype=np.float32)
    t = z * np.float32(0.5)
    t += np.float32(1.0)
    np.reciprocal(t, out=t)
    poly = t * _ERFC_COEFFS[0]
    for c in _ERFC_COEFFS[1:-1]:
        poly += c
        poly *= t
    poly += _ERFC_COEFFS[-1]
    np.square(z, out=z)
    poly -= z
    np.exp(poly, out=poly)
    poly *= t  # erfc(|x|)
    np.subtract(np.float32(1.0), poly, out=poly)
    return np.copysign(poly, x, out=poly)


def gelu(x: np.ndarray, block: int = 1 << 16) -> np.ndarray:
    """BERT's exact GELU, ``x * Φ(x)`` = ``0.5 x (1 + erf(x / √2))``, over rows of a 2-D array.

    Computed ``block`` elements at a time: the ~25 element-wise passes of :func:`erf` then stay in the CPU cache
    (measured 2.3x faster than whole-array passes on 2161 tokens x 1536)."""
    out = np.empty_like(x)
    rows = max(1, block // max(1, x.shape[-1]))
    for i in range(0, x.shape[0], rows):
        part = x[i:i + rows]
        g = erf(part * np.float32(2 ** -0.5))
        g += np.float32(1.0)
        g *= part
        g *= np.float32(0.5)
        out[i:i + rows] = g
    return out


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis of a 2-D array (biased variance, like torch), with few full-size passes."""
    xc = x - x.mean(-1, keepdims=True)
    var = np.einsum("ij,ij->i", xc, xc) / np.float32(x.shape[-1])
    xc *= (np.float32(1.0) / np.sqrt(var + np.float32(eps)))[:, None]
    xc *= w
    xc += b
    return xc


def _expected_shapes(s: BertSpec) -> dict[str, tuple[int, ...]]:
    h, i = s.hidden_size, s.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (s.vocab_size, h),
        "embeddings.position_embeddings.weight": (s.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (s.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,)}
    for n in range(s.num_layers):
        p = f"encoder.layer.{n}."
        for name, out, inp in (("attention.self.query", h, h), ("attention.self.key", h, h),
                               ("attention.self.value", h, h), ("attention.output.dense", h, h),
                               ("intermediate.dense", i, h), ("output.dense", h, i)):
            shapes[f"{p}{name}.weight"], shapes[f"{p}{name}.bias"] = (out, inp), (out,)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[f"{p}{ln}.weight"], shapes[f"{p}{ln}.bias"] = (h,), (h,)
    return shapes


def load_weights(model_dir: Path, spec: BertSpec) -> dict[str, np.ndarray]:
    """The BertModel tensors as float32 (linear weights transposed to (in, out) for ``x @ W``; query, key and
    value fused into ``attention.self.qkv``)."""
    from safetensors.numpy import load_file

    path = Path(model_dir) / WEIGHTS_FILE
    try:
        raw = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types; one clear line
        raise MiniLMError(f"{path}: not a readable safetensors file ({exc})") from exc
    out: dict[str, np.ndarray] = {}
    for key, shape in _expected_shapes(spec).items():
        if key not in raw:
            raise MiniLMError(f"{path}: tensor {key!r} missing (expected a BertModel without prefix)")
        if tuple(raw[key].shape) != shape:
            raise MiniLMError(f"{path}: tensor {key!r} has shape {tuple(raw[key].shape)}, config.json implies {shape}")
        t = raw[key].astype(np.float32)
        out[key] = np.ascontiguousarray(t.T) if t.ndim == 2 and ".layer." in key else t
    for n in range(spec.num_layers):  # one (h, 3h) matmul for query/key/value
        p = f"encoder.layer.{n}.attention.self."
        for part in ("weight", "bias"):
            out[f"{p}qkv.{part}"] = np.concatenate([out.pop(f"{p}{m}.{part}") for m in ("query", "key", "value")],
                                                   axis=-1)
    return out


class MiniLMEncoder:
    """``encode(texts)`` → L2-normalised float32 sentence embeddings, as SentenceTransformer.encode would give."""

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir)
        self.spec = read_spec(self.model_dir)
        tok_path = self.model_dir / "tokenizer.json"
        try:
            self.tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises its own exception type
            raise MiniLMError(f"{tok_path}: cannot load tokenizer ({exc})") from exc
        # tokenizer.json carries its own truncation (128) and fixed padding; the transformers call that
        # sentence-transformers makes replaces both, and so does this.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.spec.max_seq_length)
        self.w = load_weights(self.model_dir, self.spec)
        self.dim = self.spec.hidden_size

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """[CLS] … [SEP] ids per text, truncated to max_seq_length."""
        if self.spec.do_lower_case:
            texts = [t.lower() for t in texts]
        return [enc.ids for enc in self.tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """One row per text, in chunks of at most ``batch_size`` texts and :data:`BATCH_TOKENS` tokens."""
        ids = self.token_ids(texts)
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        for batch in token_batches([len(q) for q in ids], max(1, batch_size), BATCH_TOKENS):
            out[batch] = self.forward([ids[i] for i in batch])
        return out

    def forward(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        """Pooled, normalised embeddings of a batch of token id lists, packed without padding: token-wise work
        (projections, GELU, LayerNorm) runs on all tokens at once, attention text by text (measured 5x faster
        than padded batched attention, and no mask to get wrong)."""
        w, s = self.w, self.spec
        lens = [len(q) for q in seqs]
        x = (w["embeddings.word_embeddings.weight"][np.concatenate(seqs)]
             + w["embeddings.position_embeddings.weight"][np.concatenate([np.arange(m) for m in lens])]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], s.layer_norm_eps)
        for layer in range(s.num_layers):
            x = self._layer(x, lens, f"encoder.layer.{layer}.")
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        pooled = np.add.reduceat(x, starts, axis=0) / np.array(lens, dtype=np.float32)[:, None]
        norm = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norm, np.float32(1e-12))).astype(np.float32)

    def _layer(self, x: np.ndarray, lens: Sequence[int], p: str) -> np.ndarray:
        w, eps = self.w, self.spec.layer_norm_eps

        def proj(name: str, v: np.ndarray) -> np.ndarray:
            return v @ w[f"{p}{name}.weight"] + w[f"{p}{name}.bias"]

        ctx = self._attention(proj("attention.self.qkv", x), lens)
        x = layer_norm(proj("attention.output.dense", ctx) + x, w[f"{p}attention.output.LayerNorm.weight"],
                       w[f"{p}attention.output.LayerNorm.bias"], eps)
        hidden = gelu(proj("intermediate.dense", x))
        return layer_norm(proj("output.dense", hidden) + x, w[f"{p}output.LayerNorm.weight"],
                          w[f"{p}output.LayerNorm.bias"], eps)

    def _attention(self, qkv: np.ndarray, lens: Sequence[int]) -> np.ndarray:
        """Multi-head self-attention of each text over its own tokens; ``qkv`` is packed (tokens, 3 * hidden)."""
        heads, h = self.spec.num_heads, self.spec.hidden_size
        d = h // heads
        out = np.empty((qkv.shape[0], h), dtype=np.float32)
        start = 0
        for m in lens:
            q, k, v = qkv[start:start + m].reshape(m, 3, heads, d).transpose(1, 2, 0, 3)  # 3 x (heads, m, d)
            scores = q @ k.transpose(0, 2, 1)
            scores *= np.float32(d ** -0.5)
            scores -= scores.max(-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(-1, keepdims=True)
            out[start:start + m] = (scores @ v).transpose(1, 0, 2).reshape(m, h)
            start += m
        return out


def token_batches(lengths: Sequence[int], max_texts: int, max_tokens: int) -> list[list[int]]:
    """Consecutive indices grouped into batches of at most ``max_texts`` texts and ``max_tokens`` tokens (a text
    longer than ``max_tokens`` gets a batch of its own)."""
    batches: list[list[int]] = []
    used = 0
    for i, n in enumerate(lengths):
        if batches and len(batches[-1]) < max_texts and used + n <= max_tokens:
            batches[-1].append(i)
            used += n
        else:
            batches.append([i])
            used = n
    return batches
