"""Resume keeps exactly the rows that are still valid: same run identity, same question asked.

Real virtual device, real adb, real reference app (tiny-fp).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.pipeline import REPO, kill_9_after, rows, run_stages, stage_config

pytestmark = pytest.mark.timeout(300)


def _qa_lines(n: int) -> list[dict]:
    return [json.loads(line) for line in (REPO / "prompts" / "qa.jsonl").read_text().splitlines()[:n]]


def _write(path: Path, items: list[dict]) -> None:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))


def test_a_prompt_edit_reasks_that_prompt_only_and_a_deleted_prompt_leaves_the_score(virtual_device, workdir,
                                                                                       stage_cache, capsys):
    items = _qa_lines(4)
    prompts = workdir / "qa4.jsonl"
    _write(prompts, items)
    cfg = stage_config(virtual_device, workdir, "prompts=custom", f"prompts.path={prompts}", "tracking=none",
                       cache=stage_cache)
    run_stages(cfg, workdir)
    before = {r["prompt_id"]: r for r in rows(workdir)}
    edited = dict(items[0], prompt="What is the capital of Japan?", reference="Tokyo")  # the edit
    _write(prompts, [edited, items[1], items[2]])  # item 3 deleted
    capsys.readouterr()
    run_stages(cfg, workdir)
    out = capsys.readouterr().out
    assert (f"run: resuming — 2 finished rows kept; re-asking 1 changed prompt(s) ({items[0]['id']}); dropped the "
            f"rows of 1 prompt(s) no longer in the set ({items[3]['id']})") in out
    after = {r["prompt_id"]: r for r in rows(workdir)}
    assert list(after) == [items[1]["id"], items[2]["id"], items[0]["id"]]  # kept rows first, then the re-asked one
    for kept in (items[1]["id"], items[2]["id"]):
        assert after[kept] == before[kept]  # not asked again: the very same row (timestamps included)
    assert after[items[0]["id"]]["sent_text"] == "What is the capital of Japan?"
    assert after[items[0]["id"]]["t_send"] != before[items[0]["id"]]["t_send"]
    score = json.loads((workdir / "metrics" / "score.json").read_text())
    assert score["n_prompts"] == 3 and score["failures"]["measured"] == 3


def test_a_config_change_starts_afresh_says_which_key_and_mlflow_shows_the_new_run(virtual_device, workdir,
                                                                                     stage_cache, capsys):
    cfg = stage_config(virtual_device, workdir, "prompts.limit=2", cache=stage_cache)  # MLflow: workdir/mlflow.db
    run_stages(cfg, workdir)
    first = rows(workdir)
    cfg.runtime.max_output_bytes = 4096
    capsys.readouterr()
    run_stages(cfg, workdir, "run", "score")
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("run: starting afresh")]
    assert len(err) == 1 and "changed: config (runtime.max_output_bytes)" in err[0], err
    again = rows(workdir)
    assert len(again) == 2 and all(a["t_send"] != b["t_send"] for a, b in zip(first, again, strict=True))
    run_json = json.loads((workdir / "artifacts" / "run" / "run.json").read_text())
    assert run_json["previous_run"]["why"] == "changed: config (runtime.max_output_bytes)"
    assert run_json["identity"]["config"]["runtime"]["max_output_bytes"] == 4096

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("odeval").experiment_id],
                              order_by=["attributes.start_time ASC"])
    assert len(runs) == 2  # a new MLflow run for the new results; the old one stays, marked
    old, new = runs
    assert old.data.tags["odeval.superseded_by"] == new.info.run_id
    assert old.data.tags["odeval.superseded_why"] == new.data.tags["odeval.replaces"] == run_json["previous_run"]["why"]
    assert new.data.params["runtime.max_output_bytes"] == "4096" and "odeval.superseded_by" not in new.data.tags
    assert new.data.tags["odeval.identity.config"] != old.data.tags["odeval.identity.config"]


def test_kill_9_mid_run_resumes_with_the_finished_rows_kept(virtual_device, workdir, stage_cache):
    cfg = stage_config(virtual_device, workdir, "prompts.limit=6", "tracking=none", cache=stage_cache)
    run_stages(cfg, workdir, "fetch", "push")
    before = kill_9_after(cfg, workdir, 2)
    assert 2 <= len(before) < 6
    run_stages(cfg, workdir, "run")
    after = rows(workdir)
    assert len(after) == 6 and after[: len(before)] == before
    assert json.loads((workdir / "artifacts" / "run" / "run.json").read_text())["status"] == "complete"
