"""Device-side ADB authentication (AUTH TOKEN / SIGNATURE / RSAPUBLICKEY), as real adbd does it.

Why pure Python ints: verification is one modular exponentiation of a 2048-bit number per attempt, and adb's key
format is a custom struct rather than PEM, so no crypto library is needed (or wanted) on the device side.

- adb's public key file (``~/.android/adbkey.pub``, one line of a phone's ``/data/misc/adb/adb_keys``) is
  ``base64(struct{u32 len; u32 n0inv; u32 n[len]; u32 rr[len]; u32 e}) + " user@host"``, all little-endian,
  ``len`` = modulus size in 32-bit words (64 for the RSA-2048 keys adb makes).
- The host signs the 20-byte token with ``RSA_sign(NID_sha1, token, …)``: PKCS#1 v1.5 over the token treated as an
  already computed SHA-1 digest, i.e. ``sig^e mod n == 00 01 FF… 00 || DigestInfo(sha1) || token``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AdbPublicKey", "parse_public_key", "load_keys", "verify", "new_token", "TOKEN_SIZE",
           "AUTH_TOKEN", "AUTH_SIGNATURE", "AUTH_RSAPUBLICKEY"]

log = logging.getLogger("odeval.virtual.adbd")

AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
TOKEN_SIZE = 20
SHA1_DIGEST_INFO = bytes.fromhex("3021300906052b0e03021a05000414")


@dataclass(frozen=True)
class AdbPublicKey:
    """One authorized host key: RSA modulus and exponent, plus the comment (``user@host``) for log lines."""

    n: int
    e: int
    comment: str = ""


def parse_public_key(line: str) -> AdbPublicKey:
    """One ``adb_keys`` line → key; ValueError (with the reason) for anything that is not an adb RSA key."""
    b64, _, comment = line.strip().partition(" ")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if len(raw) < 8:
        raise ValueError("too short")
    words = struct.unpack_from("<I", raw)[0]
    size = 4 * words
    if words == 0 or len(raw) != 8 + 2 * size + 4:
        raise ValueError(f"length {len(raw)} does not match a {32 * words}-bit adb key struct")
    n = int.from_bytes(raw[8:8 + size], "little")
    e = struct.unpack_from("<I", raw, 8 + 2 * size)[0]
    if n <= 1 or e < 3:
        raise ValueError("bad modulus or exponent")
    return AdbPublicKey(n=n, e=e, comment=comment.strip())


def load_keys(path: Path) -> list[AdbPublicKey]:
    """Keys of an ``adb_keys`` file, re-read on every attempt (as adbd does) so an added key works at once.

    A missing file means no authorized key; a malformed line is logged and skipped, never fatal."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as e:
        log.warning("cannot read adb_keys %s: %s", path, e.strerror)
        return []
    keys = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            keys.append(parse_public_key(line))
        except ValueError as e:
            log.warning("%s:%d: skipping malformed adb key (%s)", path, i, e)
    return keys


def _expected_block(token: bytes, k: int) -> bytes:
    """PKCS#1 v1.5 type-1 block of k bytes for a SHA-1 DigestInfo whose digest is the token itself."""
    t = SHA1_DIGEST_INFO + token
    if k < len(t) + 11:
        raise ValueError("key too small")
    return b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t


def verify(token: bytes, signature: bytes, keys: list[AdbPublicKey]) -> AdbPublicKey | None:
    """The key among ``keys`` whose holder signed ``token`` (adb's RSA_sign(NID_sha1, token)), else None."""
    sig = int.from_bytes(signature, "big")
    for key in keys:
        k = (key.n.bit_length() + 7) // 8
        if len(signature) != k or sig >= key.n:
            continue
        try:
            expected = _expected_block(token, k)
        except ValueError:
            continue
        if pow(sig, key.e, key.n).to_bytes(k, "big") == expected:
            return key
    return None


def new_token() -> bytes:
    return os.urandom(TOKEN_SIZE)
