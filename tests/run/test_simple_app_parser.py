"""Pure parser tests on crafted byte streams, plus the `parse` CLI on a saved transcript."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest

from pipeline.apps.simple_app import app_command, check_prompt_line
from pipeline.apps.simple_app_output import (
    Chunk,
    Done,
    OutputParser,
    Ready,
    SimpleAppError,
    Stray,
    answer_timing,
    decode_counting,
    parse_answer,
    parse_transcript,
)

JOKE = "Why don't scientists trust atoms? Because they make up everything!"
SEED = (b"Hello, how can I help you today?\n>>> tell me a joke.\n"
        + JOKE.encode() + b"</s>(19.784995 tok/s)\n>>> ")


def feed_all(parser: OutputParser, data: bytes, step: int, t0: float = 0.0) -> list:
    events = []
    for i in range(0, len(data), step):
        events += parser.feed(data[i:i + step], t0 + i)
    return events


def test_seed_transcript():
    [r] = parse_transcript(SEED)
    assert (r.prompt, r.response, r.eos, r.app_tok_s, r.complete) == ("tell me a joke.", JOKE, True, 19.784995, True)


def test_transcript_several_prompts_empty_line_commands_and_crlf():
    data = (b"Hello, how can I help you today?\r\n>>> \r\n>>> first q\r\nA one.</s>(10.5 tok/s)\r\n"
            b">>> !log 2\r\n>>> second q\r\nline1\r\nline2</s>(inf tok/s)\r\n>>> !exit\r\n")
    rs = parse_transcript(data)
    assert [(r.prompt, r.response, r.eos) for r in rs] == [("first q", "A one.", True),
                                                          ("second q", "line1\nline2", True)]
    assert rs[0].app_tok_s == 10.5 and rs[1].app_tok_s == float("inf")


def test_exit_as_text_inside_a_sentence_is_a_prompt():
    data = (b"Hello, how can I help you today?\n>>> please never type !exit in a chat\n"
            b"I will not type !exit.</s>(3.000000 tok/s)\n>>> !exit\n")
    [r] = parse_transcript(data)
    assert r.prompt == "please never type !exit in a chat" and r.response == "I will not type !exit."
    check_prompt_line("please never type !exit in a chat")
    for bad in ("!exit", "-n 5", "", "two\nlines", "nul\x00"):
        with pytest.raises(SimpleAppError):
            check_prompt_line(bad)


def test_missing_toks_line_is_incomplete():
    data = b"Hello, how can I help you today?\n>>> tell me a joke.\nWhy did the"
    [r] = parse_transcript(data)
    assert (r.response, r.eos, r.app_tok_s, r.complete) == ("Why did the", False, None, False)
    ans = parse_answer(b"Half an answer </s")
    assert not ans.complete and not ans.eos and ans.app_tok_s is None and ans.response == "Half an answer </s"


def test_llama2c_style_stop_piece_and_no_eos_at_step_cap():
    ans = parse_answer(b"Paris.\n</s>\n(12.000000 tok/s)\n>>> ")
    assert (ans.response, ans.eos, ans.app_tok_s, ans.prompt_seen) == ("Paris.", True, 12.0, True)
    capped = parse_answer(b"blah blah(7.250000 tok/s)\n>>> ")
    assert (capped.response, capped.eos, capped.app_tok_s) == ("blah blah", False, 7.25)


def test_invalid_utf8_kept_raw_and_counted():
    raw = b"ok \xff\xfe caf\xc3\xa9 \xef\xbf\xbd</s>(1.000000 tok/s)\n>>> "  # last: a literal U+FFFD in the text
    ans = parse_answer(raw)
    assert ans.raw == raw
    assert ans.response == "ok \ufffd\ufffd caf\u00e9 \ufffd"
    assert ans.replaced_chars == 2


def test_partial_utf8_at_a_cut_is_dropped_not_counted():
    text, replaced = decode_counting("né".encode()[:-1], final=False)
    assert (text, replaced) == ("n", 0)
    ans = parse_answer("ça va".encode() + "é".encode()[:1])
    assert ans.response == "ça va" and ans.replaced_chars == 0 and not ans.complete


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_incremental_parser_any_chunking(step):
    p = OutputParser()
    events = feed_all(p, b"odeval-pid:4242\nHello, how can I help you today?\n>>> ", step)
    ready = [e for e in events if isinstance(e, Ready)]
    assert len(ready) == 1 and ready[0].pid == 4242 and ready[0].model_type == "llama"
    assert ready[0].banner == "Hello, how can I help you today?"
    p.begin_answer()
    events = feed_all(p, JOKE.encode() + b"</s>(19.784995 tok/s)\n>>> ", step, t0=100)
    done = [e for e in events if isinstance(e, Done)]
    assert len(done) == 1 and events[-1] is done[0]
    assert done[0].answer.response == JOKE and done[0].answer.app_tok_s == 19.784995
    assert sum(e.nbytes for e in events if isinstance(e, Chunk)) == len(done[0].answer.raw)
    assert p.state == "idle"
    assert isinstance(p.feed(b">>> ", 500)[0], Stray)


def test_gemma_banner_and_no_pid_line():
    p = OutputParser()
    [ready] = p.feed(b"Please enter the prompt\n>>> ", 1.0)
    assert ready.model_type == "gemma" and ready.pid is None


def test_answer_not_done_until_prompt_after_toks_line():
    p = OutputParser()
    p.feed(b"Hello, how can I help you today?\n>>> ", 0)
    p.begin_answer()
    assert not [e for e in p.feed(b"x</s>(2.0 tok/s)\n", 1) if isinstance(e, Done)]
    assert [e for e in p.feed(b">>> ", 2) if isinstance(e, Done)]
    with pytest.raises(SimpleAppError):
        OutputParser().begin_answer()


def test_answer_timing_from_chunks():
    raw = b"a b c d</s>(9.0 tok/s)\n>>> "
    chunks = [Chunk(10.5, 1), Chunk(11.0, 2), Chunk(11.5, 2), Chunk(11.75, 2), Chunk(12.0, 4),
              Chunk(12.1, len(raw) - 11)]
    ans = parse_answer(raw)
    t = answer_timing(chunks, ans, t_send=10.0, n_output_tokens=4)
    assert t["t_first_byte"] == 10.5 and t["ttft_s"] == pytest.approx(0.5)
    assert t["t_last_byte"] == 12.0 and t["e2e_s"] == pytest.approx(2.0)  # the `</s>` chunk, not the tok/s line
    assert t["decode_tok_s"] == pytest.approx((4 - 1) / (11.75 - 10.5))
    assert answer_timing([], parse_answer(b""), 1.0, 0)["decode_tok_s"] is None


def test_decode_rate_is_null_below_timing_resolution():
    """Few tokens, or tokens that arrived microseconds apart, time the transport — not the decoder."""
    raw = b"a b c d</s>(9.0 tok/s)\n>>> "
    ans = parse_answer(raw)
    three = [Chunk(10.5, 2), Chunk(11.0, 2), Chunk(11.5, 2), Chunk(12.0, len(raw) - 6)]
    assert answer_timing(three, ans, t_send=10.0, n_output_tokens=3)["decode_tok_s"] is None
    burst = [Chunk(10.5, 2), Chunk(10.50001, 2), Chunk(10.50002, 3), Chunk(10.50003, len(raw) - 7)]
    assert answer_timing(burst, ans, t_send=10.0, n_output_tokens=4)["decode_tok_s"] is None


def test_app_command_quotes_everything():
    cmd = app_command("/data/local/tmp/odeval/apps/x y", "/m/it's $(reboot)", "8gen3",
                      {"LD_LIBRARY_PATH": "/a b", "ADSP_LIBRARY_PATH": "`id`"})
    assert cmd == ("cd '/data/local/tmp/odeval/apps/x y' && export LD_LIBRARY_PATH='/a b' ADSP_LIBRARY_PATH='`id`'"
                   " && echo odeval-pid:$$ && exec ./simple_app '/m/it'\"'\"'s $(reboot)' 8gen3")
    assert app_command("/a", "/m", None, {}) == "cd /a && echo odeval-pid:$$ && exec ./simple_app /m"
    for bad_key, binary in (("A B", "simple_app"), ("OK", "../x")):
        with pytest.raises(SimpleAppError):
            app_command("/a", "/m", None, {bad_key: "1"}, binary=binary)


def test_parse_cli_on_saved_transcript(tmp_path):
    f = tmp_path / "seed.txt"
    second = "bonjour\n你好</s>(5.5 tok/s)\n>>> ".encode()
    f.write_bytes(SEED.replace(b">>> tell", b">>> \n>>> tell") + second)
    res = subprocess.run([sys.executable, "-m", "pipeline.apps.simple_app", "parse", str(f)],
                         capture_output=True, check=True)
    rows = [json.loads(x) for x in res.stdout.decode().splitlines()]
    assert rows == [
        {"prompt": "tell me a joke.", "response": JOKE, "eos": True, "app_tok_s": 19.784995},
        {"prompt": "bonjour", "response": "你好", "eos": True, "app_tok_s": 5.5},
    ]
    bad = subprocess.run([sys.executable, "-m", "pipeline.apps.simple_app", "parse", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "nope" in bad.stderr


def test_raw_is_exact_bytes_b64_roundtrip():
    raw = b"\x00\x01 weird \xff</s>(1.0 tok/s)\n>>> "
    assert base64.b64decode(base64.b64encode(parse_answer(raw).raw)) == raw
