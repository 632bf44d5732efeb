"""tokenizer.bin writer/reader: decode and llama2.c-style encode agree with the HF tokenizer."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from pipeline.models import tiny
from pipeline.models.tokenizer_bin import TokenizerBin, TokenizerBinError, write_tokenizer_bin


def _texts() -> list[str]:
    texts = []
    for e in tiny.load_examples("train") + tiny.load_examples("heldout"):
        texts += [e.prompt, e.answer, f"{tiny.USER}{e.prompt}", f"{tiny.ASSISTANT}{e.answer}"]
    corpus = (tiny.DATA_DIR / "corpus.txt").read_text().splitlines()
    return texts + corpus + ["Ünïcode ✓ 你好 🙂 tabs\tand  double  spaces"]


def test_reader_decodes_like_the_hf_tokenizer(tiny_model) -> None:
    d = tiny_model("tiny-fp")
    hf = Tokenizer.from_file(str(d / "tokenizer.json"))
    tb = TokenizerBin.load(d / "tokenizer.bin")
    assert len(tb) == hf.get_vocab_size() == 512
    for text in _texts():
        ids = hf.encode(text, add_special_tokens=False).ids
        assert tb.decode(ids) == hf.decode(ids) == text
        assert tb.decode([1, *ids, 2]) == text  # specials skipped like skip_special_tokens=True


def test_reader_encodes_like_the_hf_tokenizer(tiny_model) -> None:
    d = tiny_model("tiny-fp")
    hf = Tokenizer.from_file(str(d / "tokenizer.json"))
    tb = TokenizerBin.load(d / "tokenizer.bin")
    for text in _texts():
        assert tb.encode(text) == hf.encode(text, add_special_tokens=False).ids, text


def test_specials_are_written_as_mobilequant_does(tiny_model) -> None:
    tb = TokenizerBin.load(tiny_model("tiny-fp") / "tokenizer.bin")
    assert tb.pieces[:3] == [b"<unk>", b"<s>", b"</s>"] and tb.scores[:3] == [0.0, 0.0, 0.0]
    assert [tb.pieces[3 + b] for b in (0x0A, 0x41)] == [b"\n", b"A"]  # byte fallback id = byte + 3


def test_write_read_roundtrip_and_truncation(tmp_path: Path) -> None:
    pieces, scores = [b"<unk>", b"<s>", b"</s>", b"<0x0A>", b" a", b"b"], [0.0, 0.0, 0.0, 0.0, -1.0, -2.0]
    p = write_tokenizer_bin(pieces, scores, tmp_path / "t.bin")
    tb = TokenizerBin.load(p)
    assert (tb.pieces, tb.scores, tb.max_token_length) == (pieces, scores, 6)
    assert tb.decode_bytes([3, 4, 5, 2]) == b"\n ab"  # <0xNN> literal pieces decode to the raw byte
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(TokenizerBinError, match="t.bin"):
        TokenizerBin.load(p)


def test_sentencepiece_style_json_maps_space_marker(tmp_path: Path) -> None:
    tok = {"model": {"type": "BPE", "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x0A>": 3, "▁": 4, "h": 5, "i": 6,
                                                "▁h": 7, "▁hi": 8}, "merges": ["▁ h", "▁h i"]},
           "added_tokens": [{"id": 0, "content": "<unk>"}, {"id": 1, "content": "<s>"}, {"id": 2, "content": "</s>"}],
           "pre_tokenizer": None, "decoder": {"type": "Sequence"}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok))
    tb = TokenizerBin.from_tokenizer_json(tmp_path / "tokenizer.json")
    assert tb.pieces[8] == b" hi" and tb.scores[7:9] == [0.0, -1.0]
    assert tb.encode(" hi") == [8]
    with pytest.raises(TokenizerBinError, match="byte fallback"):
        tb.encode("\n")
    assert struct.calcsize("<fi") == 8


def _naive_merge(tb: TokenizerBin, ids: list[int]) -> list[int]:
    """llama2.c's loop as written: rescan all pairs, merge the best score, leftmost on ties (the oracle)."""
    ids = list(ids)
    while len(ids) > 1:
        best, best_id, best_idx = -1e10, -1, -1
        for k in range(len(ids) - 1):
            tid = tb._lookup.get(tb.pieces[ids[k]] + tb.pieces[ids[k + 1]])
            if tid is not None and tb.scores[tid] > best:
                best, best_id, best_idx = tb.scores[tid], tid, k
        if best_idx < 0:
            break
        ids[best_idx : best_idx + 2] = [best_id]
    return ids


def test_fast_merge_equals_llama2c_loop(tiny_model) -> None:
    import random

    tb = TokenizerBin.load(tiny_model("tiny-fp") / "tokenizer.bin")
    rng = random.Random(7)
    words = ["the", "capital", "of", "France", "is", "Paris", "tell", "me", "a", "joke", "aaaa", "ababab", "🤖",
             "中文", "x", " ", "\n", "<|user|>", "</s>", "\xff", "ééé"]
    for _ in range(200):
        text = "".join(rng.choice(words) + rng.choice(["", " ", "  "]) for _ in range(rng.randint(0, 40)))
        chars = [tb._lookup.get(ch.encode()) for ch in text]
        if None in chars:  # byte fallback path: compare through the public encode on both sides
            start = list(text.encode())
            start = [b + 3 for b in start]
        else:
            start = chars
        assert tb._merge(start) == _naive_merge(tb, start), text
