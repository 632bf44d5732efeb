"""simple_app's prompt buffer (capp/src/llm.cpp encode + LLM::generate's read at num_prompt_tokens).

The small cases are worked by hand from llm.cpp's loop (written out step by step in each docstring); the qa-set
check compares the module with a literal, C-shaped transcription of llm.cpp kept in this file (fixed-size array,
``memcpy``-style shifting, a sentinel for never-written ints), on SmolLM2's real tokenizer.bin.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from pipeline.guest import reference_app as ra
from pipeline.models.tokenizer_bin import TokenizerBin
from pipeline.prompt_model.prompt_buffer import (
    build_buffer,
    format_setting,
    merge_in_place,
    parse_setting,
    past_end,
    past_end_for,
)
from pipeline.prompt_model.prompt_format import load_format, mobilequant_markers

REPO = Path(__file__).resolve().parents[2]
# id: 0 <unk>, 1 <s>, 2 </s>, 3 a, 4 b, 5 ".", 6 ab (-1), 7 abab (-2), 8 P, 9 S, 10 "b." (-0.5)
PIECES = [b"<unk>", b"<s>", b"</s>", b"a", b"b", b".", b"ab", b"abab", b"P", b"S", b"b."]
SCORES = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -2.0, 0.0, 0.0, -0.5]


def codec(with_b_dot: bool = False) -> TokenizerBin:
    pieces = PIECES if with_b_dot else PIECES[:10]
    return TokenizerBin(list(pieces), SCORES[: len(pieces)], 5)


def test_three_merges_leave_the_last_character_in_the_slot_read_past_the_prompt() -> None:
    """prefix [P], "abab.", suffix [S]:  [P a b a b .]  n=6
    merge (a,b)@1 → [P ab a b . .] n=5;  (a,b)@2 → [P ab ab . . .] n=4;  (ab,ab)@1 → [P abab . . . .] n=3;
    suffix → [P abab . S . .] n=4; read slot 4 = "." (written: 3 merges > 1 suffix id)."""
    buf = build_buffer([8], "abab.", [9], codec())
    assert buf.slots[:6] == (8, 7, 5, 9, 5, 5) and buf.num_prompt_tokens == 4 and buf.merges == 3
    assert buf.prompt_ids == [8, 7, 5, 9] and buf.past_end == 5
    assert len(buf.slots) == len("abab.") + 20 and set(buf.slots[6:]) == {None}
    assert past_end_for("faithful", [8], "abab.", [9], codec()) .to_row() == {"case": "stale", "id_fed": 5,
                                                                              "index": 4}


def test_too_few_merges_read_a_slot_never_written() -> None:
    """prefix [P], "ab.", suffix [S S]: [P a b .] → (a,b)@1 → [P ab . .] n=3; suffix → [P ab . S S] n=5; slot 5
    was never written (1 merge ≤ 2 suffix ids): the configured fallback id is fed."""
    buf = build_buffer([8], "ab.", [9, 9], codec())
    assert buf.slots[:6] == (8, 6, 5, 9, 9, None) and buf.past_end is None and buf.merges == 1
    pe = past_end_for("faithful", [8], "ab.", [9, 9], codec(), unwritten_id=77)
    assert (pe.case, pe.id_fed, pe.index) == ("unwritten", 77, 5)


def test_the_stale_copy_survives_its_own_merge() -> None:
    """"ab." with "b." scoring above "ab": [a b .] → (b,.)@1 → [a b. .] n=2 (the shift loop is empty, slot 2 keeps
    the "." that was merged away); no further pair; the read at slot 2 sees "."."""
    buf = build_buffer([], "ab.", [], codec(with_b_dot=True))
    assert buf.slots[:3] == (3, 10, 5) and buf.num_prompt_tokens == 2 and buf.past_end == 5


def test_the_stale_slot_can_hold_a_merged_token() -> None:
    """"abab": [a b a b] → (a,b)@0 → [ab a b b] n=3 → (a,b)@1 → [ab ab b b] n=2 → (ab,ab)@0 → [abab ab b b] n=1;
    the read at slot 1 sees "ab" — not a character of the prompt."""
    buf = build_buffer([], "abab", [], codec())
    assert buf.slots[:4] == (7, 6, 4, 4) and buf.past_end == 6


def test_merge_ties_go_to_the_leftmost_pair_and_live_ids_match_the_codec() -> None:
    buf: list[int | None] = [3, 4, 3, 4]
    assert merge_in_place(buf, 4, codec()) == 1 and buf == [7, 6, 4, 4]
    for text in ("abab.", "ab.", "a.b.ab", "....", "babab"):
        assert build_buffer([], text, [], codec()).prompt_ids == codec().encode(text)


def test_settings() -> None:
    c = codec()
    assert past_end_for(None, [8], "ab.", [9], c).to_row() == {"case": "none", "id_fed": None, "index": None}
    assert past_end_for(4, [8], "ab.", [9], c).id_fed == 4
    assert parse_setting("") == (None, 0) and parse_setting(" faithful ") == ("faithful", 0)
    assert parse_setting("-3") == (-3, 0) and parse_setting("faithful:13") == ("faithful", 13)
    assert [parse_setting(format_setting(s, 13)) for s in (None, 5, "faithful")] == [(None, 0), (5, 0),
                                                                                    ("faithful", 13)]
    for bad in ("fast", "1.5", "/etc/passwd", "faithful:x", "3:4"):
        with pytest.raises(ValueError):
            parse_setting(bad)
    with pytest.raises(ValueError):
        past_end_for("faithfull", [], "a", [], c)


def test_the_setting_reaches_the_app_through_the_device_allowlist_only_as_an_id_or_faithful() -> None:
    from pipeline.apps.launch import app_env
    from pipeline.virtual.app_launch import DEVICE_KNOBS

    knob = DEVICE_KNOBS["ODEVAL_QUIRK_PAST_END_TOKEN"]
    env = app_env({}, "/d", virtual_only=True, template="mobilequant", past_end_token="faithful",
                  past_end_unwritten_id=13)
    assert env["ODEVAL_QUIRK_PAST_END_TOKEN"] == "faithful:13" and knob.fullmatch("faithful:13")
    assert "ODEVAL_QUIRK_PAST_END_TOKEN" not in app_env({}, "/d", virtual_only=True, template="raw",
                                                        past_end_token=None)
    assert knob.fullmatch("-7") and not any(knob.fullmatch(v) for v in ("faithful:/etc", "faithful", "x", "1;ls"))


def llm_cpp_encode(c: TokenizerBin, text: bytes, prefix: list[int], suffix: list[int]) -> tuple[list[int], int]:
    """Literal transcription of llm.cpp ``encode`` into a malloc'd array (sentinel -999 = never written)."""
    tokens = [-999] * (len(text) + 20)
    n = 0
    for t in prefix:
        tokens[n] = t
        n += 1
    for t in c._initial_ids(text):  # per-codepoint str_lookup + byte fallback
        tokens[n] = t
        n += 1
    while True:
        best_score, best_id, best_idx = -1e10, -1, -1
        for i in range(n - 1):
            tid = c._lookup.get(c.pieces[tokens[i]] + c.pieces[tokens[i + 1]], -1)
            if tid != -1 and c.scores[tid] > best_score:
                best_score, best_id, best_idx = c.scores[tid], tid, i
        if best_idx == -1:
            break
        tokens[best_idx] = best_id
        for i in range(best_idx + 1, n - 1):
            tokens[i] = tokens[i + 1]
        n -= 1
    for t in suffix:
        tokens[n] = t
        n += 1
    return tokens, n


