"""The reference app's native engine: a Llama forward pass on weights kept compressed, float32 activations.

WHY: the numpy engine (:mod:`pipeline.guest.npllama`) dequantises every weight to float32 at load, so each SmolLM2
token reads ~540 MB and decodes at ~21 tok/s, memory-bound on the wrong format; it also prefills token by token.
llama.cpp reads the 98 MB GGUF but quantises activations to 8 bits inside its dot products, which changes the
greedy answers (4/12 equal to a float run). This engine reads the weights as stored — the GGUF's Q4_1/Q8_0 blocks,
the project's w8/w4/w3 codes (:mod:`pipeline.models.quant`), float16/float32 safetensors — and expands each block to
exactly the float32 values the numpy engine's dequantisation gives, multiplied with float32 activations and summed
in float32 (``qkernel.c``: the order is fixed, so batched prefill equals token-by-token prefill bit for bit, and the
thread count does not change a single bit either).

Weights are memory-mapped (nothing is dequantised or copied at load, except the q/k rows of a GGUF, which are
re-ordered for HF-style RoPE as :func:`pipeline.models.gguf_model.reverse_permute` does). The forward pass, RoPE
tables, KV cache layout and activation fake-quantisation (``odeval_activation_quant``) follow
:class:`pipeline.guest.npllama.NumpyLlama`, whose :class:`~pipeline.guest.npllama.KVCache` this engine shares.

The shared library is built once per machine by :mod:`pipeline.guest.native_build` (found through
:mod:`pipeline.native_kernel`); when it is missing (no compiler) :func:`load` returns the reason and the app runs
the numpy engine instead.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.guest import npllama
from pipeline.guest.npllama import KVCache, LlamaSpec, NpLlamaError

ABI = 1
# qkernel.c's weight formats
F_F32, F_F16, F_Q4_1, F_Q8_0, F_I8, F_I4 = range(6)
_GGUF_FORMATS = {"F32": F_F32, "F16": F_F16, "Q4_1": F_Q4_1, "Q8_0": F_Q8_0}
_BLOCK = {F_Q4_1: (32, 20), F_Q8_0: (32, 34)}  # (values, bytes) per block
_ST_DTYPES = {"F32": ("<f4", F_F32), "F16": ("<f2", F_F16), "I8": ("i1", F_I8), "U8": ("u1", F_I4)}


class QMat(ctypes.Structure):
    """``qk_mat``: one weight matrix as stored (rows of blocks/codes), its per-row scales and bias."""

    _fields_ = [("fmt", ctypes.c_int32), ("rows", ctypes.c_int32), ("cols", ctypes.c_int32),
                ("pad", ctypes.c_int32), ("row_bytes", ctypes.c_int64), ("data", ctypes.c_void_p),
                ("scale", ctypes.c_void_p), ("bias", ctypes.c_void_p)]


class QLayer(ctypes.Structure):
    """``qk_layer``: the two norms and seven matrices of a decoder layer."""

    _fields_ = [("ln1", ctypes.c_void_p), ("ln2", ctypes.c_void_p),
                *[(n, QMat) for n in ("wq", "wk", "wv", "wo", "wg", "wu", "wd")]]


class QModel(ctypes.Structure):
    """``qk_model``: shapes, threads, norms, RoPE tables, embedding, lm_head, layers."""

    _fields_ = [*[(n, ctypes.c_int32) for n in ("n_layers", "hidden", "inter", "n_heads", "n_kv", "head_dim",
                                                 "vocab", "max_pos", "act_bits", "n_threads")],
                ("eps", ctypes.c_float), ("attn_scale", ctypes.c_float),
                ("norm", ctypes.c_void_p), ("cos", ctypes.c_void_p), ("sin", ctypes.c_void_p),
                ("embed", QMat), ("lm_head", QMat), ("layers", ctypes.POINTER(QLayer))]


def open_library(path: Path) -> ctypes.CDLL:
    """The built kernel with its function signatures (raises OSError/NpLlamaError when it is not this ABI)."""
    lib = ctypes.CDLL(str(path))
    lib.qk_abi.restype = ctypes.c_int
    if lib.qk_abi() != ABI:
        raise NpLlamaError(f"{path}: kernel ABI {lib.qk_abi()} != {ABI}; rebuild: "
                           "python -m pipeline.guest.native_build")
    lib.qk_forward.restype = ctypes.c_int
    lib.qk_forward.argtypes = [ctypes.POINTER(QModel), ctypes.c_int, ctypes.c_void_p, ctypes.c_int32,
                               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.qk_matmul.restype = ctypes.c_int
    lib.qk_matmul.argtypes = [ctypes.POINTER(QMat), ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                              ctypes.c_int, ctypes.c_int]
    lib.qk_set_generic.argtypes = [ctypes.c_int]
    lib.qk_simd.restype = lib.qk_openmp.restype = ctypes.c_int
    return lib


@dataclass
class Tensor:
    """One stored tensor: ``fmt`` and its raw rows (``data``: uint8 ``(rows, row_bytes)``, or float32 for vectors)."""

    fmt: int
    shape: tuple[int, ...]
    data: np.ndarray
    scale: np.ndarray | None = None


# ------------------------------------------------------------------------------------------------ weight readers
def _gguf_tensors(path: Path) -> dict[str, Tensor]:
    """The GGUF's tensors as stored, through ``model.gguf.index.json`` (q/k rows un-permuted by a row gather)."""
    from pipeline.models import gguf_model

    index = gguf_model._read_index(path)
    if index is None:
        raise NpLlamaError(f"{path}: no matching {gguf_model.GGUF_INDEX_FILE} (re-fetch the model)")
    data = np.memmap(path, dtype=np.uint8, mode="r")
    out: dict[str, Tensor] = {}
    for t in index["tensors"]:
        fmt = _GGUF_FORMATS.get(t["type"])
        if fmt is None:
            raise NpLlamaError(f"{path}: tensor {t['name']} has type {t['type']}, which the kernel cannot read")
        shape = tuple(int(s) for s in t["shape"])
        raw = data[t["offset"]: t["offset"] + t["nbytes"]]
        if len(shape) == 1:
            out[t["name"]] = Tensor(fmt, shape, raw.view("<f4" if fmt == F_F32 else "<f2").astype(np.float32))
            continue
        rows = raw.reshape(shape[0], -1)
        if t.get("unpermute_heads"):
            perm = gguf_model.reverse_permute(np.arange(shape[0]), int(t["unpermute_heads"]))
            rows = np.ascontiguousarray(rows[perm])
        out[t["name"]] = Tensor(fmt, shape, rows)
    return out


