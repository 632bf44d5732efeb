"""A numpy Llama forward pass with a KV cache, one token at a time (the reference app's fast-start engine).

WHY: the reference app starts once per prompt in fresh sessions and ``import transformers`` costs ~4 s of the start-up
while the tiny models decode in well under a millisecond per token. This module needs only numpy + safetensors and
reproduces ``transformers``' ``LlamaForCausalLM`` (float32, eager attention) for the configs it accepts: default
RoPE (``rope_theta``, ``head_dim``, no ``rope_scaling``), MHA/GQA, SiLU-gated MLP, optional biases, tied or separate
``lm_head``. Anything else raises :class:`NpLlamaError` so the caller can fall back to torch.

Numerics follow ``modeling_llama.py``: RMSNorm in float32 with ``rms_norm_eps``; ``inv_freq = 1 / theta **
(arange(0, d, 2) / d)`` in float32, ``cos/sin(pos * inv_freq)`` duplicated over both halves and ``rotate_half``;
scores scaled by ``head_dim ** -0.5``; kv head ``i`` serves query heads ``i*g .. i*g+g-1``.

Activation quantisation (config.json ``odeval_activation_quant``, e.g. ``{"bits": 8, "scheme":
"dynamic-symmetric-per-token"}``, written by the ``gguf-a8`` variant of :mod:`pipeline.models.gguf_model`): emulates
the "A8" of MobileQuant's W4A8 so the diagnosis can tell weight from activation quantisation apart. The input vector
of every decoder linear layer (q/k/v, o, gate/up, down) is fake-quantised in float32: ``s = max|x| / qmax`` with
``qmax = 2**(bits-1) - 1``, ``x = clip(rint(x / s), -qmax, qmax) * s`` (``x`` unchanged when it is all zero). The
lm_head input (and the final norm) stay float, as in MobileQuant's simulation (``create_sim_qmodel`` in
saic-fi/MobileQuant ``mobilellm/quantization/qmodule.py`` skips ``lm_head`` and the last norm). Not emulated, so this
is an optimistic bound of the deployed model: MobileQuant's activation ranges are static per tensor, calibrated and
learned offline (and asymmetric by default) where these are recomputed from each token's own vector; linear
*outputs*, norm inputs (16 bit there), the attention matmuls, softmax and SiLU stay float here; the HTP's integer
accumulation and requantisation numerics are not modelled. The torch engine cannot run such a config
(:func:`numpy_only_reason`), so the reference app refuses rather than silently running float activations.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.models.act_quant import ACT_QUANT_KEY, ActQuantError, parse_act_quant

WEIGHTS_FILE = "model.safetensors"
QINT_FILE, GGUF_FILE = "model.qint.safetensors", "model.gguf"  # pipeline.models.gguf_model's lean formats
_ROPE_KEYS = frozenset({"rope_type", "type", "rope_theta"})
_DEFAULT_THETA = 10_000.0  # transformers' RotaryEmbeddingConfigMixin.default_theta
_FLOAT_DTYPES = frozenset({"F32", "F16", "F64"})


class NpLlamaError(Exception):
    """The model dir cannot be run by the numpy engine (message names the file/key; use the torch engine)."""


def _act_bits(cfg: dict[str, Any]) -> int | None:
    try:
        return parse_act_quant(cfg)
    except ActQuantError as exc:
        raise NpLlamaError(str(exc)) from None


@dataclass(frozen=True)
class LlamaSpec:
    """The config.json fields the forward pass depends on (validated)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    attention_bias: bool
    mlp_bias: bool
    eos_token_ids: tuple[int, ...]
    act_bits: int | None = None  # config.json odeval_activation_quant.bits; None: float activations


def read_config(model_dir: Path) -> dict[str, Any]:
    """config.json as a dict (one-line error if missing or not JSON)."""
    path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NpLlamaError(f"{path}: cannot read config ({exc})") from exc
    if not isinstance(cfg, dict):
        raise NpLlamaError(f"{path}: config is not a JSON object")
    return cfg


