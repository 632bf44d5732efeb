"""DVC stage `run`: drive the app's REPL on the device prompt by prompt → `artifacts/run/`.

Reads fetch.json/push.json and the prompt set; refuses, before touching anything, every prompt the app would not
answer as one prompt or that does not fit the sequence budget; re-hashes the app and model files on the device;
then runs the prompts (pipeline.run.runner) into the run directory (pipeline.run.record: resumable rows, telemetry,
an honest run.json status). Exit status ≠ 0 for `interrupted` and `failed` runs.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from pipeline.config import Config
from pipeline.context import RunContext
from pipeline.device.pool import device_scope
from pipeline.fetch.fetched import resolved
from pipeline.interrupts import Interrupted, signal_name, signum_of
from pipeline.run.identity import RunIdentity, ask_keys, run_identity
from pipeline.run.record import RunDir, now
from pipeline.run.runner import RunItem
from pipeline.stages import StageError, StageInterrupted, read_json, stage_main
from pipeline.workspace import git_commit, git_dirty, shared_root


@device_scope()  # the device is held while the stage runs (one device, one run), then released
def run(cfg: Config, workdir: Path, ctx: RunContext | None = None) -> Path:
    ctx = ctx or RunContext.from_env()
    from pipeline.apps.launch import app_env, app_launcher
    from pipeline.device.connect import device_props
    from pipeline.device.remote import TransferError
    from pipeline.device.telemetry import TelemetrySampler
    from pipeline.device.transfer import host_entries, verify_dirs
    from pipeline.run.preflight import check_device, check_fetched
    from pipeline.run.runner import DeviceLost, RunOptions, run_prompts
    from pipeline.stages.device import open_stage_device

    art = workdir / cfg.paths.artifacts
    fetch, push = resolved(read_json(art / "fetch.json", "fetch"), art / "fetch.json"), read_json(art / "push.json",
                                                                                                  "push")
    checks = _preflight(lambda: check_fetched(cfg, fetch))  # files: before anything is parsed or launched
    count_tokens, fmt = _tokenizer(cfg, fetch, push)
    prompts = load_prompt_set(cfg, count_tokens)
    items = checked_items(cfg, prompts, count_tokens, fmt.count)  # what the runner/app would refuse, before any I/O
    dev = open_stage_device(cfg, f"run@{workdir}", pin=push["device"].get("serial") if cfg.device.kind == "pool"
                            else None)
    try:  # results are credited only to files the device holds
        checked = verify_dirs(dev, [(k, push[k]["remote_dir"], host_entries(fetch[k]["files"], f"fetch.json:{k}"))
                                    for k in ("app", "model")])
    except TransferError as e:
        raise StageError(str(e)) from None
    checks["device"] = _preflight(lambda: check_device(cfg, device_props(dev)))  # the phone, before any prompt
    identity = run_identity(cfg, fetch, push)
    asks = ask_keys([p.to_item() for p in prompts], [it.sent_text for it in items], cfg.session.mode == "shared")
    record = RunDir(art / "run")
    done = record.resume(identity, asks)
    record.write_prompts(p.to_item() | {"set": p.set_name, "tags": list(p.tags)} for p in prompts)
    record.start(provenance(cfg, fetch, push, identity) | {"device_check": checked, "preflight": checks},
                 rows=len(done))

    sampler = TelemetrySampler(lambda c: dev.shell(c, timeout=10), interval_s=cfg.runtime.telemetry_interval_s)
    a, app_dir = cfg.app, push["app"]["remote_dir"]
    env = app_env(a.env, app_dir, virtual_only=a.virtual_only, template=a.template, past_end_token=a.past_end_token,
                  past_end_unwritten_id=a.past_end_unwritten_id)
    past_ends = past_end_rows(cfg, fmt, items)
    start_app = app_launcher(dev, app_dir, push["model"]["remote_dir"], a.device_arg, env, a.binary,
                             on_pid=lambda pid: setattr(sampler, "pid", pid))
    status, reason = "failed", "the run stage stopped before its first prompt"
    sampler.start()
    with record.rows() as write_row:
        try:
            run_prompts(items, start_app, RunOptions.from_config(cfg.runtime, cfg.session.mode,
                                                                 cfg.sequence.max_new_tokens, cfg.model.max_seq_len),
                        count_tokens=count_tokens, count_prompt=fmt.count, skip=done,
                        on_row=lambda row: write_row(row | {"past_end": past_ends.get(row["sent_text"]),
                                                             "ask_key": asks[row["prompt_id"]]}),
                        progress=not ctx.quiet)
            status, reason = write_row.tally.verdict()
        except DeviceLost as e:
            status, reason = "interrupted", str(e)
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (pipeline/interrupts.py): recorded, then said once
            status, reason = "interrupted", f"interrupted by {signal_name(signum_of(e))}"
            raise Interrupted(signum_of(e), f"{reason} after {write_row.tally.rows} row(s) on disk "
                                            f"({record.rows_path})") from None
        except BaseException as e:  # a bug or an unexpected error: never recorded as complete
            status, reason = "failed", f"{type(e).__name__}: {e}"
            raise
        finally:
            record.add_telemetry(sampler.stop())
            record.finish(status, reason, write_row.tally)
    tally = write_row.tally
    if status == "interrupted":
        raise StageInterrupted(f"interrupted after {tally.rows} rows: {reason}. Finished rows are kept in "
                               f"{record.path}")
    if status == "failed":
        raise StageError(f"{reason}. The rows are kept in {record.path} (app.log has the app's output); fix the "
                         "cause and re-run")
    if tally.failed:
        print(f"run: warning — {tally.describe()}; they count as failed answers in the score", file=sys.stderr)
    return record.path


def past_end_rows(cfg: Config, fmt, items: list[RunItem]) -> dict[str, dict]:
    """Per sent line, the row's ``past_end`` {case, id_fed, index}: the same buffer model the reference app feeds
    from (pipeline/prompt_model/prompt_buffer.py). For the real simple_app it is the model of what the phone does: a
    never-written slot's id is unknowable there, so ``id_fed`` is null for case ``unwritten``."""
    from pipeline.prompt_model.prompt_buffer import past_end

    a = cfg.app
    setting, fallback = (a.past_end_token, a.past_end_unwritten_id) if a.virtual_only else ("faithful", None)
    try:
        return {it.sent_text: past_end(fmt, setting, it.sent_text, fallback).to_row() for it in items}
    except ValueError as e:  # PromptFormatError: a template whose prefix/suffix cannot be told from the line
        raise StageError(f"app.past_end_token={setting}: {e}") from None