def _safetensors_map(path: Path) -> tuple[np.ndarray, dict[str, Any], dict[str, str]]:
    """(the file memory-mapped, its tensor header, its metadata): zero-copy access to every tensor."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", None) or {}
    data = np.memmap(path, dtype=np.uint8, mode="r")
    return data[8 + n:], header, meta


def _st_array(data: np.ndarray, info: dict[str, Any], name: str, path: Path) -> tuple[np.ndarray, int]:
    dtype = info.get("dtype")
    if dtype not in _ST_DTYPES:
        raise NpLlamaError(f"{path}: tensor {name} has dtype {dtype}, which the kernel cannot read")
    begin, end = info["data_offsets"]
    np_dtype, fmt = _ST_DTYPES[dtype]
    return data[begin:end].view(np_dtype).reshape(info["shape"]), fmt


def _safetensors_tensors(path: Path) -> dict[str, Tensor]:
    """Float safetensors (F32/F16) or the project's qint file (codes + per-row scales) as stored."""
    from pipeline.models import quant

    data, header, meta = _safetensors_map(path)
    bits = int(meta.get("odeval_quant_bits", "0") or 0)
    out: dict[str, Tensor] = {}
    for name, info in header.items():
        if name.endswith(quant.SCALE_SUFFIX):
            continue
        arr, fmt = _st_array(data, info, name, path)
        if name.endswith(quant.CODES_SUFFIX):
            base = name[: -len(quant.CODES_SUFFIX)]
            scale, _ = _st_array(data, header[base + quant.SCALE_SUFFIX], base, path)
            if bits > 4:
                fmt, cols = F_I8, arr.shape[1]
            else:
                fmt, cols = F_I4, arr.shape[1] * 2
            out[base] = Tensor(fmt, (arr.shape[0], cols), arr.view(np.uint8), np.ascontiguousarray(scale, np.float32))
        elif arr.ndim == 1:
            out[name] = Tensor(F_F32, arr.shape, arr.astype(np.float32))
        elif fmt in (F_F32, F_F16):
            out[name] = Tensor(fmt, arr.shape, arr.view(np.uint8).reshape(arr.shape[0], -1))
        else:
            raise NpLlamaError(f"{path}: integer tensor {name} without {quant.SCALE_SUFFIX}")
    return out