def rope_theta(cfg: dict[str, Any]) -> float:
    """Base of the default RoPE, resolved like transformers; refuses any scaled/partial RoPE variant."""
    if cfg.get("rope_scaling") is not None:
        raise NpLlamaError(f"config.json rope_scaling={cfg['rope_scaling']!r} is not supported by the numpy engine "
                           "(only rope_scaling null); use ODEVAL_ENGINE=torch")
    params = cfg.get("rope_parameters") or {}
    if not isinstance(params, dict) or set(params) - _ROPE_KEYS:
        raise NpLlamaError(f"config.json rope_parameters={params!r} is not supported by the numpy engine "
                           "(only rope_type default + rope_theta); use ODEVAL_ENGINE=torch")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise NpLlamaError(f"config.json rope_type={kind!r} is not supported by the numpy engine "
                           "(only 'default'); use ODEVAL_ENGINE=torch")
    if cfg.get("partial_rotary_factor") not in (None, 1, 1.0):
        raise NpLlamaError(f"config.json partial_rotary_factor={cfg['partial_rotary_factor']!r} is not supported "
                           "by the numpy engine; use ODEVAL_ENGINE=torch")
    theta = params.get("rope_theta", cfg.get("rope_theta", _DEFAULT_THETA))
    return float(theta if theta is not None else _DEFAULT_THETA)


def numpy_only_reason(model_dir: Path) -> str | None:
    """Why only the numpy engine may run ``model_dir`` (torch would silently ignore part of its config), or None.

    WHY: activation quantisation exists only in this engine; running such a model on torch would report float
    activations under the a8 model's name. An unreadable config gives None (the caller's own load reports it)."""
    try:
        cfg = read_config(model_dir)
    except NpLlamaError:
        return None
    if cfg.get(ACT_QUANT_KEY) is None:
        return None
    return (f"config.json {ACT_QUANT_KEY}={cfg[ACT_QUANT_KEY]!r}: activation quantisation is emulated only by the "
            "numpy engine (torch would run float activations); use ODEVAL_ENGINE=numpy or auto")


def fake_quant(x: np.ndarray, bits: int) -> np.ndarray:
    """``x`` rounded to ``bits``-bit symmetric integers with one scale ``max|x| / qmax`` (float32 in and out).

    One scale per call = per token here (the engine feeds one token's vector). ``rint`` rounds half to even like
    ``torch.round`` (MobileQuant's quantiser). The clip is never active for a dynamic scale (``|x| / s <= qmax``
    up to rounding) but keeps the codes in range whatever the float rounding of ``s``."""
    qmax = np.float32(2 ** (bits - 1) - 1)
    amax = np.abs(x).max()
    if amax == 0:
        return x
    s = np.float32(amax) / qmax
    return np.clip(np.rint(x / s), -qmax, qmax) * s


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def parse_spec(cfg: dict[str, Any]) -> LlamaSpec:
    """Validate a Llama config.json for the numpy engine (raises :class:`NpLlamaError` naming the key)."""
    if cfg.get("model_type") != "llama":
        raise NpLlamaError(f"config.json model_type={cfg.get('model_type')!r}: the numpy engine runs only 'llama'")
    if cfg.get("hidden_act", "silu") != "silu":
        raise NpLlamaError(f"config.json hidden_act={cfg['hidden_act']!r}: the numpy engine supports only 'silu'")
    try:
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        eos = cfg.get("eos_token_id", 2)
        spec = LlamaSpec(
            vocab_size=int(cfg["vocab_size"]), hidden_size=hidden, intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]), num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads), rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta(cfg), tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", False)), mlp_bias=bool(cfg.get("mlp_bias", False)),
            eos_token_ids=tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None),
            act_bits=_act_bits(cfg))
    except (KeyError, TypeError, ValueError) as exc:
        raise NpLlamaError(f"config.json: missing or invalid Llama field ({exc!r})") from exc
    if spec.num_heads % spec.num_kv_heads or spec.head_dim % 2:
        raise NpLlamaError(f"config.json: num_attention_heads={spec.num_heads} must be a multiple of "
                           f"num_key_value_heads={spec.num_kv_heads} and head_dim={spec.head_dim} even")
    return spec


