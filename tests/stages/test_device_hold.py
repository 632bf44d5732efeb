"""One device, one run: a run holds its device; a second run waits (saying who holds it) and changes nothing.

Two real `python -m pipeline.stages.run` processes on one virtual device, real adb, real reference app.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.locks import lock_dir_for, overlaps, read_leases
from tests.helpers.pipeline import rows, run_stages, stage_config

pytestmark = pytest.mark.timeout(300)


def _prepare(vd, work: Path, cache: Path, *overrides: str, faults: dict | None = None) -> None:
    cfg = stage_config(vd, work, "tracking=none", *overrides, cache=cache)
    cfg.device.virtual.faults = dict(faults or {})
    run_stages(cfg, work, "fetch", "push")
    (work / "params.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def _start_run(work: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.stages.run", "--quiet"], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=open(work / "stderr.txt", "w"), text=True)  # noqa: SIM115


def test_a_second_run_on_a_held_device_waits_and_neither_result_changes(make_virtual_device, tmp_path, stage_cache,
                                                                         monkeypatch):
    vd = make_virtual_device()
    shared = tmp_path / "repo"  # both runs belong to one checkout: one lock dir
    shared.mkdir()
    monkeypatch.setenv("ODEVAL_ROOT", str(shared))
    a, b = tmp_path / "a", tmp_path / "b"
    # A: a normal run, slowed by a cool-down so that B arrives while it runs; B: the crash fault
    _prepare(vd, a, stage_cache, "prompts.limit=6", "runtime.cooldown_s=1")
    _prepare(vd, b, stage_cache, "prompts.limit=2", faults={"app_crash_after_tokens": 1})
    env = {**os.environ, "ODEVAL_ROOT": str(shared)}
    run_a = _start_run(a, env)
    first = a / "artifacts" / "run" / "responses.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not first.exists() or not first.read_text().strip()):
        time.sleep(0.05)
    run_b = _start_run(b, env)
    run_a.wait(timeout=240)
    run_b.wait(timeout=240)
    err_b = (b / "stderr.txt").read_text()
    assert run_a.returncode == 0, (a / "stderr.txt").read_text()
    waits = [line for line in err_b.splitlines() if "waiting for" in line]
    assert len(waits) == 1 and f"(held by run@{a}, pid {run_a.pid} on " in waits[0], err_b

    got_a, got_b = rows(a), rows(b)
    assert len(got_a) == 6 and not any(r["crashed"] for r in got_a)  # B's fault never reached A's answers
    assert len(got_b) == 2 and all(r["crashed"] for r in got_b)  # B ran with its own options, after A
    assert json.loads((a / "artifacts" / "run" / "run.json").read_text())["status"] == "complete"
    assert run_b.returncode == 2 and "every prompt failed" in err_b  # B's truth: its crash fault, not A's state
    leases = [x for x in read_leases(lock_dir_for(shared)) if x["job"].startswith("run@")]
    assert len(leases) == 2 and not overlaps(leases)


def test_changing_the_options_of_a_held_virtual_device_is_refused(virtual_device, tmp_path, monkeypatch):
    from pipeline.device.pool import lease, single_device

    shared = tmp_path / "repo"
    monkeypatch.setenv("ODEVAL_ROOT", str(shared))
    cfg = stage_config(virtual_device, tmp_path, "tracking=none")
    dev = single_device(cfg.device)
    with lease([dev], {}, lock_dir_for(shared), 5, "holder-job", probe_devices=False):
        cli = subprocess.run([sys.executable, "-m", "pipeline.virtual", "start", "--root", str(virtual_device.root),
                              "--port", str(virtual_device.port), "--fault", "app_crash_after_tokens=1"],
                             capture_output=True, text=True, timeout=60, env={**os.environ, "ODEVAL_ROOT": str(shared)})
    assert cli.returncode != 0
    assert f"held by holder-job (pid {os.getpid()}" in cli.stderr + cli.stdout
    from pipeline.virtual import status

    assert not (status(virtual_device.root) or {}).get("options", {}).get("app_crash_after_tokens")