def read_tensors(path: Path) -> dict[str, Tensor]:
    """Every tensor of a model dir's weights file as stored (GGUF, qint or float safetensors)."""
    try:
        if path.name == npllama.GGUF_FILE:
            return _gguf_tensors(path)
        return _safetensors_tensors(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NpLlamaError(f"{path}: cannot map its tensors for the kernel ({exc})") from exc


# ------------------------------------------------------------------------------------------------ the engine
def _bytes_per_row(fmt: int, cols: int) -> int:
    if fmt in _BLOCK:
        n, b = _BLOCK[fmt]
        return cols // n * b
    return {F_F32: 4 * cols, F_F16: 2 * cols, F_I8: cols, F_I4: cols // 2}[fmt]


@dataclass
class NativeLlama:
    """The native engine, with :class:`~pipeline.guest.npllama.NumpyLlama`'s interface (``new_cache``,
    ``forward``) plus :meth:`forward_batch` for a prompt's tokens in one pass."""

    spec: LlamaSpec
    lib: ctypes.CDLL
    tensors: dict[str, Tensor]
    threads: int = 1
    weights_path: Path | None = None
    _keep: list[Any] = field(default_factory=list, repr=False)
    _cos: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32), repr=False)
    _sin: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32), repr=False)

    def __post_init__(self) -> None:
        s = self.spec
        if s.hidden_size % 32 or s.intermediate_size % 32 or s.num_heads * s.head_dim % 32:
            raise NpLlamaError(f"hidden_size={s.hidden_size}, intermediate_size={s.intermediate_size}: the kernel "
                               "needs multiples of 32")
        self.inv_freq = (np.float32(1.0) / np.float32(s.rope_theta) ** (
            np.arange(0, s.head_dim, 2, dtype=np.float32) / np.float32(s.head_dim))).astype(np.float32)
        self.model = QModel()
        m = self.model
        (m.n_layers, m.hidden, m.inter, m.n_heads, m.n_kv, m.head_dim, m.vocab) = (
            s.num_layers, s.hidden_size, s.intermediate_size, s.num_heads, s.num_kv_heads, s.head_dim, s.vocab_size)
        m.act_bits, m.n_threads = s.act_bits or 0, max(1, int(self.threads))
        m.eps, m.attn_scale = s.rms_norm_eps, float(np.float32(s.head_dim ** -0.5))
        m.norm = self._vector("model.norm.weight", s.hidden_size)
        m.embed = self._mat("model.embed_tokens.weight", (s.vocab_size, s.hidden_size))
        m.lm_head = m.embed if s.tie_word_embeddings else self._mat("lm_head.weight", (s.vocab_size, s.hidden_size))
        layers = (QLayer * s.num_layers)()
        q_out, kv_out, h, i = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim, s.hidden_size, s.intermediate_size
        for n in range(s.num_layers):
            p, ly = f"model.layers.{n}.", layers[n]
            ly.ln1 = self._vector(p + "input_layernorm.weight", h)
            ly.ln2 = self._vector(p + "post_attention_layernorm.weight", h)
            ab, mb = s.attention_bias, s.mlp_bias
            ly.wq = self._mat(p + "self_attn.q_proj", (q_out, h), ab)
            ly.wk = self._mat(p + "self_attn.k_proj", (kv_out, h), ab)
            ly.wv = self._mat(p + "self_attn.v_proj", (kv_out, h), ab)
            ly.wo = self._mat(p + "self_attn.o_proj", (h, q_out), ab)
            ly.wg = self._mat(p + "mlp.gate_proj", (i, h), mb)
            ly.wu = self._mat(p + "mlp.up_proj", (i, h), mb)
            ly.wd = self._mat(p + "mlp.down_proj", (h, i), mb)
        self._layers = layers
        m.layers = layers
        self._pointer = ctypes.byref(m)

    @property
    def simd(self) -> str:
        """What the kernel's matmuls run on: ``avx512`` or ``portable`` (bit-identical, slower)."""
        return "avx512" if self.lib.qk_simd() == 512 else "portable"

    def _vector(self, name: str, n: int) -> int:
        t = self.tensors.get(name)
        if t is None or t.shape != (n,):
            raise NpLlamaError(f"tensor {name!r} is missing or not of shape ({n},)")
        arr = np.ascontiguousarray(t.data, dtype=np.float32)
        self._keep.append(arr)
        return arr.ctypes.data

    def _mat(self, name: str, shape: tuple[int, int], bias: bool = False) -> QMat:
        key = name if name.endswith(".weight") else name + ".weight"
        t = self.tensors.get(key)
        if t is None or t.shape != shape:
            raise NpLlamaError(f"tensor {key!r} is missing or has shape {None if t is None else t.shape}, "
                               f"config.json implies {shape}")
        if shape[1] % 32:
            raise NpLlamaError(f"tensor {key!r}: {shape[1]} columns, the kernel needs a multiple of 32")
        rows = t.data
        if rows.strides[1] != 1 or rows.shape != (shape[0], _bytes_per_row(t.fmt, shape[1])):
            raise NpLlamaError(f"tensor {key!r}: stored rows of {rows.shape} bytes do not fit its format")
        self._keep.append(rows)
        mat = QMat(fmt=t.fmt, rows=shape[0], cols=shape[1], row_bytes=rows.strides[0], data=rows.ctypes.data)
        if t.scale is not None:
            self._keep.append(t.scale)
            mat.scale = t.scale.ctypes.data
        if bias:
            mat.bias = self._vector(name.removesuffix(".weight") + ".bias", shape[0])
        return mat

    def matmul(self, mat: QMat, x: np.ndarray, threads: int = 1) -> np.ndarray:
        """``x @ W.T`` for one of this model's matrices (``x``: float32 ``(n, cols)``), as the forward pass computes
        it — for tests and benchmarks."""
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, mat.cols)
        y = np.empty((x.shape[0], mat.rows), dtype=np.float32)
        rc = self.lib.qk_matmul(ctypes.byref(mat), x.ctypes.data, x.shape[0], mat.cols, y.ctypes.data, mat.rows,
                                threads)
        if rc:
            raise NpLlamaError(f"qk_matmul failed (code {rc})")
        return y

    def new_cache(self, max_positions: int) -> KVCache:
        """An empty cache for positions ``0 .. max_positions-1`` (also sizes the RoPE tables once)."""
        if self._cos.shape[0] < max_positions:
            freqs = np.arange(max_positions, dtype=np.float32)[:, None] * self.inv_freq[None, :]
            self._cos, self._sin = np.ascontiguousarray(np.cos(freqs)), np.ascontiguousarray(np.sin(freqs))
            self.model.cos, self.model.sin = self._cos.ctypes.data, self._sin.ctypes.data
        return KVCache(self.spec, max_positions)

    def forward(self, token: int, pos: int, cache: KVCache) -> np.ndarray:
        """Logits ``(vocab,)`` for ``token`` at ``pos``; writes its K/V at ``pos`` (as NumpyLlama.forward)."""
        return self.forward_batch([token], pos, cache)

    def forward_batch(self, tokens: list[int], pos: int, cache: KVCache) -> np.ndarray:
        """Logits of the LAST of ``tokens`` fed at positions ``pos, pos+1, …`` in one pass; every token's K/V is
        written as :meth:`forward` would write it, bit for bit (qkernel.c's determinism contract)."""
        s = self.spec
        n = len(tokens)
        if n == 0:
            raise NpLlamaError("forward_batch needs at least one token")
        ids = np.asarray(tokens, dtype=np.int32)
        if ids.min() < 0 or ids.max() >= s.vocab_size:
            raise NpLlamaError(f"token ids {tokens} include one outside the vocabulary (vocab_size={s.vocab_size})")
        if pos < 0 or pos + n > cache.max_positions:
            raise NpLlamaError(f"positions {pos}..{pos + n - 1} are outside the KV cache "
                               f"(max_positions={cache.max_positions})")
        if self._cos.shape[0] < cache.max_positions:
            self.new_cache(cache.max_positions)
        self.model.max_pos = cache.max_positions
        logits = np.empty(s.vocab_size, dtype=np.float32)
        rc = self.lib.qk_forward(self._pointer, n, ids.ctypes.data, pos, cache.k.ctypes.data, cache.v.ctypes.data,
                                 logits.ctypes.data)
        if rc:
            raise NpLlamaError(f"qk_forward failed (code {rc})")
        cache.length = pos + n
        return logits


