"""Tiny model family: prompt-set contract, determinism, CLI, and the quantisation ladder (issue acceptance)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.models import tiny

REPO = Path(__file__).resolve().parents[2]
ALLOWED = {"id", "prompt", "reference", "keywords", "rules", "lang", "tags"}


def _hashes(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.mark.parametrize("name", ["smoke", "qa"])
def test_prompt_sets_follow_the_line_contract(name: str) -> None:
    rows = [json.loads(line) for line in (REPO / "prompts" / f"{name}.jsonl").read_text().splitlines()]
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert set(r) <= ALLOWED and isinstance(r["prompt"], str) and "\n" not in r["prompt"]
        assert r["lang"] == "en"
    if name == "qa":
        assert len(rows) >= 40
        assert sum("heldout" in r["tags"] for r in rows) >= 10
        assert all(r["tags"] in (["train"], ["heldout"]) and r["reference"] for r in rows)
    else:
        assert rows[0]["id"] == "joke" and rows[0]["prompt"] == "tell me a joke."


@pytest.mark.parametrize("name", ["smoke", "qa"])
def test_the_sets_tiny_fp_learned_are_the_shipped_prompt_sets(name: str) -> None:
    """The model trains on a snapshot (a user's prompt edit must not retrain the model under test); in this repo
    the snapshot and prompts/ agree — after editing a shipped set, copy it to the snapshot (the models rebuild)."""
    assert tiny.TRAIN_SETS[name].read_bytes() == (REPO / "prompts" / f"{name}.jsonl").read_bytes()


def test_training_answers_contain_their_reference() -> None:
    train = tiny.load_examples("train")
    heldout_ids = {e.id for e in tiny.load_examples("heldout")}
    assert heldout_ids and not heldout_ids & {e.id for e in train}
    for e in train:  # items scored by rules (e.g. the joke) carry no reference to contain
        assert not e.aliases or tiny.contains_answer(e.answer, e.aliases), (e.id, e.answer, e.aliases)
    assert sum(bool(e.aliases) for e in train) >= 30


def test_contains_answer_uses_word_boundaries() -> None:
    assert tiny.contains_answer("It is 4.", ["4"])
    assert not tiny.contains_answer("It is 42.", ["4"])
    assert not tiny.contains_answer("Romeo", ["Rome"])
    assert tiny.contains_answer("the h2o molecule", ["H2O"])


def test_build_is_byte_identical_across_fresh_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dirs = []
    for i in range(2):
        monkeypatch.setenv("ODEVAL_CACHE", str(tmp_path / f"cache{i}"))
        dirs.append(tiny.build_model("tiny-w4", tmp_path / f"out{i}"))
    h0, h1 = _hashes(dirs[0]), _hashes(dirs[1])
    assert h0 == h1
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "tokenizer.bin", "model.json"} <= set(h0)


def test_cli_build_writes_a_model_dir(tiny_model, tmp_path: Path) -> None:
    tiny_model("tiny-random")  # warm the session cache so the CLI only copies
    out = tmp_path / "m"
    r = subprocess.run([sys.executable, "-m", "pipeline.models", "build", "tiny-random", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "model.json").read_text())
    assert meta["name"] == "tiny-random" and meta["steps"] == 0 and meta["param_count"] > 100_000
    assert (out / "model.safetensors").stat().st_size < 5_000_000
    bad = subprocess.run([sys.executable, "-m", "pipeline.models", "build", "tiny-huge", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert bad.returncode != 0 and "tiny-huge" in bad.stderr


def test_quantisation_ladder(tiny_model) -> None:
    items = tiny.load_examples("qa-train")
    res = {n: tiny.evaluate(tiny_model(n), items, bos=True) for n in tiny.MODEL_NAMES}
    acc = {n: r["accuracy"] for n, r in res.items()}
    nll = {n: r["nll"] for n, r in res.items()}
    assert acc["tiny-fp"] >= 0.9
    assert abs(acc["tiny-w8"] - acc["tiny-fp"]) <= 0.02
    assert acc["tiny-w2"] <= acc["tiny-fp"] - 0.1
    assert acc["tiny-random"] == 0
    assert abs(nll["tiny-w8"] - nll["tiny-fp"]) < 0.25 * (nll["tiny-w4"] - nll["tiny-fp"])
    assert nll["tiny-w8"] < nll["tiny-w4"] < nll["tiny-w2"] < nll["tiny-random"]
    meta = json.loads((tiny_model("tiny-w2") / "model.json").read_text())
    assert meta["quant_bits"] == 2 and meta["train_with_bos"] is True
