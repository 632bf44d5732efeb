"""Real-phone faults through the whole run stage on the virtual device (real adb server, real daemon, reference
app): each transport loss keeps the finished rows, records `interrupted` with the reason, fails the stage with
one line, and the re-run completes without re-asking; a wrong chip, a missing library or a malformed tokenizer
fails with one line before the first prompt."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from pipeline.stages import StageError
from tests.helpers.pipeline import rows, run_stage_in_background, run_stages, stage_config, wait_rows

N = 5


def run_json(work: Path) -> dict:
    return json.loads((work / "artifacts" / "run" / "run.json").read_text())


def assert_interrupted_then_resumed(cfg, work: Path, err: str, n_before: int | None = None) -> None:
    """The acceptance of issue 18 item 1, for one fault that already happened."""
    assert "interrupted after" in err and "kept" in err and len(err.strip().splitlines()) == 1, err
    meta = run_json(work)
    assert meta["status"] == "interrupted" and meta["error"], meta
    before = rows(work)
    if n_before is not None:
        assert len(before) == n_before, [r["prompt_id"] for r in before]
    assert len(before) < N
    run_stages(cfg, work, "run")  # the re-run resumes
    after = rows(work)
    assert [r["prompt_id"] for r in after] == [f"q{i}" for i in range(N)]  # each prompt once, in order
    assert after[: len(before)] == before  # finished prompts kept, not re-asked
    assert run_json(work)["status"] == "complete"


def prompt_file(work: Path) -> Path:
    path = work / "five.jsonl"
    texts = ["What is the capital of France?", "Name a colour.", "What is 2+2?", "tell me a joke.",
             "What is the largest planet?"]
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": t}) + "\n" for i, t in enumerate(texts)))
    return path


def config(vd, work: Path, cache: Path, *overrides: str, faults: dict | None = None):
    cfg = stage_config(vd, work, "prompts=custom", f"prompts.path={prompt_file(work)}", "tracking=none",
                       *overrides, cache=cache)
    cfg.device.virtual.faults = dict(faults or {})
    return cfg


def stage_error(cfg, work: Path) -> str:
    with pytest.raises(StageError) as e:
        run_stages(cfg, work, "run")
    return str(e.value)


def test_transport_dropped_between_answers(make_virtual_device, workdir, stage_cache):
    vd = make_virtual_device()
    cfg = config(vd, workdir, stage_cache, "session=shared", faults={"drop_transport_after_answers": 2})
    run_stages(cfg, workdir, "fetch", "push")
    err = stage_error(cfg, workdir)
    assert "lost the device during prompt 'q2'" in err
    assert_interrupted_then_resumed(cfg, workdir, err, n_before=2)  # the fault fires once per setting


def test_transport_dropped_mid_answer(make_virtual_device, workdir, stage_cache):
    vd = make_virtual_device()
    cfg = config(vd, workdir, stage_cache, "session=fresh")
    run_stages(cfg, workdir, "fetch", "push", "run")
    clean = rows(workdir)  # the same greedy answers: place the cut inside the second one
    raw = [len(base64.b64decode(r["raw_output_b64"])) for r in clean]
    shutil.rmtree(workdir / "artifacts" / "run")
    cfg.device.virtual.faults = {"drop_transport_after_bytes": raw[0] + raw[1] // 2}
    err = stage_error(cfg, workdir)
    assert "lost the device during prompt 'q1'" in err
    assert_interrupted_then_resumed(cfg, workdir, err, n_before=1)
    assert [r["response"] for r in rows(workdir)] == [r["response"] for r in clean]


def test_app_killed_from_a_second_adb_shell(make_virtual_device, workdir, stage_cache):
    vd = make_virtual_device()
    # shared session + a cooldown: between answers the app sits at its prompt, where the kill lands
    cfg = config(vd, workdir, stage_cache, "session=shared", "runtime.cooldown_s=1.0")
    run_stages(cfg, workdir, "fetch", "push")
    proc = run_stage_in_background(cfg, workdir)
    wait_rows(workdir / "artifacts" / "run" / "responses.jsonl", 2, proc)
    pid = vd.device.shell("pidof simple_app", timeout=10).strip()
    assert pid, "no app running between answers"
    vd.device.shell(f"kill -9 {int(pid)}", timeout=10)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    line = [x for x in err.splitlines() if "interrupted after" in x]
    assert line and "SIGKILL" in line[0], err
    assert "resume this run: `python -m pipeline.stages.run --quiet` in " in line[0], line
    assert_interrupted_then_resumed(cfg, workdir, line[0])


def test_device_gone(make_virtual_device, workdir, stage_cache):
    vd = make_virtual_device()
    cfg = config(vd, workdir, stage_cache, "session=fresh", "runtime.cooldown_s=0.5")
    run_stages(cfg, workdir, "fetch", "push")
    proc = run_stage_in_background(cfg, workdir)
    wait_rows(workdir / "artifacts" / "run" / "responses.jsonl", 1, proc)
    from pipeline.virtual import stop

    stop(vd.root)  # the phone is unplugged
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    line = [x for x in err.splitlines() if "interrupted after" in x]
    assert line, err
    assert_interrupted_then_resumed(cfg, workdir, line[0])


def test_wrong_chip_fails_before_the_first_prompt(make_virtual_device, workdir, stage_cache):
    vd = make_virtual_device()
    cfg = config(vd, workdir, stage_cache, faults={"props_override": {"ro.soc.model": "SM8550",
                                                                      "ro.board.platform": "kalama"}})
    run_stages(cfg, workdir, "fetch", "push")
    err = stage_error(cfg, workdir)
    assert len(err.splitlines()) == 1, err
    assert "app.device_arg=8gen3" in err and "SM8550 (8gen2)" in err and "before the first prompt" in err
    assert not (workdir / "artifacts" / "run" / "responses.jsonl").exists()
    assert vd.device.shell("pidof simple_app", timeout=10).strip() == ""
    # the same fake phone with the matching app setting runs
    cfg.app.device_arg = "8gen2"
    run_stages(cfg, workdir, "run")
    assert len(rows(workdir)) == N and run_json(workdir)["preflight"]["device"]["chip_checked"] == "8gen2"


def test_a_virtual_device_cannot_stop_saying_it_is_virtual(virtual_device):
    virtual_device.set_faults(props_override={"ro.odeval.virtual": "0", "ro.soc.model": "SM8650"})
    assert virtual_device.device.shell("getprop ro.odeval.virtual", timeout=10).strip() == "1"
    assert virtual_device.device.shell("getprop ro.soc.model", timeout=10).strip() == "SM8650"


def test_missing_library_fails_before_the_first_prompt(virtual_device, workdir, stage_cache):
    cfg = config(virtual_device, workdir, stage_cache, "app.required_files=[libQnnHtpV75Skel.so]")
    run_stages(cfg, workdir, "fetch", "push")
    err = stage_error(cfg, workdir)
    assert len(err.splitlines()) == 1, err
    assert "libQnnHtpV75Skel.so is missing" in err and "app=reference" in err
    assert not (workdir / "artifacts" / "run").exists()


@pytest.mark.parametrize("name, content, says", [
    ("tokenizer.bin", b"\x10\x00\x00\x00\x00\x00", "truncated entry header"),
    ("tokenizer.json", b'{"model": ', "tokenizer.json"),
    ("config.json", b"[1, 2]", "must hold a JSON object"),
])
def test_malformed_model_file_fails_before_the_app_starts(virtual_device, workdir, stage_cache, name, content, says):
    cfg = config(virtual_device, workdir, stage_cache)
    run_stages(cfg, workdir, "fetch", "push")
    fetch_path = workdir / "artifacts" / "fetch.json"
    fetch = json.loads(fetch_path.read_text())
    bad = workdir / "bad-model"  # a corrupted copy: the shared cache stays intact for other tests
    shutil.copytree(fetch_path.parent / fetch["model"]["local_dir"], bad)  # local_dir is relative to fetch.json
    (bad / name).write_bytes(content)
    fetch["model"]["local_dir"] = str(bad)
    fetch_path.write_text(json.dumps(fetch))
    err = stage_error(cfg, workdir)
    assert len(err.splitlines()) == 1, err
    assert f"{bad / name}" in err and says in err and "re-fetch" in err
    assert not (workdir / "artifacts" / "run").exists()