def default_threads() -> int:
    """Threads when neither the caller nor ``$ODEVAL_THREADS`` says: half the CPUs this process may use (at most 4,
    at least 1) — 1 on a 2-core host, where adb, the daemon and the pipeline keep a core (a barrier-synchronised
    forward pass collapses when another process takes one of its cores)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus // 2))


def load(model_dir: Path, threads: int = 1) -> tuple[NativeLlama | None, str]:
    """(the native engine, "") for ``model_dir``, or (None, why not) — the caller then runs the numpy engine.

    WHY a reason and not an exception: a missing compiler or an unsupported layout must not stop the app; the
    reason is what the app reports (``ODEVAL_APP_DEBUG``) and what the fetch stage records in app.json."""
    from pipeline.native_kernel import library_for_app

    lib_path, why = library_for_app()
    if lib_path is None:
        return None, why
    model_dir = Path(model_dir)
    try:
        spec = npllama.parse_spec(npllama.read_config(model_dir))
        wpath = npllama.weights_file(model_dir)
        if wpath is None:
            return None, f"{model_dir}: no weights file the kernel reads"
        lib = open_library(lib_path)
        return NativeLlama(spec, lib, read_tensors(wpath), threads=threads, weights_path=wpath), ""
    except (NpLlamaError, OSError) as exc:
        return None, str(exc)
