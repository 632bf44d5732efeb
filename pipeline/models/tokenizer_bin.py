"""llama2.c-format ``tokenizer.bin``: writer (from a Hugging Face ``tokenizer.json``) and reader.

WHY: MobileQuant's ``simple_app`` never sees ``tokenizer.json``; it reads ``tokenizer.bin`` and tokenises with
llama2.c's greedy merge-by-score loop. To count tokens the way the app does (and to feed the reference app exactly
the ids the phone would see) we need both directions here.

File layout (all little-endian): int32 ``max_token_length``; then per token float32 ``score``, int32 ``len``,
``len`` raw bytes. The vocabulary size is not stored (the app takes it from the model); the reader reads to EOF.

Conventions, taken from MobileQuant's ``capp/scripts/tokenizer.py`` exporter (its final output): specials
``<unk>``/``<s>``/``</s>`` are written as their plain text with score 0 (the exporter's first ``"\\n</s>\\n"``
form is overwritten by its second loop, which is why the seed transcript shows ``...</s>(19.78 tok/s)``);
sentencepiece's ``▁`` becomes a space; ``<0xNN>`` byte tokens stay literal (the app's ``decode`` parses them).
For byte-level BPE vocabularies (GPT-2 style, our tiny models) each token is written as its raw bytes and a
merged token's score is minus its merge rank, so the greedy loop reproduces the BPE ids.

Two additions for byte-level vocabularies whose ids are not in byte order (SmolLM2, converted from GGUF):
a codepoint missing from the vocab falls back to each byte's *own* single-byte token when the vocab has one
(else llama2.c's ``byte + 3``, unchanged for Llama-2 and the tiny models, where the two agree); and
:func:`load_for_model` splits the text with the model's HF pre-tokenizer first (``tokenizer.json``) when it has one
that splits with a regex — llama2.c's loop otherwise merges across GPT-2 pre-token boundaries (``" 'sun'"`` →
``" " "'s" "un"`` instead of HF's ``" '" "sun"``). Only the reference app and the host use this; the phone's
simple_app never sees these models.
"""

from __future__ import annotations

import heapq
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SPECIAL_TEXTS = (b"<unk>", b"<s>", b"</s>", b"\n<s>\n", b"\n</s>\n")
_BYTE_TOKEN = re.compile(rb"^<0x([0-9A-Fa-f]{2})>$")


