"""The four stages end to end on the virtual device: real adb, real reference app, real MLflow store."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipeline.stages import StageError
from tests.helpers.pipeline import REPO, rows, run_stage_in_background, run_stages, stage_config, wait_rows

pytestmark = pytest.mark.timeout(300)
ROW_KEYS = {"prompt_id", "repeat", "warmup", "prompt", "sent_text", "response", "raw_output_b64", "eos", "truncated",
            "timed_out", "crashed", "exit_code", "app_tok_s", "t_send", "t_first_byte", "t_last_byte", "chunks",
            "n_output_tokens", "n_prompt_tokens", "ttft_s", "decode_tok_s", "e2e_s", "error", "session", "load_s"}


def mlflow_runs(work: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("odeval")
    return client.search_runs([exp.experiment_id]) if exp else []


def test_default_pipeline_end_to_end(virtual_device, workdir, stage_cache):
    cfg = stage_config(virtual_device, workdir, "prompts.limit=4", cache=stage_cache)
    run_stages(cfg, workdir)
    art = workdir / "artifacts"
    fetch = json.loads((art / "fetch.json").read_text())
    for part in ("model", "app"):
        assert {"source", "repo_id", "requested_revision", "commit", "local_dir", "files",
                "manifest_sha256"} <= set(fetch[part])
    push = json.loads((art / "push.json").read_text())
    assert push["device"]["kind"] == "virtual" and push["device"]["props"]["ro.product.model"] == "odeval-virtual"
    got = rows(workdir)
    assert [r["prompt_id"] for r in got] == [p["id"] for p in map(json.loads, (REPO / "prompts/qa.jsonl")
                                                                   .read_text().splitlines()[:4])]
    for r in got:
        assert set(r) >= ROW_KEYS
        assert r["app_tok_s"] and r["ttft_s"] and r["eos"] and not r["crashed"]
        assert r["decode_tok_s"] is None or r["n_output_tokens"] >= 4
    run_json = json.loads((art / "run" / "run.json").read_text())
    assert run_json["device"]["kind"] == "virtual" and run_json["status"] == "complete"
    assert "not a phone" in run_json["throughput_source"]
    score = json.loads((workdir / "metrics" / "score.json").read_text())
    assert score["device_kind"] == "virtual" and score["n_prompts"] == 4
    thr = score["throughput"]
    assert thr["app_tok_s"]["n"] == 4 and thr["ttft_s"]["n"] == 4 and score["quality"]["score"] is not None
    # 1-2 token answers are below decode timing resolution: counted as missing, never invented
    assert thr["decode_tok_s"]["n"] + thr["decode_tok_s"]["n_missing"] == 4
    assert score["roofline_tok_s"] is None and "virtual" in score["plausibility_reason"]
    assert (workdir / "metrics" / "prompts.csv").read_text().count("\n") == 5
    assert len(list((workdir / "metrics" / "plots").glob("*.png"))) == 3

    runs = mlflow_runs(workdir)
    assert len(runs) == 1
    tags = runs[0].data.tags
    assert tags["device.kind"] == "virtual" and tags["model.manifest_sha256"] == fetch["model"]["manifest_sha256"]
    assert runs[0].data.params["model.name"] == "tiny-fp" and "quality.score" in runs[0].data.metrics
    # the UI view: runs table (experiment kind), the on-device run's real times, plain-named headline metrics
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, HEADLINE_METRICS, iso_to_ms

    exp = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}").get_experiment_by_name("odeval")
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert runs[0].info.start_time == iso_to_ms(run_json["started"])
    assert runs[0].info.end_time == iso_to_ms(run_json["ended"])
    m = runs[0].data.metrics
    # the headline is the detail value rounded to its resolution (≥ 3 significant digits)
    assert m["quality"] == pytest.approx(m["quality.score"], abs=5e-4)
    assert m["ttft_s"] == pytest.approx(m["throughput.ttft_s.p50"], rel=5e-3)
    assert set(HEADLINE_METRICS) - {"j_per_tok", "decode_tok_s"} <= set(m)  # no power rails / short answers
    assert "quality score" in runs[0].data.tags["mlflow.note.content"]

    names = {a.path for a in MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
             .list_artifacts(runs[0].info.run_id)}
    assert {"responses.jsonl", "prompts.csv", "score.json", "run.json", "fetch.json", "push.json",
            "decode_tok_s_per_prompt.png"} <= names, names
    run_stages(cfg, workdir, "score")  # re-scoring updates the same MLflow run
    assert len(mlflow_runs(workdir)) == 1

    run_stages(cfg, workdir, "push", "run")  # nothing changed: push sends nothing, run resumes with all rows done
    stats = json.loads((art / "push_stats.json").read_text())
    assert stats["bytes_sent"] == 0 and len(rows(workdir)) == 4


def test_resume_after_the_device_dies_mid_run(make_virtual_device, workdir, stage_cache):
    """Kill the device under a running `run` stage; the re-run keeps finished rows and adds no duplicates."""

    vd = make_virtual_device()
    cfg = stage_config(vd, workdir, "prompts.limit=8", "session=fresh", cache=stage_cache)
    run_stages(cfg, workdir, "fetch", "push")
    proc = run_stage_in_background(cfg, workdir)
    wait_rows(workdir / "artifacts" / "run" / "responses.jsonl", 2, proc)
    from pipeline.virtual import stop

    stop(vd.root)  # the phone is unplugged
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "kept" in err and "resume this run: `python -m pipeline.stages.run --quiet`" in err, err
    before = rows(workdir)
    assert 2 <= len(before) < 8
    run_stages(cfg, workdir, "run")  # reconnects (restarts the virtual device) and continues
    after = rows(workdir)
    assert [r["prompt_id"] for r in after] == sorted({r["prompt_id"] for r in after}, key=[r["prompt_id"] for r in
                                                                                            after].index)
    assert len(after) == 8 and after[: len(before)] == before


HOSTILE = ["; rm -rf /data/local/tmp/*", "$(reboot)", "`id`", "it's \"quoted\" and 'single'",
           "say !exit then continue", "emoji 🤖🎉 and RTL مرحبا بالعالم", "back\\slash & pipe | amp"]


def test_hostile_prompts_arrive_verbatim_and_change_nothing(make_virtual_device, workdir, stage_cache):
    stub = [sys.executable, str(REPO / "tests" / "run" / "stub_app.py")]
    device = make_virtual_device(app_cmd=stub)  # the app command is fixed when the daemon starts
    prompts = workdir / "hostile.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"h{i}", "prompt": p}) + "\n" for i, p in enumerate(HOSTILE)))
    cfg = stage_config(device, workdir, "prompts=custom", f"prompts.path={prompts}", "session=shared",
                       "tracking=none", cache=stage_cache)
    cfg.device.virtual.faults = {"app_cmd": stub}
    run_stages(cfg, workdir, "fetch", "push")
    sandbox = device.storage

    def tree() -> set[str]:
        return {str(p.relative_to(sandbox)) for p in sandbox.rglob("*") if p.name != "stub_log.jsonl"}

    before = tree()
    run_stages(cfg, workdir, "run")
    assert tree() == before
    logs = list(sandbox.rglob("stub_log.jsonl"))
    received = [json.loads(line)["text"] for log in logs for line in log.read_text().splitlines()
                if json.loads(line).get("event") == "line"]
    assert [t for t in received if not t.startswith("!")] == HOSTILE
    assert [r["sent_text"] for r in rows(workdir)] == HOSTILE
    for log in logs:
        log.unlink()


@pytest.mark.parametrize(
    "fault, check, all_fail",
    [
        ({"app_crash_after_tokens": 1}, lambda r: r["crashed"] and r["exit_code"] not in (None, 0) and not r["eos"],
         True),
        ({"app_hang": True}, lambda r: r["timed_out"] and not r["eos"], True),
        ({"app_invalid_utf8": True}, lambda r: r["replaced_chars"] > 0 and not r["crashed"], False),
    ],
    ids=["crash", "hang", "invalid-utf8"],
)
def test_app_faults_become_rows_and_the_run_goes_on(virtual_device, workdir, stage_cache, fault, check, all_fail):
    cfg = stage_config(virtual_device, workdir, "prompts.limit=2", "tracking=none", "runtime.prompt_timeout_s=3",
                       cache=stage_cache)
    cfg.device.virtual.faults = fault
    run_stages(cfg, workdir, "fetch", "push")
    if all_fail:  # every prompt failed: the run went on through all of them, then the stage fails
        with pytest.raises(StageError, match="every prompt failed"):
            run_stages(cfg, workdir, "run")
    else:
        run_stages(cfg, workdir, "run")
    got = rows(workdir)
    assert len(got) == 2 and all(check(r) for r in got), got
    status = json.loads((workdir / "artifacts" / "run" / "run.json").read_text())["status"]
    assert status == ("failed" if all_fail else "complete")
    left = virtual_device.device.shell("pidof simple_app", timeout=10).strip()
    assert left == "", f"app processes left running on the device: {left}"


def test_shared_session_carries_context_fresh_does_not(virtual_device, workdir, stage_cache):
    prompts = workdir / "two.jsonl"
    prompts.write_text(json.dumps({"id": "joke", "prompt": "tell me a joke."}) + "\n"
                       + json.dumps({"id": "france", "prompt": "What is the capital of France?",
                                     "reference": "Paris"}) + "\n")
    answers = {}
    for mode in ("fresh", "shared"):
        work = workdir / mode
        cfg = stage_config(virtual_device, work, "prompts=custom", f"prompts.path={prompts}", f"session={mode}",
                           "tracking=none", cache=stage_cache)
        run_stages(cfg, work, "fetch", "push", "run")
        got = rows(work)
        assert {r["session"] for r in got} == {mode}
        answers[mode] = got[1]["response"]
    assert "Paris" in answers["fresh"]
    assert answers["shared"] != answers["fresh"], "the shared session should see the joke turn as context"


def test_missing_upstream_artifact_is_a_clear_error(virtual_device, workdir, stage_cache):
    cfg = stage_config(virtual_device, workdir, cache=stage_cache)
    with pytest.raises(StageError, match="fetch.json: missing — run the fetch stage"):
        run_stages(cfg, workdir, "run")
