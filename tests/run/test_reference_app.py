"""Drive the real host reference app (pipeline.guest.reference_app) on the offline tiny model through the runner."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pipeline.apps.channel import SubprocessChannel
from pipeline.apps.launch import AppProcess
from pipeline.prompt_model.prompt_format import load_format
from pipeline.run.runner import ROW_FIELDS, RunItem, RunOptions, run_prompts

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny-fp model dir (built once, cached by pipeline.models) and a token counter from its tokenizer.bin."""
    models = pytest.importorskip("pipeline.models.tiny")
    pytest.importorskip("pipeline.guest.reference_app")
    from pipeline.models.tokenizer_bin import TokenizerBin

    out = models.build_model("tiny-fp", tmp_path_factory.mktemp("m") / "tiny-fp")
    codec = TokenizerBin.load(out / "tokenizer.bin")
    return out, lambda text: len(codec.encode(text))


def launcher(model_dir: Path):
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "ODEVAL_THREADS": "1",
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def start(n_prompt_tokens: int = 0) -> AppProcess:
        argv = [sys.executable, "-m", "pipeline.guest.reference_app", str(model_dir)]
        return AppProcess(SubprocessChannel(argv, cwd=str(ROOT), env=env))

    return start


def _run(tiny, session: str, items: list[RunItem]) -> list[dict]:
    model_dir, count = tiny
    rows: list[dict] = []
    run_prompts(items, launcher(model_dir), RunOptions(session=session, load_timeout_s=120, prompt_timeout_s=60,
                                                      max_new_tokens=200),
                count_tokens=count, count_prompt=load_format("mobilequant", model_dir).count, on_row=rows.append,
                progress=False)
    return rows


ITEMS = [RunItem("joke", "tell me a joke.", "tell me a joke."),
         RunItem("fr", "What is the capital of France?", "What is the capital of France?")]


def test_reference_app_shared_session(tiny):
    rows = _run(tiny, "shared", ITEMS)
    for r in rows:
        assert list(r) == list(ROW_FIELDS)
        assert r["eos"] and r["error"] is None and r["response"].strip()
        assert r["app_tok_s"] > 0 and r["host_blended_tok_s"] > 0 and r["ttft_s"] > 0
        assert r["n_output_tokens"] > 0 and r["n_prompt_tokens"] > 0
    assert rows[0]["load_s"] is not None and rows[1]["load_s"] is None


@pytest.mark.slow
def test_reference_app_fresh_vs_shared_context(tiny):
    """The second prompt sees the first one's context only in shared sessions: first answers are identical
    (greedy, same fresh state), second answers differ (tiny-fp answers 'Paris.' only without the carried context)."""
    shared = _run(tiny, "shared", ITEMS)
    fresh = _run(tiny, "fresh", ITEMS)
    assert shared[0]["response"] == fresh[0]["response"]
    assert shared[1]["response"] != fresh[1]["response"]
    assert "paris" in fresh[1]["response"].lower()
    assert all(r["load_s"] is not None for r in fresh)
    assert [r["eos"] for r in shared + fresh] == [True] * 4


def test_the_runner_counts_what_the_app_feeds(tiny):
    """n_prompt_tokens comes from the same prompt-format object the reference app feeds from, per template."""
    from pipeline.guest.reference_app import load_engine
    from pipeline.prompt_model.prompt_format import load_format

    model_dir, _ = tiny
    engine = load_engine(model_dir)
    for template in ("mobilequant", "hf-chat", "raw"):
        host, app = load_format(template, model_dir), engine.prompt_format(template)
        for text in ("tell me a joke.", "What is the capital of France?", "émoji 🎉 and 中文"):
            assert host.count(text) == len(app.ids(text)) > 0
    mq, raw = load_format("mobilequant", model_dir), load_format("raw", model_dir)
    assert mq.count("hi") != raw.count("hi")  # the templates differ, and so do their counts
