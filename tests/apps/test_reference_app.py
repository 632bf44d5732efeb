"""Reference app: simple_app's REPL protocol, template ids, KV carry-over, faults (real subprocesses)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from pipeline.guest import reference_app as ra
from pipeline.guest.engine import resolve_model_dir
from pipeline.models import tiny
from pipeline.models.tokenizer_bin import TokenizerBin
from pipeline.prompt_model.prompt_format import PromptFormat

REPO = Path(__file__).resolve().parents[2]
TOK_S = re.compile(rb"\((\d+\.\d+) tok/s\)\n")


def _run(model_dir: Path, stdin: bytes, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.guest.reference_app", str(model_dir), *args], input=stdin,
                          capture_output=True, cwd=REPO, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})


def test_joke_then_exit_matches_the_seed_transcript_shape(tiny_model) -> None:
    r = _run(tiny_model("tiny-fp"), b"tell me a joke.\n!exit\n", "8gen3")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith(b"Hello, how can I help you today?\n>>> ")
    answer = out[len(ra.BANNER):]
    assert re.fullmatch(rb"(.+)</s>\(\d+\.\d+ tok/s\)\n>>> ", answer, re.S), answer
    assert b"joke" in answer  # tiny-fp learned the smoke answer


def test_repl_commands_empty_lines_and_eof(tiny_model) -> None:
    d = tiny_model("tiny-fp")
    r = _run(d, b"\n!log 2\n\n!reload\n!bogus\n-n 5\nWhat is 2 plus 2?\n", "8gen2", "--max-steps", "5")
    assert r.returncode == 0, r.stderr  # stdin EOF exits (simple_app would spin)
    out = r.stdout
    # empty line before any prompt re-prints the full banner; afterwards only ">>> "
    assert out.startswith((ra.BANNER * 2).encode() + b">>> >>> Old context released\nLoading models from ")
    assert b"  number of steps = 5\n" in out and b"Models loaded and ready\n>>> >>> >>> " in out
    assert b"Unknown command: !bogus" in r.stderr
    tail = out.rsplit(b"Models loaded and ready\n>>> >>> >>> ", 1)[1]
    # 5 steps < prompt length: the cap stops before any answer token, then the tok/s line (no </s>)
    assert TOK_S.fullmatch(tail[: -len(b">>> ")]) and tail.endswith(b">>> ")


def test_crash_and_invalid_utf8_faults(tiny_model) -> None:
    r = _run(tiny_model("tiny-fp"), b"tell me a joke.\n!exit\n", ODEVAL_FAULT_CRASH_AFTER_TOKENS="3",
             ODEVAL_FAULT_INVALID_UTF8="1")
    assert r.returncode != 0
    answer = r.stdout[len(ra.BANNER):]
    assert b"\xff\xfe" in answer and b"tok/s" not in answer and b"</s>" not in answer
    with pytest.raises(UnicodeDecodeError):
        answer.decode("utf-8")


def test_hang_fault_stops_mid_answer(tiny_model) -> None:
    p = subprocess.Popen([sys.executable, "-m", "pipeline.guest.reference_app", str(tiny_model("tiny-fp"))],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO), "ODEVAL_FAULT_HANG": "1"})
    got = bytearray()
    done = threading.Event()

    def reader() -> None:
        while chunk := p.stdout.read1(4096):
            got.extend(chunk)
            if len(got) > len(ra.BANNER):
                done.set()
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    try:
        p.stdin.write(b"tell me a joke.\n!exit\n")
        p.stdin.flush()
        assert done.wait(120)
        with pytest.raises(subprocess.TimeoutExpired):
            p.wait(timeout=2)
        assert b"tok/s" not in got and len(got) > len(ra.BANNER)
    finally:
        p.kill()
        p.wait()


def _fake_llama2_codec() -> TokenizerBin:
    pieces = [f"t{i}".encode() for i in range(32000)]
    pieces[:3] = [b"<unk>", b"<s>", b"</s>"]
    for b in range(256):
        pieces[3 + b] = f"<0x{b:02X}>".encode()
    pieces[1792], pieces[22137], pieces[465] = b"user", b"istant", b"ass"
    return TokenizerBin(pieces, [0.0] * 32000, 8)


def test_mobilequant_ids_are_design_prefix_prompt_suffix_without_bos(tiny_model) -> None:
    llama = _fake_llama2_codec()
    ids = PromptFormat("mobilequant", llama).ids("hi")
    assert ids[:6] == [29966, 29989, 1792, 29989, 29958, 13]
    assert ids[-9:] == [2, 13, 29966, 29989, 465, 22137, 29989, 29958, 13]
    assert ids[6:-9] == llama.encode("hi") and 1 not in ids
    d = tiny_model("tiny-fp")
    codec = TokenizerBin.load(d / "tokenizer.bin")
    hf = Tokenizer.from_file(str(d / "tokenizer.json"))
    prompt = "tell me a joke."
    got = PromptFormat("mobilequant", codec).ids(prompt)
    enc = lambda s: hf.encode(s, add_special_tokens=False).ids  # noqa: E731
    assert got == enc("<|user|>\n") + enc(prompt) + enc("</s>\n<|assistant|>\n")
    assert got[0] != 1 and got == tiny.chat_ids(hf, prompt, bos=False)
    assert PromptFormat("raw", codec).ids(prompt) == [1, *enc(prompt)]


def test_hf_chat_template_is_the_mobilequant_one_with_bos(tiny_model) -> None:
    eng = ra.load_engine(tiny_model("tiny-fp"), threads=1)
    prompt = "What is the capital of Japan?"
    assert eng.prompt_format("hf-chat").ids(prompt) == [1, *eng.prompt_format("mobilequant").ids(prompt)]


def test_second_prompt_continues_the_kv_position(tiny_model) -> None:
    eng = ra.load_engine(tiny_model("tiny-fp"), threads=1)
    ids1 = eng.prompt_format("mobilequant").ids("What is the capital of France?")
    r1 = ra.generate(eng, ids1, io.BytesIO())
    assert r1.output_ids[-1] == 2 and eng.pos == len(ids1) + len(r1.output_ids) - 2  # EOS is never forwarded
    pos1 = eng.pos
    ids2 = eng.prompt_format("mobilequant").ids("What is 2 plus 2?")
    buf = io.BytesIO()
    r2 = ra.generate(eng, ids2, buf)
    assert eng.pos == pos1 + len(ids2) + len(r2.output_ids) - 1
    assert eng.cache.get_seq_length() == eng.pos + 1
    assert r1.steps == len(ids1) + len(r1.output_ids) - 2  # current_step semantics of llm.cpp
    assert TOK_S.search(buf.getvalue())
    eng.reset()
    fresh = ra.generate(eng, ids2, io.BytesIO())
    assert eng.pos == len(ids2) + len(fresh.output_ids) - 2


def test_qnn_dir_needs_a_standin(tmp_path: Path, tiny_model) -> None:
    (tmp_path / "qnn_model.bin").write_bytes(b"\0")
    with pytest.raises(ra.ReferenceAppError, match="standin_model"):
        resolve_model_dir(tmp_path, env={})
    d = tiny_model("tiny-fp")
    assert resolve_model_dir(tmp_path, env={"ODEVAL_STANDIN_MODEL": str(d)}) == d
    r = _run(tmp_path, b"hi\n!exit\n", ODEVAL_STANDIN_MODEL="")
    assert r.returncode == 1 and b"standin_model" in r.stderr and r.stdout == b""


def test_safe_piece_drops_lone_control_bytes() -> None:
    assert ra.safe_piece(b"\x07") == b"" and ra.safe_piece(b"\xe4") == b"" and ra.safe_piece(b"\n") == b"\n"
    assert ra.safe_piece(b"ab") == b"ab"