class TokenizerBinError(Exception):
    """A tokenizer.bin / tokenizer.json could not be read or converted."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-unicode map used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def _is_byte_level(tok: dict) -> bool:
    """True when the tokenizer.json uses the ByteLevel pre-tokenizer/decoder (vocab strings are byte-mapped)."""
    text = json.dumps([tok.get("pre_tokenizer"), tok.get("decoder")])
    return '"ByteLevel"' in text


def pieces_from_tokenizer_json(path: Path) -> tuple[list[bytes], list[float]]:
    """Token byte strings and llama2.c scores for every id of a HF BPE ``tokenizer.json``.

    WHY scores = -merge rank: llama2.c merges the adjacent pair whose concatenation has the highest score; with
    minus the rank that is exactly BPE's "lowest rank first" rule.
    """
    try:
        tok = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenizerBinError(f"{path}: cannot read tokenizer.json ({exc}); rebuild or re-fetch the model") from exc
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise TokenizerBinError(f"{path}: model.type={model.get('type')!r}; only BPE tokenizers can be exported")
    vocab: dict[str, int] = model["vocab"]
    merges = model.get("merges", [])
    rank: dict[str, int] = {}
    for i, m in enumerate(merges):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(a + b, i)
    byte_level = _is_byte_level(tok)
    unmap = {c: b for b, c in bytes_to_unicode().items()}
    added = {t["id"]: t for t in tok.get("added_tokens", [])}
    size = max([*vocab.values(), *added.keys()]) + 1
    pieces: list[bytes] = [b""] * size
    scores: list[float] = [0.0] * size
    for text, i in vocab.items():
        if byte_level:
            pieces[i] = bytes(unmap[c] for c in text)
        else:
            pieces[i] = text.replace("▁", " ").encode("utf-8")
        scores[i] = -float(rank[text]) if text in rank else 0.0
    for i, t in added.items():
        pieces[i] = t["content"].encode("utf-8")
        scores[i] = 0.0
    return pieces, scores


def write_tokenizer_bin(pieces: list[bytes], scores: list[float], path: Path) -> Path:
    """Write ``pieces``/``scores`` in llama2.c format (deterministic bytes for identical input)."""
    if len(pieces) != len(scores):
        raise TokenizerBinError(f"{path}: {len(pieces)} pieces but {len(scores)} scores")
    out = bytearray(struct.pack("<i", max((len(p) for p in pieces), default=0)))
    for p, s in zip(pieces, scores, strict=True):
        out += struct.pack("<fi", s, len(p)) + p
    Path(path).write_bytes(bytes(out))
    return Path(path)


def export_tokenizer_bin(tokenizer_json: Path, out: Path) -> Path:
    """Convert a HF ``tokenizer.json`` into ``tokenizer.bin``."""
    pieces, scores = pieces_from_tokenizer_json(tokenizer_json)
    return write_tokenizer_bin(pieces, scores, out)


@dataclass
class TokenizerBin:
    """A loaded llama2.c tokenizer: ``encode`` is simple_app's algorithm, ``decode`` its piece printing."""

    pieces: list[bytes]
    scores: list[float]
    max_token_length: int
    pretokenize: Callable[[str], list[bytes]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # bsearch in the app returns *a* match; the first id for duplicated strings is the stable choice here.
        self._lookup: dict[bytes, int] = {}
        for i, p in enumerate(self.pieces):
            self._lookup.setdefault(p, i)
        self.special_ids = frozenset(i for i, p in enumerate(self.pieces[:3]) if p in SPECIAL_TEXTS)

    @classmethod
    def load(cls, path: Path) -> TokenizerBin:
        """Read a tokenizer.bin to EOF (the vocab size is not stored in the file)."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise TokenizerBinError(f"{path}: cannot read tokenizer.bin ({exc})") from exc
        if len(data) < 4:
            raise TokenizerBinError(f"{path}: too short for a tokenizer.bin ({len(data)} bytes)")
        (max_len,) = struct.unpack_from("<i", data, 0)
        off, pieces, scores = 4, [], []
        while off < len(data):
            if off + 8 > len(data):
                raise TokenizerBinError(f"{path}: truncated entry header at byte {off} (token {len(pieces)})")
            score, n = struct.unpack_from("<fi", data, off)
            off += 8
            if n < 0 or off + n > len(data):
                raise TokenizerBinError(f"{path}: bad length {n} for token {len(pieces)} at byte {off - 8}")
            pieces.append(data[off : off + n])
            scores.append(score)
            off += n
        return cls(pieces, scores, max_len)

    @classmethod
    def from_tokenizer_json(cls, path: Path) -> TokenizerBin:
        """Build the same table in memory (what ``export_tokenizer_bin`` would write)."""
        pieces, scores = pieces_from_tokenizer_json(path)
        return cls(pieces, scores, max((len(p) for p in pieces), default=0))

    def __len__(self) -> int:
        return len(self.pieces)

    def piece_bytes(self, token: int) -> bytes:
        """Bytes simple_app's ``decode`` yields for one token (``<0xNN>`` becomes the raw byte)."""
        p = self.pieces[token]
        m = _BYTE_TOKEN.match(p)
        return bytes([int(m.group(1), 16)]) if m else p

    def encode(self, text: str | bytes) -> list[int]:
        """Tokenise like MobileQuant's ``encode``: no BOS, no dummy-prefix space, per-codepoint lookup with
        byte fallback (id = byte + 3), then repeatedly merge the leftmost best-scoring adjacent pair."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        if self.pretokenize is not None:
            try:
                chunks = self.pretokenize(data.decode("utf-8"))
            except UnicodeDecodeError:  # invalid UTF-8 cannot be pre-tokenised: the plain loop, as the app
                chunks = [data]
            return [t for chunk in chunks for t in self._merge(self._initial_ids(chunk))]
        return self._merge(self._initial_ids(data))

    def _initial_ids(self, data: bytes) -> list[int]:
        """Per-codepoint lookup, else per-byte fallback (own single-byte token if any, else byte + 3)."""
        ids: list[int] = []
        i = 0
        while i < len(data):
            j = i + 1
            while j < len(data) and j - i < 4 and (data[j] & 0xC0) == 0x80:
                j += 1
            cp = data[i:j]
            tid = self._lookup.get(cp)
            if tid is not None:
                ids.append(tid)
            else:
                for b in cp:
                    own = self._lookup.get(bytes([b]))
                    if own is None and b + 3 >= len(self.pieces):
                        raise TokenizerBinError(f"byte fallback for {cp!r} needs id {b + 3}, "
                                                f"vocab has {len(self.pieces)}")
                    ids.append(own if own is not None else b + 3)
            i = j
        return ids

    def _merge(self, ids: list[int]) -> list[int]:
        """llama2.c's merge loop — repeatedly merge the best-scoring adjacent pair, leftmost on ties — in
        O(n log n) with a heap over a linked list instead of O(n²) rescans. WHY: the reference app tokenises
        before its timer starts, like simple_app; at O(n²) a 768-token prompt cost ~80 ms in Python (the C++ app
        takes microseconds), which showed up as host-vs-app timing disagreement."""
        n = len(ids)
        tok, nxt, prv = list(ids), list(range(1, n + 1)), list(range(-1, n - 1))
        if n:
            nxt[-1] = -1
        alive = [True] * n
        heap: list[tuple[float, int, int, int, int]] = []

        def push(i: int) -> None:
            j = nxt[i]
            if j != -1:
                tid = self._lookup.get(self.pieces[tok[i]] + self.pieces[tok[j]])
                if tid is not None:  # node indices keep sequence order: smaller i = further left
                    heapq.heappush(heap, (-self.scores[tid], i, tok[i], tok[j], tid))

        for i in range(n - 1):
            push(i)
        while heap:
            _, i, a, b, tid = heapq.heappop(heap)
            j = nxt[i] if alive[i] else -1
            if j == -1 or tok[i] != a or tok[j] != b:
                continue  # stale: a neighbour was merged since this pair was queued
            tok[i], alive[j] = tid, False
            nxt[i] = nxt[j]
            if nxt[j] != -1:
                prv[nxt[j]] = i
            if prv[i] != -1:
                push(prv[i])
            push(i)
        return [t for t, ok in zip(tok, alive, strict=True) if ok]

    def decode_bytes(self, ids: list[int], skip_special: bool = True) -> bytes:
        """Concatenated piece bytes (specials <unk>/<s>/</s> skipped unless ``skip_special`` is False)."""
        return b"".join(self.piece_bytes(t) for t in ids if not (skip_special and t in self.special_ids))

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        """Text of ``ids`` (invalid UTF-8 replaced), comparable to HF ``decode(skip_special_tokens=True)``."""
        return self.decode_bytes(ids, skip_special).decode("utf-8", errors="replace")


def hf_pretokenizer(tokenizer_json: Path) -> Callable[[str], list[bytes]] | None:
    """The byte chunks HF's pre-tokenizer cuts ``text`` into, or None when it has none / does not split.

    Only byte-level pre-tokenizers qualify (their chunks map back to exact bytes)."""
    try:
        spec = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pre = spec.get("pre_tokenizer")
    if not pre or not _is_byte_level(spec):
        return None
    from tokenizers import Tokenizer

    pre_tok = Tokenizer.from_file(str(tokenizer_json)).pre_tokenizer
    unmap = {c: b for b, c in bytes_to_unicode().items()}

    def split(text: str) -> list[bytes]:
        return [bytes(unmap[c] for c in piece) for piece, _ in pre_tok.pre_tokenize_str(text)]

    return split


def load_for_model(model_dir: Path) -> TokenizerBin:
    """The app's tokenizer for a model dir: ``tokenizer.bin`` (else built from ``tokenizer.json``), with HF
    pre-tokenisation attached when the dir's ``tokenizer.json`` pre-tokenises with the Digits splitter (the
    GGUF-converted models; see the module docstring for why)."""
    model_dir = Path(model_dir)
    tj = model_dir / "tokenizer.json"
    tb = model_dir / "tokenizer.bin"
    codec = TokenizerBin.load(tb) if tb.is_file() else TokenizerBin.from_tokenizer_json(tj)
    if tj.is_file() and '"Digits"' in json.dumps(_pre_tokenizer_of(tj)):
        codec.pretokenize = hf_pretokenizer(tj)
    return codec


def _pre_tokenizer_of(tokenizer_json: Path) -> object:
    try:
        return json.loads(Path(tokenizer_json).read_text(encoding="utf-8")).get("pre_tokenizer")
    except (OSError, ValueError):
        return None