def test_qa_prompts_on_smollm2_match_the_llm_cpp_transcription(smollm2) -> None:
    fmt = load_format("mobilequant", smollm2("gguf"))
    prefix, suffix = mobilequant_markers(fmt.codec)
    rows = [json.loads(x) for x in (REPO / "prompts/qa.jsonl").read_text().splitlines() if x.strip()]
    cases = set()
    for r in rows:
        tokens, n = llm_cpp_encode(fmt.codec, r["prompt"].encode(), prefix, suffix)
        pe = past_end(fmt, "faithful", r["prompt"], unwritten_id=123)
        expected = tokens[n] if n < len(tokens) and tokens[n] != -999 else 123
        assert (pe.id_fed, pe.index) == (expected, n), r["id"]
        assert tokens[:n] == fmt.ids(r["prompt"]), r["id"]  # live ids = what the app feeds as the prompt
        cases.add(pe.case)
    assert cases == {"stale", "unwritten"}  # both cases occur in the qa set
    joke = past_end(fmt, "faithful", "tell me a joke.", unwritten_id=123)
    assert (joke.case, joke.id_fed) == ("unwritten", 123)  # 10 merges < 11 suffix ids with SmolLM2's vocabulary


def test_reference_app_feeds_the_buffer_slot_after_the_prompt(tiny_model) -> None:
    """The app's last forced input is the modelled slot (faithful), the forced id, or nothing (null)."""
    engine = ra.load_engine(tiny_model("tiny-fp"))
    fmt = engine.prompt_format("mobilequant")
    fed: list[int] = []
    real_forward = engine.forward

    def spy(token: int):
        fed.append(token)
        return real_forward(token)

    real_batch = engine.forward_batch

    def spy_batch(tokens: list[int]):  # the native engine's batched prefill feeds the same tokens in one pass
        fed.extend(tokens)
        return real_batch(tokens)

    engine.forward = spy  # type: ignore[method-assign]
    engine.forward_batch = spy_batch  # type: ignore[method-assign]
    for line in ("tell me a joke.", "What is the capital of France?"):
        for setting, unwritten in (("faithful", 5), (7, 0), (None, 0)):
            fed.clear()
            engine.reset()
            out = io.BytesIO()
            ra.repl(engine, "m", "mobilequant", 60, io.BytesIO(line.encode() + b"\n!exit\n"), out,
                    past_end_token=setting, unwritten_id=unwritten)
            ids = fmt.ids(line)
            assert fed[: len(ids)] == ids
            pe = past_end(fmt, setting, line, unwritten)
            answer = out.getvalue()[len(ra.BANNER):]
            if pe.id_fed is None:  # the fixed app: the input after the prompt is the first printed answer token
                assert answer.startswith(ra.safe_piece(engine.piece(fed[len(ids)])))
            else:
                assert fed[len(ids)] == pe.id_fed, (line, setting, pe)
                if len(fed) > len(ids) + 1:  # else the first answer token was a stop id
                    assert answer.startswith(ra.safe_piece(engine.piece(fed[len(ids) + 1])))
        assert past_end(fmt, "faithful", line, 5).case in ("stale", "unwritten")