def safetensors_param_count(path: Path) -> int:
    """Number of floating-point parameters, read from the safetensors header only (no tensor data loaded)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as exc:
        raise NpLlamaError(f"{path}: not a readable safetensors file ({exc})") from exc
    total = 0
    for name, info in header.items():
        if name != "__metadata__" and info.get("dtype") in _FLOAT_DTYPES | {"BF16"}:
            total += int(np.prod(info.get("shape", []), dtype=np.int64))
    return total


def weights_file(model_dir: Path) -> Path | None:
    """The dir's weights: ``model.safetensors`` (float), ``model.qint.safetensors`` (int codes + scales) or
    ``model.gguf`` (both from :mod:`pipeline.models.gguf_model`), in that order; None when none exists."""
    for name in (WEIGHTS_FILE, QINT_FILE, GGUF_FILE):
        if (Path(model_dir) / name).is_file():
            return Path(model_dir) / name
    return None


def numpy_ineligible_reason(model_dir: Path, max_params: int = 200_000_000) -> str | None:
    """Why ``auto`` engine selection should use torch for ``model_dir``, or None when numpy can run it.

    WHY: beyond ~200 M parameters the BLAS-bound numpy path has no start-up advantage worth the risk of an
    unsupported layout, and sharded / non-Llama checkpoints are out of scope. Integer-coded and GGUF weights
    run only here (torch cannot load them). SmolLM2-135M in float16 decodes as fast on numpy as on torch here.
    """
    model_dir = Path(model_dir)
    try:
        parse_spec(read_config(model_dir))
        weights = weights_file(model_dir)
        if weights is None:
            return f"{model_dir / WEIGHTS_FILE} not found (sharded or .bin checkpoints run on torch)"
        if weights.name != WEIGHTS_FILE:
            return None
        n = safetensors_param_count(weights)
    except NpLlamaError as exc:
        return str(exc)
    return None if n <= max_params else f"{n} parameters > {max_params} (large models run on torch)"


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    if path.name == WEIGHTS_FILE:
        from safetensors.numpy import load_file

        return load_file(str(path))
    from pipeline.models import gguf_model

    try:
        if path.name == QINT_FILE:
            return gguf_model.load_qint_weights(path)
        return gguf_model.load_gguf_weights(path)[1]
    except gguf_model.GgufModelError as exc:
        raise NpLlamaError(str(exc)) from exc


def _silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x) via tanh (no exp overflow warnings for large negative x)."""
    return x * (0.5 + 0.5 * np.tanh(0.5 * x))


class KVCache:
    """Preallocated keys/values per layer, ``(layers, kv_heads, max_positions, head_dim)``; ``length`` filled."""

    def __init__(self, spec: LlamaSpec, max_positions: int) -> None:
        shape = (spec.num_layers, spec.num_kv_heads, max_positions, spec.head_dim)
        self.k = np.zeros(shape, dtype=np.float32)
        self.v = np.zeros(shape, dtype=np.float32)
        self.length = 0

    @property
    def max_positions(self) -> int:
        return self.k.shape[2]

    def get_seq_length(self) -> int:
        """Positions held (same name as transformers' Cache so callers can treat both backends alike)."""
        return self.length


@dataclass
class _Layer:
    ln1: np.ndarray
    wqkv: np.ndarray  # (q+k+v out, hidden): one matvec for all projections
    bqkv: np.ndarray | None
    wo: np.ndarray
    bo: np.ndarray | None
    ln2: np.ndarray
    wgu: np.ndarray  # (2*intermediate, hidden): gate rows then up rows
    bgu: np.ndarray | None
    wd: np.ndarray
    bd: np.ndarray | None


