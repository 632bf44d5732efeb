"""A run's status, exit code and score tell the truth: failures are counted, bad input is refused before any work.

Real virtual device, real adb, real reference app; faults injected through the device's control file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.stages import StageError
from tests.helpers.pipeline import REPO, rows, run_stages, stage_config

pytestmark = pytest.mark.timeout(300)


def _write_params(cfg, work: Path) -> None:
    (work / "params.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def _stage(work: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"pipeline.stages.{name}", "--quiet"], cwd=work,
                          capture_output=True, text=True, timeout=240)


def test_crash_on_every_prompt_fails_the_run_and_is_not_scored_as_quality(virtual_device, workdir, stage_cache):
    cfg = stage_config(virtual_device, workdir, "prompts=smoke", f"prompts.path={REPO / 'prompts' / 'smoke.jsonl'}",
                       "tracking=none", cache=stage_cache)
    cfg.device.virtual.faults = {"app_crash_after_tokens": 3}
    run_stages(cfg, workdir, "fetch", "push")
    _write_params(cfg, workdir)
    res = _stage(workdir, "run")
    assert res.returncode != 0
    assert "every prompt failed" in res.stderr and "crashed 5/5" in res.stderr, res.stderr
    run_json = json.loads((workdir / "artifacts" / "run" / "run.json").read_text())
    assert run_json["status"] == "failed" and "crashed 5/5" in run_json["error"]
    assert run_json["failures"] == {"measured": 5, "failed": 5, "crashed": 5, "timed_out": 0, "error": 0}
    assert len(rows(workdir)) == 5  # every finished row is kept

    res = _stage(workdir, "score")  # scoring what there is says what it is
    assert res.returncode == 0, res.stderr
    assert "failed answers 5/5" in res.stdout and "quality score n/a" in res.stdout, res.stdout
    assert "status is 'failed'" in res.stderr
    score = json.loads((workdir / "metrics" / "score.json").read_text())
    assert score["quality"]["score"] is None and "all 5 prompts failed" in score["quality"]["score_reason"]
    assert score["quality"]["on_topic_rate"] is None
    assert score["failures"]["crashed"] == 5 and score["run_status"] == "failed"
    assert score["throughput"]["app_tok_s"]["n"] == 0  # a crashed answer's timings measure nothing


def test_some_failures_count_as_zero_quality(virtual_device, workdir, stage_cache):
    cfg = stage_config(virtual_device, workdir, "prompts.limit=3", "tracking=none", "runtime.prompt_timeout_s=5",
                       cache=stage_cache)
    run_stages(cfg, workdir)
    clean = json.loads((workdir / "metrics" / "score.json").read_text())
    path = workdir / "artifacts" / "run" / "responses.jsonl"
    got = rows(workdir)
    got[0].update(crashed=True, error="app output ended before the tok/s line")
    path.write_text("".join(json.dumps(r) + "\n" for r in got))
    run_stages(cfg, workdir, "score")
    score = json.loads((workdir / "metrics" / "score.json").read_text())
    assert score["failures"]["failed"] == 1 and score["rates"]["failed"] == pytest.approx(1 / 3)
    quality = [json.loads(line) for line in (workdir / "metrics" / "quality.jsonl").read_text().splitlines()]
    assert quality[0]["quality_score"] == 0.0 and quality[0]["on_topic"] is False
    assert quality[0]["failed"] == "crashed"
    assert score["quality"]["score"] < clean["quality"]["score"]
    assert score["throughput"]["decode_tok_s"]["n"] + score["throughput"]["decode_tok_s"]["n_missing"] == 2


def _keep_previous_run(cfg, work: Path) -> tuple[Path, str]:
    run_stages(cfg, work, "fetch", "push", "run")
    rows_file = work / "artifacts" / "run" / "responses.jsonl"
    return rows_file, rows_file.read_text()


@pytest.mark.parametrize("line, message", [
    ({"id": "nul", "prompt": "a NUL \u0000 inside"}, "NUL"),
    ({"id": "dash", "prompt": "-n 5 tell me a joke"}, "starts with '-'"),
    ({"id": "bang", "prompt": "!reload /etc"}, "starts with '!'"),
], ids=["nul", "dash", "bang"])
def test_prompt_the_app_would_refuse_is_refused_at_load_with_file_line(virtual_device, workdir, stage_cache, line,
                                                                       message):
    good = workdir / "good.jsonl"
    good.write_text(json.dumps({"id": "q", "prompt": "What is the capital of France?"}) + "\n")
    cfg = stage_config(virtual_device, workdir, "prompts=custom", f"prompts.path={good}", "tracking=none",
                       cache=stage_cache)
    rows_file, before = _keep_previous_run(cfg, workdir)
    bad = workdir / "bad.jsonl"
    bad.write_text(json.dumps({"id": "ok", "prompt": "fine"}) + "\n" + json.dumps(line) + "\n")
    cfg.prompts.path = str(bad)
    with pytest.raises(StageError, match=rf"bad.jsonl:2: .*{message}"):
        run_stages(cfg, workdir, "run")
    assert rows_file.read_text() == before  # nothing already finished is lost


def test_prompt_over_the_context_is_refused_before_any_device_work(virtual_device, workdir, stage_cache):
    good = workdir / "good.jsonl"
    good.write_text(json.dumps({"id": "q", "prompt": "What is the capital of France?"}) + "\n")
    cfg = stage_config(virtual_device, workdir, "prompts=custom", f"prompts.path={good}", "tracking=none",
                       "sequence=s128", cache=stage_cache)
    rows_file, before = _keep_previous_run(cfg, workdir)
    long = workdir / "long.jsonl"
    long.write_text(json.dumps({"id": "ok", "prompt": "Name a colour."}) + "\n"
                    + json.dumps({"id": "long", "prompt": "word " * 200 + "?"}) + "\n"
                    + json.dumps({"id": "huge", "prompt": "x" * 5_000_000}) + "\n")  # the 5 MB line of the report
    cfg.prompts.path = str(long)
    virtual_device.set_faults(disk_full=True)  # any device command would now fail differently: none may run
    with pytest.raises(StageError) as e:
        run_stages(cfg, workdir, "run")
    assert re.search(r"long.jsonl:2: prompt 'long' is \d+ tokens as sent, over sequence.context=\d+", str(e.value))
    assert re.search(r"long.jsonl:3: prompt 'huge' is 5000000 bytes, far over sequence.context", str(e.value))
    assert rows_file.read_text() == before


def test_corrupted_weights_on_the_device_are_refused_before_any_prompt(virtual_device, workdir, stage_cache):
    """A same-size in-place corruption with the original mtime passes `push_verify=stat`; `run` re-hashes."""
    cfg = stage_config(virtual_device, workdir, "prompts.limit=1", "tracking=none", cache=stage_cache)
    run_stages(cfg, workdir, "fetch", "push")
    push = json.loads((workdir / "artifacts" / "push.json").read_text())
    weights = next(p for p in _device_files(virtual_device, push["model"]["remote_dir"])
                   if p.name == "model.safetensors")
    st = weights.stat()
    with weights.open("r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    run_stages(cfg, workdir, "push")  # stat verification trusts it (documented)
    with pytest.raises(StageError, match=r"model files on device .* do not match .*model.safetensors: sha256"):
        run_stages(cfg, workdir, "run")
    assert not (workdir / "artifacts" / "run" / "responses.jsonl").exists()
    cfg.device.push_verify = "full"  # the repair: push re-hashes and re-sends; run then goes through
    run_stages(cfg, workdir, "push", "run")
    run_json = json.loads((workdir / "artifacts" / "run" / "run.json").read_text())
    assert run_json["status"] == "complete" and run_json["device_check"]["method"] == "sha256"


def _device_files(vd, remote_dir: str) -> list[Path]:
    """Host paths of the files under a device dir (wherever the device keeps its storage under its root)."""
    tail = remote_dir.strip("/")
    return [p for p in Path(vd.root).rglob("*") if p.is_file() and tail in p.as_posix()]


def test_unexpected_error_is_recorded_as_failed_not_complete(virtual_device, workdir, stage_cache, monkeypatch):
    cfg = stage_config(virtual_device, workdir, "prompts.limit=2", "tracking=none", cache=stage_cache)
    run_stages(cfg, workdir, "fetch", "push")
    import pipeline.run.drive

    def boom(*args, **kwargs):
        raise RuntimeError("a bug in the runner")

    monkeypatch.setattr(pipeline.run.drive, "run_prompts", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        run_stages(cfg, workdir, "run")
    run_json = json.loads((workdir / "artifacts" / "run" / "run.json").read_text())
    assert run_json["status"] == "failed" and "a bug in the runner" in run_json["error"]


def test_a_stale_running_status_is_recognised_as_killed(tmp_path):
    from pipeline.run.record import run_status

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import platform

    assert run_status({"status": "running", "pid": dead.pid, "hostname": platform.node()}) == "killed"
    assert run_status({"status": "running", "pid": os.getpid(), "hostname": platform.node()}) == "running"
    assert run_status({"status": "complete"}) == "complete"


def test_score_writes_only_its_own_outputs(virtual_device, workdir, stage_cache):
    cfg = stage_config(virtual_device, workdir, "prompts.limit=2", "tracking=none", cache=stage_cache)
    run_stages(cfg, workdir, "fetch", "push", "run")
    run_dir = workdir / "artifacts" / "run"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    run_stages(cfg, workdir, "score")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    assert (workdir / "metrics" / "quality.jsonl").exists()


def test_answers_with_undecodable_bytes_are_flagged_per_row_and_counted(virtual_device, workdir, stage_cache,
                                                                        capsys):
    cfg = stage_config(virtual_device, workdir, "prompts.limit=2", "tracking=none", cache=stage_cache)
    cfg.device.virtual.faults = {"app_invalid_utf8": True}
    run_stages(cfg, workdir)
    score = json.loads((workdir / "metrics" / "score.json").read_text())
    assert score["undecodable"]["rows"] == 2 and score["undecodable"]["replaced_chars"] >= 2
    assert score["rates"]["undecodable"] == 1.0
    quality = [json.loads(line) for line in (workdir / "metrics" / "quality.jsonl").read_text().splitlines()]
    assert all(q["undecodable_chars"] > 0 for q in quality)  # a 1.00 is never unflagged
    import csv

    with (workdir / "metrics" / "prompts.csv").open() as f:
        assert [r["undecodable"] for r in csv.DictReader(f)] == ["1.0", "1.0"]
    assert "UNDECODABLE: 2 of 2 answers" in capsys.readouterr().out
