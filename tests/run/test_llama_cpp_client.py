"""The llama.cpp client (pipeline/apps/llama_cpp.py) against a stand-in REPL: endings, counters, failures."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from pipeline.apps.channel import SubprocessChannel
from pipeline.apps.llama_cpp import (
    RAW_TEMPLATE,
    LlamaCliSession,
    check_llama_line,
    gguf_file,
    llama_command,
    parse_counters,
)
from pipeline.apps.simple_app import AppExited
from pipeline.apps.simple_app_output import SimpleAppError

STUB = Path(__file__).with_name("llama_stub.py")
REAL_STDERR = Path(__file__).with_name("data") / "llama_completion_stderr.txt"


def session(*args: str, load_timeout_s: float = 20) -> LlamaCliSession:
    cmd = f"echo odeval-pid:$$ && exec {shlex.quote(sys.executable)} {shlex.quote(str(STUB))} " + " ".join(args)
    return LlamaCliSession(SubprocessChannel(["/bin/sh", "-c", cmd]), load_timeout_s=load_timeout_s)


def ask(s: LlamaCliSession, max_new_tokens: int = 6, timeout_s: float = 20) -> dict:
    s.wait_ready()
    return s.ask("hello there", timeout_s=timeout_s, max_new_tokens=max_new_tokens,
                 count_tokens=lambda t: len(t.split()), max_output_bytes=65536)


def test_an_answer_that_stops_by_itself_is_eos_with_the_apps_counters():
    s = session("--end", "eos", "--tokens", "6")
    r = ask(s, max_new_tokens=20)
    assert s.pid is not None and s.exited and not s.ready
    assert r["response"] == " tok0 tok1 tok2 tok3 tok4 tok5" and r["eos"] and not r["truncated"]
    assert r["app_counters"] == {"load_ms": 120.5, "prompt_eval_tokens": 9, "prompt_eval_ms": 50.0,
                                 "eval_tokens": 6, "eval_ms": 75.0}
    assert r["exit_code"] == 0 and not r["crashed"] and r["error"] is None and r["app_tok_s"] is None
    assert r["ttft_s"] > 0 and r["decode_tok_s"] is not None and r["t_last_byte"] >= r["t_first_byte"]


def test_an_answer_cut_by_the_budget_is_truncated_not_eos():
    r = ask(session("--end", "limit", "--tokens", "6"), max_new_tokens=6)
    assert r["response"] == " tok0 tok1 tok2 tok3 tok4 tok5" and not r["eos"] and r["truncated"]
    assert r["app_counters"]["eval_tokens"] == 5  # the last sampled token is never decoded


def test_a_crash_mid_answer_is_a_crashed_row_with_the_exit_code_and_stderr():
    r = ask(session("--end", "crash"), max_new_tokens=20)
    assert r["crashed"] and not r["eos"] and r["exit_code"] == 139 and "Segmentation fault" in r["error"]
    assert r["response"] == " tok0 tok1 tok2" and r["app_counters"] is None


def test_a_hang_is_timed_out():
    s = session("--end", "hang")
    r = ask(s, max_new_tokens=20, timeout_s=1.5)
    s.channel.close()
    assert r["timed_out"] and not r["crashed"] and "prompt_timeout_s=1.5" in r["error"]


def test_a_model_that_does_not_load_says_why():
    with pytest.raises(AppExited, match="failed to open GGUF file") as e:
        session("--end", "noload").wait_ready()
    assert e.value.exit_code == 1


def test_counters_parse_llama_cpps_own_output():
    counters = parse_counters(REAL_STDERR.read_bytes())  # captured from the pinned build (SmolLM2 Q4_1, 1 thread)
    assert counters == {"load_ms": 98.65, "prompt_eval_tokens": 33, "prompt_eval_ms": 194.75, "eval_tokens": 62,
                        "eval_ms": 794.38}
    assert parse_counters(b"llama_completion: error: unable to create context\n") is None


def test_the_command_line_quotes_everything_and_keeps_the_prompt_out():
    cmd = llama_command("/data/local/tmp/odeval/apps/llama-cpp@x", "/data/m dir/model.gguf", "llama-completion",
                        {"LD_LIBRARY_PATH": "/data/local/tmp/odeval/apps/llama-cpp@x"}, template="raw",
                        n_predict=100, n_ctx=1024, threads=2)
    argv = shlex.split(cmd.split(" && exec ", 1)[1])
    assert argv[:3] == ["./llama-completion", "-m", "/data/m dir/model.gguf"]
    assert argv[argv.index("--chat-template") + 1] == RAW_TEMPLATE and argv[argv.index("-n") + 1] == "100"
    assert "-cnv" in argv and "--no-escape" in argv and argv[argv.index("-t") + 1] == "2"
    with pytest.raises(SimpleAppError, match="mobilequant"):
        llama_command("/a", "/m.gguf", "llama-completion", {}, template="mobilequant", n_predict=1, n_ctx=8,
                      threads=None)


@pytest.mark.parametrize("line", ["go on \\", "a/b/", "!exit", "two\nlines", ""])
def test_lines_llama_completion_would_not_read_as_one_prompt_are_refused(line):
    with pytest.raises(SimpleAppError):
        check_llama_line(line)


def test_the_model_dir_must_hold_one_gguf():
    assert gguf_file("/d/m", [{"path": "model.gguf"}, {"path": "tokenizer.json"}], "m") == "/d/m/model.gguf"
    for files in ([{"path": "config.json"}], [{"path": "a.gguf"}, {"path": "b.gguf"}]):
        with pytest.raises(SimpleAppError, match="exactly one .gguf"):
            gguf_file("/d/m", files, "model=x")
