"""DVC stage `run`: drive the app's REPL on the device prompt by prompt → `artifacts/run/`.

Reads fetch.json/push.json and the prompt set; refuses, before touching anything, every prompt the app would not
answer as one prompt or that does not fit the sequence budget (pipeline.run.plan); re-hashes the app and model files
on the device; then drives the prompts (pipeline.run.drive) into the run directory (pipeline.run.record: resumable
rows, telemetry, an honest run.json status). Exit status ≠ 0 for `interrupted` and `failed` runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.config import Config, budget
from pipeline.context import RunContext
from pipeline.device.pool import device_scope
from pipeline.fetch.fetched import resolved
from pipeline.run.identity import ask_keys, run_identity
from pipeline.run.plan import PlanError, checked_items, load_prompt_set, past_end_rows, prompt_tokenizer
from pipeline.run.provenance import provenance
from pipeline.run.record import RunDir
from pipeline.stages import StageError, StageInterrupted, read_json, stage_main, write_json


@device_scope()  # the device is held while the stage runs (one device, one run), then released
def run(cfg: Config, workdir: Path, ctx: RunContext | None = None) -> Path:
    ctx = ctx or RunContext.from_env()
    from pipeline.apps.launch import app_launcher, launch_command
    from pipeline.apps.simple_app_output import SimpleAppError
    from pipeline.device.connect import device_props
    from pipeline.device.remote import TransferError
    from pipeline.device.telemetry import TelemetrySampler
    from pipeline.device.transfer import host_entries, verify_dirs
    from pipeline.run.drive import drive
    from pipeline.run.preflight import PreflightError, check_device, check_fetched
    from pipeline.run.runner import RunOptions
    from pipeline.stages.device import open_stage_device

    art = workdir / cfg.paths.artifacts
    fetch = resolved(read_json(art / "fetch.json", "fetch"), art / "fetch.json")
    push = read_json(art / "push.json", "push")
    try:  # everything that can be refused is refused before the device is touched
        checks = check_fetched(cfg, fetch)
        count_tokens, fmt = prompt_tokenizer(cfg, fetch, push)
        prompts, prompt_source = load_prompt_set(cfg, count_tokens)  # prompt_source: a benchmark's pinned file
        items = checked_items(cfg, prompts, count_tokens, fmt.count)
        past_ends = past_end_rows(cfg, fmt, items)
        b = budget(cfg)  # the prompt set's own max_new_tokens and deadline where it sets them (prompts=ifeval)
        command, client = launch_command(cfg, push["app"]["remote_dir"], push["model"]["remote_dir"],
                                         fetch["model"]["files"], b.max_new_tokens)
    except (PreflightError, SimpleAppError) as e:
        raise StageError(f"before the first prompt: {e}") from None
    except PlanError as e:
        raise StageError(str(e)) from None
    dev = open_stage_device(cfg, f"run@{workdir}", pin=push["device"].get("serial") if cfg.device.kind == "pool"
                            else None)
    try:  # results are credited only to files the device holds, on the phone the config describes
        checked = verify_dirs(dev, [(k, push[k]["remote_dir"], host_entries(fetch[k]["files"], f"fetch.json:{k}"))
                                    for k in ("app", "model")])
        checks["device"] = check_device(cfg, device_props(dev), fetch)
    except TransferError as e:
        raise StageError(str(e)) from None
    except PreflightError as e:
        raise StageError(f"before the first prompt: {e}") from None
    identity = run_identity(cfg, fetch, push)
    asks = ask_keys([p.to_item() for p in prompts], [it.sent_text for it in items], cfg.session.mode == "shared")
    record = RunDir(art / "run")
    done = record.resume(identity, asks)
    record.write_prompts(p.to_item() | {"set": p.set_name, "tags": list(p.tags)} for p in prompts)
    record.start(provenance(cfg, fetch, push, identity) | {"device_check": checked, "preflight": checks}
                 | ({"prompt_source": prompt_source} if prompt_source else {}), rows=len(done))

    sampler = TelemetrySampler(lambda c: dev.shell(c, timeout=10), interval_s=cfg.runtime.telemetry_interval_s)
    start_app = app_launcher(dev, command, on_pid=lambda pid: setattr(sampler, "pid", pid), client=client)
    opts = RunOptions.from_config(cfg.runtime, cfg.session.mode, b.max_new_tokens, cfg.model.max_seq_len,
                                  prompt_timeout_s=b.prompt_timeout_s)
    status, reason, tally = drive(
        record, items, start_app, opts, count_tokens=count_tokens, count_prompt=fmt.count, skip=done,
        extra=lambda row: {"past_end": past_ends.get(row["sent_text"]), "ask_key": asks[row["prompt_id"]]},
        sampler=sampler, progress=not ctx.quiet)
    if status == "interrupted":
        raise StageInterrupted(f"interrupted after {tally.rows} rows: {reason}. Finished rows are kept in "
                               f"{record.path}")
    if status == "failed":
        raise StageError(f"{reason}. The rows are kept in {record.path} (app.log has the app's output); fix the "
                         "cause and re-run")
    if tally.failed:
        print(f"run: warning — {tally.describe()}; they count as failed answers in the score", file=sys.stderr)
    if cfg.runtime.name == "bench" and cfg.app.bench_binary:  # llama.cpp's own benchmark, beside the prompts
        from pipeline.apps.llama_bench import device_bench

        bench = device_bench(cfg, dev, push["app"]["remote_dir"], push["model"]["remote_dir"], fetch["model"]["files"])
        write_json(record.path / "bench.json", bench)
        if "error" in bench:
            print(f"run: warning — {bench['error']}; score reports the benchmark as missing", file=sys.stderr)
    return record.path


def main() -> None:
    stage_main("run", run)


if __name__ == "__main__":
    main()