def load_prompt_set(cfg: Config, count_tokens) -> list:
    """The configured prompt set (file or generator), validated; `prompts.limit` keeps the first N."""
    from pipeline.run.prompts import PromptSetError, length_prompts, load_prompts

    pr = cfg.prompts
    try:
        if pr.generator == "length":
            prompts = length_prompts(cfg.sequence.context, count_tokens, n=pr.n or 5)
        else:
            path = Path(pr.path or "")
            prompts = load_prompts(path if path.is_absolute() else shared_root() / path, set_name=pr.name,
                                   newlines=pr.newlines)
    except PromptSetError as e:
        raise StageError(str(e)) from None
    return prompts[: pr.limit] if pr.limit else prompts


def checked_items(cfg: Config, prompts: list, count_tokens, count_prompt) -> list[RunItem]:
    """The lines to send, checked as the runner and the app would, with the prompt's FILE:LINE in every error."""
    from pipeline.run.prompts import PromptSetError, sent_lines

    try:
        sent = sent_lines(prompts, cfg.prompting.template, count_tokens, cfg.sequence.context,
                          f"the line sent (prompting={cfg.prompting.name})", count_prompt=count_prompt,
                          positions=cfg.model.max_seq_len - cfg.sequence.max_new_tokens)
    except PromptSetError as e:
        raise StageError(str(e)) from None
    return [RunItem(p.id, p.prompt, line) for p, line in zip(prompts, sent, strict=True)]


def _tokenizer(cfg: Config, fetch: dict, push: dict):
    """The model's token counter (answers) and the app's prompt format (what it feeds per line) on the host."""
    from pipeline.apps.simple_app import model_type_of
    from pipeline.models.count import TokenizerNotFound, TokenizerUnreadable, token_counter
    from pipeline.models.tokenizer_bin import TokenizerBinError
    from pipeline.prompt_model.prompt_format import PromptFormatError, load_format

    local = Path(fetch["model"]["local_dir"])
    try:
        counter = token_counter(local)
    except (TokenizerNotFound, TokenizerUnreadable) as e:
        raise StageError(str(e)) from None
    try:
        return counter, load_format(cfg.app.template, local,
                                    gemma=model_type_of(push["model"]["remote_dir"]) == "gemma")
    except PromptFormatError as e:
        raise StageError(f"app.template={cfg.app.template}: {e}") from None
    except (TokenizerBinError, OSError, ValueError) as e:
        raise StageError(f"{local}: the model's tokenizer cannot be read ({e}) — re-run fetch") from None


def _preflight(check):
    from pipeline.run.preflight import PreflightError

    try:
        return check()
    except PreflightError as e:
        raise StageError(f"before the first prompt: {e}") from None


def context_record(cfg: Config) -> dict:
    """What a KV wrap would do with this app, and how the run avoids it (see pipeline.run.runner.RunOptions)."""
    from pipeline.config import APP_KV_POSITIONS

    return {"positions": min(cfg.model.max_seq_len, APP_KV_POSITIONS),
            "app_at_wrap": "clears its KV cache (reference app)" if cfg.app.virtual_only
            else "overwrites the oldest positions (simple_app's ring)",
            "policy": "shared session: a fresh app process before a prompt that could wrap (rows: context_reset)"
            if cfg.session.mode == "shared" else "fresh session: one process per prompt, within the budget"}


def provenance(cfg: Config, fetch: dict, push: dict, identity: RunIdentity) -> dict:
    device = push["device"]
    kind = device.get("kind", "unknown")
    root = shared_root()
    pick = ("repo_id", "commit", "manifest_sha256", "source")
    return {
        "run_key": identity.key,
        "identity": identity.to_record(),
        "device": device,
        "throughput_source": "host CPU via the virtual device — not a phone measurement" if kind == "virtual"
        else "phone",
        "host": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "app": {k: fetch["app"].get(k) for k in pick}
        | {"name": cfg.app.name, "template": cfg.app.template, "remote_dir": push["app"]["remote_dir"]},
        "model": {k: fetch["model"].get(k) for k in pick}
        | {"name": cfg.model.name, "quant": cfg.model.quant, "remote_dir": push["model"]["remote_dir"],
           "standin_model": cfg.device.virtual.standin_model if kind == "virtual" else None},
        "session": cfg.session.mode,
        "context": context_record(cfg),
        "prompts": cfg.prompts.name,
        "git": {"commit": git_commit(root), "dirty": git_dirty(root)},
        "started": now(),
    }


def main() -> None:
    stage_main("run", run)


if __name__ == "__main__":
    main()
