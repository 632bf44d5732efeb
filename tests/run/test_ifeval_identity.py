"""prompts=ifeval in the run's identity: its loader is run-stage code, each benchmark row is part of what its prompt
asks, and the set's own budget is part of the config — so editing or re-pinning the set re-asks exactly what changed,
while odeval's own sets keep their ask keys (and their finished rows)."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.config import compose, to_config
from pipeline.run.identity import RUN_STAGE_MODULE, ask_keys, describe_change, run_identity
from pipeline.run.prompt_sources import load_prompt_source
from pipeline.run.prompts import Prompt

PUSH = {"device": {"kind": "adb", "serial": "SERIAL1"}}


@pytest.fixture(scope="module")
def ifeval_cfg():
    return to_config(compose(["prompts=ifeval", "model=smollm2-q4"]))


def _fetch(tmp_path: Path) -> dict:
    return {"model": {"manifest_sha256": "m" * 64}, "app": {"manifest_sha256": "a" * 64, "local_dir": str(tmp_path)}}


def test_the_loader_is_part_of_the_run_stages_code():
    from pipeline.codehash import code_files

    assert {"pipeline/run/prompt_sources.py", "pipeline/fetch/package_source.py"} <= set(code_files(RUN_STAGE_MODULE))


def test_an_edited_benchmark_row_reasks_only_its_prompt(ifeval_cfg, tmp_path):
    prompts, _ = load_prompt_source(ifeval_cfg.prompts, tmp_path)
    items = [p.to_item() for p in prompts]
    before = ask_keys(items, [p.prompt for p in prompts], shared_session=False)
    edited = copy.deepcopy(items)
    edited[2]["ifeval"]["kwargs"][0] = {**edited[2]["ifeval"]["kwargs"][0], "edited": 1}  # same text, new check
    after = ask_keys(edited, [p.prompt for p in prompts], shared_session=False)
    changed = [pid for pid in before if before[pid] != after[pid]]
    assert changed == [prompts[2].id]


def test_odevals_own_prompts_ask_what_they_asked_before():
    item = Prompt(id="q0", prompt="What is the capital of France?", reference=("Paris",)).to_item()
    assert "ifeval" not in item  # the ask key of every existing row is unchanged by the new field


def test_the_sets_own_budget_is_part_of_the_run_identity(ifeval_cfg, tmp_path):
    qa = run_identity(to_config(compose(["prompts=qa"])), _fetch(tmp_path), PUSH)
    assert "budget" not in qa.config
    ife = run_identity(ifeval_cfg, _fetch(tmp_path), PUSH)
    assert ife.config["budget"] == {"context": 352, "max_new_tokens": 640, "prompt_timeout_s": 300.0}
    shorter = replace(ifeval_cfg, prompts=replace(ifeval_cfg.prompts, max_new_tokens=320))
    other = run_identity(shorter, _fetch(tmp_path), PUSH)
    assert other.key != ife.key
    assert describe_change(ife.to_record(), other) == "changed: config (budget.max_new_tokens)"
