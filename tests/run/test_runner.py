"""Runner tests: the stub app started through a real /bin/sh with app_command over SubprocessChannel."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.apps.channel import ChannelError, SubprocessChannel
from pipeline.run.runner import ROW_FIELDS, DeviceLost, RunItem, RunnerError, RunOptions, run_prompts
from tests.run.conftest import count_prompt, count_tokens, pid_alive

ITEMS = [RunItem("a", "What is 2+2?", "What is 2+2?"), RunItem("b", "Name a colour.", "Name a colour.")]


def run(stub, items=ITEMS, skip=frozenset(), **opts) -> list[dict]:
    rows: list[dict] = []
    opts.setdefault("prompt_timeout_s", 20)
    opts.setdefault("load_timeout_s", 20)
    run_prompts(items, stub, RunOptions(**opts), count_tokens=count_tokens,
                count_prompt=count_prompt, skip=set(skip), on_row=rows.append,
                progress=False)
    return rows


def test_fresh_sessions_warmup_repeats_and_schema(stub):
    rows = run(stub, repeats=2, warmup=1, session="fresh")
    assert [(r["prompt_id"], r["repeat"], r["warmup"]) for r in rows] == [
        ("a", -1, True), ("b", -1, True), ("a", 0, False), ("b", 0, False), ("a", 1, False), ("b", 1, False)]
    assert stub.starts == 6 and len(set(stub.pids())) == 6
    for r in rows:
        assert list(r) == list(ROW_FIELDS)
        assert r["response"] == f"turn 1: you said: {r['sent_text']} . w0 w1 w2 w3 w4"
        assert r["eos"] and not (r["truncated"] or r["timed_out"] or r["crashed"]) and r["error"] is None
        assert r["app_tok_s"] > 0 and r["host_blended_tok_s"] > 0 and r["decode_tok_s"] > 0
        assert r["load_s"] > 0 and r["session"] == "fresh"
        assert r["t_send"] < r["t_first_byte"] <= r["t_last_byte"]
        assert r["ttft_s"] == pytest.approx(r["t_first_byte"] - r["t_send"])
        assert r["n_output_tokens"] == count_tokens(r["response"])
        # the template's `</s>` is one id the app feeds (not re-tokenised text): 1 + n + 1 + 1 for this counter
        assert r["n_prompt_tokens"] == count_tokens(r["sent_text"]) + 3
        raw = base64.b64decode(r["raw_output_b64"])
        assert raw.startswith(r["response"].encode()) and raw.endswith(b" tok/s)\n>>> ")
        assert sum(n for _, n in r["chunks"]) == len(raw) and len(r["chunks"]) > 1
    assert stub.killed == []  # every fresh process ended by `!exit`
    assert stub.lines().count("!exit") == 6


def test_shared_session_carries_context(stub):
    shared = run(stub, session="shared")
    fresh = run(stub, session="fresh")
    assert [r["response"].split(":")[0] for r in shared] == ["turn 1", "turn 2"]
    assert [r["response"].split(":")[0] for r in fresh] == ["turn 1", "turn 1"]
    assert shared[0]["load_s"] is not None and shared[1]["load_s"] is None
    assert [r["session"] for r in shared] == ["shared", "shared"]


def test_prompts_arrive_verbatim_and_change_nothing(stub, tmp_path):
    canary = tmp_path / "canary"
    canary.write_text("x")
    texts = [f"; rm -rf {canary}", f"$(touch {tmp_path}/pwned) `touch {tmp_path}/pwned2`",
             "it's \"quoted\" \\ back", "please never type !exit in a chat", "emoji 🎉👍🏽 ok",
             "RTL: مرحبا بالعالم שלום"]
    items = [RunItem(f"p{i}", t, t) for i, t in enumerate(texts)]
    rows = run(stub, items=items, session="shared")
    assert [r["error"] for r in rows] == [None] * len(texts)
    assert [line for line in stub.lines() if line != "!exit"] == texts
    assert [r["response"].split("you said: ", 1)[1].rsplit(" .", 1)[0] for r in rows] == texts
    assert canary.exists() and not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    start = stub.log()[0]
    assert start["argv"] == [stub.model_dir, "8gen3"] and start["cwd"] == str(stub.app_dir)


@pytest.mark.parametrize("session", ["fresh", "shared"])
def test_truncation_kills_by_pid(stub, session):
    stub.env["STUB_TOKENS"] = "400"
    rows = run(stub, session=session, max_new_tokens=8)
    assert all(r["truncated"] and not r["eos"] and r["app_tok_s"] is None for r in rows)
    assert all(8 <= r["n_output_tokens"] < 40 for r in rows)
    assert all(r["host_blended_tok_s"] is None for r in rows)
    assert stub.killed == stub.pids() and len(stub.killed) == 2  # killed by the pid from `odeval-pid:`
    assert [r["load_s"] is not None for r in rows] == [True, True]  # shared: the second row restarted the app
    assert [r["response"].split(":")[0] for r in rows] == ["turn 1", "turn 1"]


def test_hang_times_out_kills_and_run_continues(stub):
    stub.env.update(STUB_HANG="1", STUB_FAULT_ON="2+2")
    rows = run(stub, session="shared", prompt_timeout_s=1.0)
    assert rows[0]["timed_out"] and not rows[0]["crashed"] and "prompt_timeout_s" in rows[0]["error"]
    assert rows[0]["response"] == "turn 1:"
    assert rows[1]["error"] is None and rows[1]["eos"] and rows[1]["load_s"] is not None
    assert stub.killed == stub.pids()[:1]
    assert not pid_alive(stub.killed[0])


def test_crash_recorded_with_exit_code_and_stderr(stub):
    stub.env.update(STUB_CRASH_AFTER="3", STUB_FAULT_ON="2+2")
    rows = run(stub, session="shared")
    r = rows[0]
    assert r["crashed"] and not r["timed_out"] and r["exit_code"] == 3 and not r["eos"]
    assert "simulated crash" in r["error"] and r["app_tok_s"] is None
    assert r["response"] == "turn 1: you"  # the 3 pieces printed before the crash
    assert stub.killed == []  # it had exited: no kill of a possibly reused pid
    assert rows[1]["eos"] and rows[1]["error"] is None and rows[1]["response"].startswith("turn 1:")


def test_invalid_utf8(stub):
    stub.env["STUB_INVALID_UTF8"] = "1"
    [r] = run(stub, items=ITEMS[:1])
    assert r["replaced_chars"] == 2 and r["eos"] and r["error"] is None
    assert r["response"].startswith("turn \ufffd\ufffd é! 1:")
    assert b"\xff\xfe" in base64.b64decode(r["raw_output_b64"])


def test_max_output_bytes_and_step_cap_without_eos(stub):
    stub.env["STUB_TOKENS"] = "300"
    [r] = run(stub, items=ITEMS[:1], max_output_bytes=200, max_new_tokens=10_000)
    assert r["truncated"] and "max_output_bytes=200" in r["error"]
    stub.env.update(STUB_TOKENS="300", STUB_STEPS="40", STUB_NO_EOS="1")
    [r] = run(stub, items=ITEMS[:1], max_new_tokens=10_000)
    assert not r["eos"] and not r["truncated"] and r["app_tok_s"] > 0 and r["error"] is None


def test_start_failures_are_rows(stub):
    stub.app_dir = stub.app_dir.parent / "missing dir"
    rows = run(stub, session="shared")
    assert [r["crashed"] for r in rows] == [True, True] and all(r["exit_code"] not in (None, 0) for r in rows)
    assert all("exited before its prompt" in r["error"] for r in rows)
    assert all(list(r) == list(ROW_FIELDS) for r in rows)


def test_load_timeout(stub):
    stub.env["STUB_LOAD_DELAY"] = "30"
    [r] = run(stub, items=ITEMS[:1], load_timeout_s=0.5)
    assert r["timed_out"] and "load_timeout_s" in r["error"] and r["load_s"] is None


def test_device_lost_then_resume_no_loss_no_duplicates(stub):
    starts = {"n": 0}

    def flaky(n_prompt_tokens: int = 0):
        starts["n"] += 1
        if starts["n"] == 3:
            raise ConnectionError("device offline")
        return stub()

    done: list[dict] = []
    with pytest.raises(DeviceLost, match="device offline"):
        run_prompts(ITEMS, flaky, RunOptions(repeats=2), count_tokens=count_tokens,
                count_prompt=count_prompt, on_row=done.append,
                    progress=False)
    assert [(r["prompt_id"], r["repeat"]) for r in done] == [("a", 0), ("b", 0)]
    more = run(stub, repeats=2, skip={(r["prompt_id"], r["repeat"]) for r in done})
    assert [(r["prompt_id"], r["repeat"]) for r in more] == [("a", 1), ("b", 1)]


def test_bad_inputs_fail_before_starting(stub):
    with pytest.raises(RunnerError, match="starts with '!'"):
        run(stub, items=[RunItem("x", "!exit", "!exit")])
    with pytest.raises(RunnerError, match="duplicated"):
        run(stub, items=[ITEMS[0], ITEMS[0]])
    with pytest.raises(RunnerError, match="session"):
        RunOptions(session="both")
    assert stub.starts == 0


def test_gemma_model_dir(stub, tmp_path):
    stub.model_dir = str(tmp_path / "gemma-2b")
    [r] = run(stub, items=ITEMS[:1])
    assert r["eos"] and r["n_prompt_tokens"] == count_prompt(ITEMS[0].sent_text)  # the format's count, injected


def test_progress_bar_runs(stub, capsys):
    rows: list[dict] = []
    run_prompts(ITEMS[:1], stub, RunOptions(), count_tokens=count_tokens,
                count_prompt=count_prompt, on_row=rows.append, progress=True)
    assert len(rows) == 1


def test_subprocess_channel_basics(tmp_path):
    with pytest.raises(ChannelError):
        SubprocessChannel([str(tmp_path / "nope")])
    ch = SubprocessChannel([sys.executable, "-c", "import sys,time; sys.stderr.write('e'); print(input()); "
                            "sys.stdout.flush(); time.sleep(60)"])
    ch.write(b"hello\n")
    got: dict[int, bytes] = {1: b"", 2: b""}
    deadline = time.monotonic() + 10
    while got != {1: b"hello\n", 2: b"e"} and time.monotonic() < deadline:  # two reader threads: either order
        item = ch.read(0.2)
        if item:
            got[item[0]] += item[1]
    assert got == {1: b"hello\n", 2: b"e"} and ch.read(0.05) is None
    os.kill(ch.pid, signal.SIGKILL)
    with pytest.raises(EOFError):
        while True:
            ch.read(5)
    assert ch.exit_code == 128 + 9
    with pytest.raises(EOFError):
        ch.write(b"more\n")
    ch.close()


def test_subprocess_channel_close_kills_the_group():
    ch = SubprocessChannel(["/bin/sh", "-c", "sleep 60 & echo $!; wait"])
    item = None
    while item is None:
        item = ch.read(5)
    child = int(item[1])
    ch.close()
    assert not pid_alive(ch.pid) and not pid_alive(child)
    subprocess.run(["true"], check=True)


class _LosingChannel:
    """Wraps a real channel; once `lost` is set, reads fail like a dropped adb transport (no exit status)."""

    def __init__(self, inner, state):
        self.inner, self.state = inner, state

    @property
    def exit_code(self):
        return None if self.state["lost"] else self.inner.exit_code

    def write(self, data):
        self.inner.write(data)

    def close_stdin(self):
        self.inner.close_stdin()

    def read(self, timeout):
        if self.state["lost"]:
            raise self.state["exc"]
        return self.inner.read(timeout)

    def close(self):
        self.inner.close()


@pytest.mark.parametrize("exc", [ConnectionResetError("transport reset"), EOFError("stream closed")])
def test_device_lost_mid_run_keeps_finished_rows(stub, exc):
    state = {"lost": False, "exc": exc}

    def start(n_prompt_tokens: int = 0):
        proc = stub()
        proc.channel = _LosingChannel(proc.channel, state)
        return proc

    rows: list[dict] = []

    def on_row(row):
        rows.append(row)
        state["lost"] = True

    with pytest.raises(DeviceLost):
        run_prompts(ITEMS, start, RunOptions(session="shared"), count_tokens=count_tokens,
                count_prompt=count_prompt, on_row=on_row,
                    progress=False)
    assert [r["prompt_id"] for r in rows] == ["a"]  # "b" was not finished: not emitted, redone on resume


def test_app_prompt_count_replaces_simple_apps_template_arithmetic(stub):
    """A reference-app template other than simple_app's feeds other tokens: the blended rate uses that count."""
    rows: list[dict] = []
    run_prompts(ITEMS[:1], stub, RunOptions(prompt_timeout_s=20, load_timeout_s=20), count_tokens=count_tokens,
                count_prompt=lambda text: 40 + count_tokens(text), on_row=rows.append, progress=False)
    (r,) = rows
    assert r["n_prompt_tokens"] == 40 + count_tokens(r["sent_text"])
    assert r["host_blended_tok_s"] == pytest.approx((r["n_prompt_tokens"] + r["n_output_tokens"] - 1) / r["e2e_s"])
