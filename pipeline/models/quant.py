"""Per-output-channel symmetric weight quantisation in numpy, stored as integer codes + one scale per row.

WHY a numpy twin of ``tiny.fake_quantize_``: the real-model ladder (``smollm2-w8/w4/w3``) must use the same
quantiser as the tiny ladder (``scale = max|row| / qmax`` clamped at 1e-12, ``round`` half-to-even, clip to
``±qmax``; tests check both give identical weights) but must be *stored* lean: a 135 M model is 540 MB in fp32,
so codes are kept (int8, or two 4-bit codes per byte for ≤ 4 bits) and dequantised when the app loads them.
"""

from __future__ import annotations

import numpy as np

CODES_SUFFIX, SCALE_SUFFIX = ".qcodes", ".qscale"


class QuantError(ValueError):
    """A tensor cannot be quantised/stored as asked."""


def qmax(bits: int) -> int:
    if not 2 <= bits <= 8:
        raise QuantError(f"bits={bits}: per-channel quantisation supports 2..8 bits")
    return 2 ** (bits - 1) - 1


def quantize_per_channel(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes, float32 scale per row) of a 2-D float weight; ``codes * scale`` is the fake-quantised weight."""
    if w.ndim != 2:
        raise QuantError(f"weight of shape {w.shape}: only 2-D (out, in) matrices are quantised per channel")
    q = qmax(bits)
    w = np.asarray(w, dtype=np.float32)
    scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), np.float32(1e-12)) / np.float32(q)
    codes = np.clip(np.round(w / scale), -q, q).astype(np.int8)
    return codes, scale[:, 0].astype(np.float32)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """int8 codes as stored: as-is for > 4 bits, else two offset nibbles per byte (even column in the low one)."""
    if bits > 4:
        return np.ascontiguousarray(codes, dtype=np.int8)
    if codes.shape[1] % 2:
        raise QuantError(f"weight of shape {codes.shape}: nibble packing needs an even row length")
    u = (codes.astype(np.int16) + 8).astype(np.uint8)
    return np.ascontiguousarray(u[:, 0::2] | (u[:, 1::2] << 4))


def unpack(stored: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack` → int8 codes."""
    if bits > 4:
        return stored.astype(np.int8)
    out = np.empty((stored.shape[0], stored.shape[1] * 2), dtype=np.int8)
    out[:, 0::2] = (stored & 0x0F).astype(np.int8) - 8
    out[:, 1::2] = (stored >> 4).astype(np.int8) - 8
    return out


def dequantize(stored: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """float32 weight from stored codes and per-row scales (exactly ``codes * scale`` in float32).

    WHY a lookup table for nibbles: the app dequantises ~135 M weights at every start; one gather from a
    256-entry table + one in-place multiply is ~3x faster than unpacking to int8 and converting."""
    s = scale.astype(np.float32)[:, None]
    if bits > 4:
        out = stored.astype(np.float32)
    else:
        out = _NIBBLE_VALUES[stored].reshape(stored.shape[0], stored.shape[1] * 2)
    out *= s
    return out


# byte → (low nibble code, high nibble code) as float32: the even column is the low nibble (see `pack`)
_NIBBLE_VALUES = np.stack([(np.arange(256) & 0x0F) - 8, (np.arange(256) >> 4) - 8], axis=1).astype(np.float32)