class NumpyLlama:
    """LlamaForCausalLM inference in numpy float32, one token per :meth:`forward` against a :class:`KVCache`."""

    def __init__(self, spec: LlamaSpec, weights: dict[str, np.ndarray]) -> None:
        self.spec = spec
        self.embed = self._get(weights, "model.embed_tokens.weight", (spec.vocab_size, spec.hidden_size))
        self.layers = [self._layer(weights, i) for i in range(spec.num_layers)]
        self.norm = self._get(weights, "model.norm.weight", (spec.hidden_size,))
        if spec.tie_word_embeddings:
            self.lm_head = self.embed
        else:
            self.lm_head = self._get(weights, "lm_head.weight", (spec.vocab_size, spec.hidden_size))
        half = spec.head_dim // 2
        self.inv_freq = (np.float32(1.0) / np.float32(spec.rope_theta) ** (
            np.arange(0, spec.head_dim, 2, dtype=np.float32) / np.float32(spec.head_dim))).astype(np.float32)
        self._cos = self._sin = np.zeros((0, half), dtype=np.float32)
        self.scale = np.float32(spec.head_dim ** -0.5)
        bits = spec.act_bits
        # chosen once: the float path calls an identity (same arrays, bit-identical logits)
        self.act_quant = _identity if bits is None else (lambda x: fake_quant(x, bits))

    @classmethod
    def from_pretrained(cls, model_dir: Path) -> NumpyLlama:
        """Load config.json + weights from a model dir; float16/32, integer-coded and GGUF weights all become
        float32 (dequantised once here, so decoding costs the same whatever the storage)."""
        model_dir = Path(model_dir)
        spec = parse_spec(read_config(model_dir))
        path = weights_file(model_dir)
        if path is None:
            raise NpLlamaError(f"{model_dir}: no {WEIGHTS_FILE}, {QINT_FILE} or {GGUF_FILE}")
        try:
            raw = _read_weights(path)
        except NpLlamaError:
            raise
        except Exception as exc:  # safetensors raises SafetensorError/TypeError (e.g. bf16 has no numpy dtype)
            raise NpLlamaError(f"{path}: cannot load with numpy ({exc}); use ODEVAL_ENGINE=torch") from exc
        return cls(spec, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in raw.items()})

    @staticmethod
    def _get(weights: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
        w = weights.get(name)
        if w is None:
            raise NpLlamaError(f"{WEIGHTS_FILE}: tensor {name!r} is missing")
        if w.shape != shape:
            raise NpLlamaError(f"{WEIGHTS_FILE}: tensor {name!r} has shape {w.shape}, config.json implies {shape}")
        return w

    def _layer(self, w: dict[str, np.ndarray], i: int) -> _Layer:
        s, p = self.spec, f"model.layers.{i}."
        q_out, kv_out, h, m = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim, s.hidden_size, s.intermediate_size

        def cat(names: list[str], shapes: list[tuple[int, ...]]) -> np.ndarray:
            parts = [self._get(w, n, sh) for n, sh in zip(names, shapes, strict=True)]
            return np.ascontiguousarray(np.concatenate(parts))

        attn = [p + f"self_attn.{x}_proj" for x in "qkv"]
        mlp = [p + "mlp.gate_proj", p + "mlp.up_proj"]
        qkv_shapes = [(q_out,), (kv_out,), (kv_out,)]
        return _Layer(
            ln1=self._get(w, p + "input_layernorm.weight", (h,)),
            wqkv=cat([n + ".weight" for n in attn], [(o[0], h) for o in qkv_shapes]),
            bqkv=cat([n + ".bias" for n in attn], qkv_shapes) if s.attention_bias else None,
            wo=self._get(w, p + "self_attn.o_proj.weight", (h, q_out)),
            bo=self._get(w, p + "self_attn.o_proj.bias", (h,)) if s.attention_bias else None,
            ln2=self._get(w, p + "post_attention_layernorm.weight", (h,)),
            wgu=cat([n + ".weight" for n in mlp], [(m, h), (m, h)]),
            bgu=cat([n + ".bias" for n in mlp], [(m,), (m,)]) if s.mlp_bias else None,
            wd=self._get(w, p + "mlp.down_proj.weight", (h, m)),
            bd=self._get(w, p + "mlp.down_proj.bias", (h,)) if s.mlp_bias else None,
        )

    def new_cache(self, max_positions: int) -> KVCache:
        """An empty cache for positions ``0 .. max_positions-1`` (also sizes the RoPE table once)."""
        if self._cos.shape[0] < max_positions:
            freqs = np.arange(max_positions, dtype=np.float32)[:, None] * self.inv_freq[None, :]
            self._cos, self._sin = np.cos(freqs), np.sin(freqs)
        return KVCache(self.spec, max_positions)

    def _rms(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return weight * (x / np.sqrt(np.dot(x, x) / np.float32(x.shape[-1]) + np.float32(self.spec.rms_norm_eps)))

    def forward(self, token: int, pos: int, cache: KVCache) -> np.ndarray:
        """Logits ``(vocab,)`` for ``token`` at position ``pos``; writes its K/V at ``pos`` and attends to 0..pos.

        WHY positions are explicit: the app wraps its position and restarts the cache itself; anything the cache
        holds beyond ``pos`` is ignored (``cache.length`` becomes ``pos + 1``).
        """
        s = self.spec
        if not 0 <= token < s.vocab_size:
            raise NpLlamaError(f"token id {token} is outside the vocabulary (vocab_size={s.vocab_size})")
        if not 0 <= pos < cache.max_positions:
            raise NpLlamaError(f"position {pos} is outside the KV cache (max_positions={cache.max_positions})")
        if self._cos.shape[0] <= pos:
            self.new_cache(cache.max_positions)
        nh, nkv, hd, half = s.num_heads, s.num_kv_heads, s.head_dim, s.head_dim // 2
        cos, sin, t = self._cos[pos], self._sin[pos], pos + 1
        aq = self.act_quant  # decoder linear inputs only; lm_head's stays float (module docstring)
        x = self.embed[token]
        for i, ly in enumerate(self.layers):
            qkv = ly.wqkv @ aq(self._rms(x, ly.ln1))
            if ly.bqkv is not None:
                qkv = qkv + ly.bqkv
            qk = qkv[: (nh + nkv) * hd].reshape(nh + nkv, hd)  # rotate q and k heads in one go
            a, b = qk[:, :half], qk[:, half:]
            qk = np.concatenate((a * cos - b * sin, b * cos + a * sin), axis=1)
            cache.k[i, :, pos] = qk[nh:]
            cache.v[i, :, pos] = qkv[(nh + nkv) * hd:].reshape(nkv, hd)
            q = qk[:nh].reshape(nkv, nh // nkv, hd)
            scores = np.matmul(q, cache.k[i, :, :t].transpose(0, 2, 1)) * self.scale  # (kv, group, t)
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            attn = np.matmul(scores, cache.v[i, :, :t]).reshape(nh * hd)
            o = ly.wo @ aq(attn)
            x = x + (o if ly.bo is None else o + ly.bo)
            gu = ly.wgu @ aq(self._rms(x, ly.ln2))
            if ly.bgu is not None:
                gu = gu + ly.bgu
            d = ly.wd @ aq(_silu(gu[: s.intermediate_size]) * gu[s.intermediate_size:])
            x = x + (d if ly.bd is None else d + ly.bd)
        cache.length = t
        return self.lm_head @ self._rms(x, self.norm)
