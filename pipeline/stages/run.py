"""DVC stage `run`: drive the app's REPL on the device prompt by prompt → `artifacts/run/` (DESIGN §3).

Outputs: `responses.jsonl` (one row per prompt × repeat), `telemetry.jsonl`, `app.log` (a terminal-style
transcript that `python -m pipeline.apps.simple_app parse` reads back), `run.json` (provenance).
Resumable: rows are appended and fsynced as they finish; a re-run with the same `run_key` skips them, a run with
another key starts over (the directory is a DVC `persist: true` output).
"""

from __future__ import annotations

import base64
import json
import os
import platform
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

from pipeline.config import Config, config_hash
from pipeline.runner import FailureTally, RunItem
from pipeline.stages import StageError, device_for, quiet, read_json, stage_main, write_json
from pipeline.workspace import shared_root

RUN_SECTIONS = ("model", "app", "device", "prompts", "sequence", "prompting", "session", "runtime")


def run(cfg: Config, workdir: Path) -> Path:
    art = workdir / cfg.paths.artifacts
    fetch, push = read_json(art / "fetch.json", "fetch"), read_json(art / "push.json", "push")
    count_tokens = _counter(fetch)
    prompts = load_prompt_set(cfg, count_tokens)
    items = checked_items(cfg, prompts, count_tokens)  # everything the runner would refuse, refused before any I/O
    out = art / "run"
    run_key = _run_key(cfg, fetch, push)

    from pipeline.device.shellv2 import ShellV2
    from pipeline.device.telemetry import TelemetrySampler
    from pipeline.runner import DeviceLost, RunOptions, run_prompts

    dev = device_for(cfg, workdir, "run")
    device_check = verify_device_files(dev, fetch, push)  # results are credited only to files the device holds
    done = resume_state(out, run_key)
    with (out / "prompts.jsonl").open("w", encoding="utf-8") as f:  # what score needs: references, rules, tags
        f.writelines(json.dumps(p.to_item() | {"set": p.set_name, "tags": list(p.tags)}, ensure_ascii=False) + "\n"
                     for p in prompts)
    meta = provenance(cfg, fetch, push, run_key, workdir) | {"device_check": device_check,
                                                             "pid": os.getpid(), "hostname": platform.node()}
    write_json(out / "run.json", {**meta, "status": "running", "rows": len(done)})

    sampler = TelemetrySampler(lambda c: dev.shell(c, timeout=10), interval_s=cfg.runtime.telemetry_interval_s)
    start_app = _launcher(cfg, push, dev, ShellV2, sampler)
    opts = RunOptions(session=cfg.session.mode, repeats=cfg.runtime.repeats, warmup=cfg.runtime.warmup,
                      cooldown_s=cfg.runtime.cooldown_s, prompt_timeout_s=cfg.runtime.prompt_timeout_s,
                      load_timeout_s=cfg.runtime.load_timeout_s, max_new_tokens=cfg.sequence.max_new_tokens,
                      max_output_bytes=cfg.runtime.max_output_bytes)
    rows_file = (out / "responses.jsonl").open("a", encoding="utf-8")
    log_file = (out / "app.log").open("a", encoding="utf-8")
    if log_file.tell() == 0:
        log_file.write(">>> ")
    tally = FailureTally.from_file(out / "responses.jsonl")

    def on_row(row: dict) -> None:
        rows_file.write(json.dumps(row, ensure_ascii=False) + "\n")
        rows_file.flush()
        os.fsync(rows_file.fileno())
        raw = base64.b64decode(row["raw_output_b64"] or b"").decode("utf-8", "replace")
        # each answer's bytes end with the app's next `>>> `, so the log reads like the terminal did
        log_file.write(row["sent_text"] + "\n" + (raw or f"[no output: {row['error']}]\n>>> "))
        log_file.flush()
        tally.add(row)

    sampler.start()
    status, reason = "failed", "the run stage stopped before its first prompt"
    try:
        run_prompts(items, start_app, opts, count_tokens=count_tokens, skip=done, on_row=on_row,
                    progress=not quiet())
        status, reason = tally.verdict()
    except DeviceLost as e:
        status, reason = "interrupted", str(e)
    except KeyboardInterrupt:
        status, reason = "interrupted", "interrupted by the user (Ctrl-C)"
        raise
    except BaseException as e:  # a bug or an unexpected error: never recorded as complete
        status, reason = "failed", f"{type(e).__name__}: {e}"
        raise
    finally:
        samples = sampler.stop()
        with (out / "telemetry.jsonl").open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(s) + "\n" for s in samples)
        rows_file.close()
        log_file.close()
        write_json(out / "run.json", {**meta, "status": status, "error": reason, "rows": tally.rows,
                                       "failures": tally.counts(), "ended": _now()})
    if status == "interrupted":
        raise StageError(f"interrupted after {tally.rows} rows: {reason}. Finished rows are kept in {out}; "
                         "re-run (`dvc repro`) to continue where it stopped")
    if status == "failed":
        raise StageError(f"{reason}. The rows are kept in {out} (app.log has the app's output); fix the cause "
                         "and re-run")
    if tally.failed:
        print(f"run: warning — {tally.describe()}; they count as failed answers in the score", file=sys.stderr)
    return out


def checked_items(cfg: Config, prompts: list, count_tokens) -> list[RunItem]:
    """The lines to send, checked as the runner and the app would, with the prompt's FILE:LINE in every error."""
    from pipeline.prompts import PromptSetError, check_lengths, check_line

    sent = [cfg.prompting.template.replace("{prompt}", p.prompt) for p in prompts]
    try:
        for p, line in zip(prompts, sent, strict=True):
            check_line(p.where or f"prompt {p.id!r}", f"the line sent (prompting={cfg.prompting.name})", line)
        check_lengths(prompts, sent, count_tokens, cfg.sequence.context)
    except PromptSetError as e:
        raise StageError(str(e)) from None
    return [RunItem(p.id, p.prompt, line) for p, line in zip(prompts, sent, strict=True)]


def verify_device_files(dev, fetch: dict, push: dict) -> dict:
    """sha256 every app and model file on the device against the fetched manifests, before the first prompt.

    WHY always: push may trust files by size+mtime (`device.push_verify=stat`), and a device can be changed
    behind DVC's back; a run's results must never be credited to a manifest the device did not hold. One
    `sha256sum` per directory batch; on a phone this reads the model once (seconds), on the virtual device less.
    """
    import time

    from pipeline.device.transfer import TransferError, host_entries, verify_on_device

    t0, files, nbytes = time.monotonic(), 0, 0
    for kind in ("app", "model"):
        entries = host_entries(fetch[kind]["files"], source=f"fetch.json:{kind}")
        try:
            bad = verify_on_device(dev, push[kind]["remote_dir"], entries)
        except TransferError as e:
            raise StageError(str(e)) from None
        if bad:
            raise StageError(f"the {kind} files on device {dev.serial} do not match the fetched manifest "
                             f"({'; '.join(bad[:3])}{' …' if len(bad) > 3 else ''}) — re-run push with "
                             "`device.push_verify=full` (`python -m pipeline.stages.push --verify full`), then run")
        files += len(entries)
        nbytes += sum(e.size for e in entries)
    return {"method": "sha256", "files": files, "bytes": nbytes, "seconds": round(time.monotonic() - t0, 3)}


def load_prompt_set(cfg: Config, count_tokens) -> list:
    """The configured prompt set (file or generator), validated; `prompts.limit` keeps the first N."""
    from pipeline.prompts import PromptSetError, length_prompts, load_prompts

    pr = cfg.prompts
    try:
        if pr.generator == "length":
            prompts = length_prompts(cfg.sequence.context, count_tokens, n=pr.n or 5)
        else:
            path = Path(pr.path or "")
            if not path.is_absolute():
                path = shared_root() / path
            prompts = load_prompts(path, set_name=pr.name, newlines=pr.newlines)
    except PromptSetError as e:
        raise StageError(str(e)) from None
    return prompts[: pr.limit] if pr.limit else prompts


def resume_state(out: Path, run_key: str) -> set[tuple[str, int]]:
    """Finished (prompt_id, repeat) pairs of an interrupted run with the same key; other runs are cleared."""
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "run.json"
    rows = out / "responses.jsonl"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta.get("run_key") != run_key:
        for name in ("responses.jsonl", "telemetry.jsonl", "app.log", "run.json", "prompts.jsonl"):
            (out / name).unlink(missing_ok=True)
        return set()
    if meta.get("status") == "running":
        print(f"run: the previous run (pid {meta.get('pid')} on {meta.get('hostname')}) ended without recording "
              "its status — it was killed; resuming from its finished rows", file=sys.stderr)
    done = set()
    good_lines = []
    for line in rows.read_text(encoding="utf-8").splitlines() if rows.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash mid-write: redo that prompt
            continue
        done.add((row["prompt_id"], row["repeat"]))
        good_lines.append(line)
    rows.write_text("".join(line + "\n" for line in good_lines), encoding="utf-8")
    if done:
        print(f"run: resuming — {len(done)} finished rows kept")
    return done


def run_status(run_json: dict) -> str:
    """The run's status as recorded, with a stale ``running`` (the process was killed) reported as ``killed``."""
    status = run_json.get("status", "unknown")
    if status != "running":
        return status
    pid, host = run_json.get("pid"), run_json.get("hostname")
    if host == platform.node() and isinstance(pid, int) and _pid_alive(pid):
        return "running"
    return "killed"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _launcher(cfg: Config, push: dict, dev, shell_cls, sampler):
    from pipeline.apps.simple_app import app_command
    from pipeline.runner import AppProcess

    app_dir, model_dir = push["app"]["remote_dir"], push["model"]["remote_dir"]
    env = {k: v.replace("{app_dir}", app_dir) for k, v in cfg.app.env.items()}
    if cfg.app.virtual_only:  # the reference app reads these; simple_app's template and bug are compiled in
        env["ODEVAL_TEMPLATE"] = cfg.app.template
        if cfg.app.past_end_token is not None:
            env["ODEVAL_QUIRK_PAST_END_TOKEN"] = str(cfg.app.past_end_token)
    cmd = app_command(app_dir, model_dir, cfg.app.device_arg, env, binary=cfg.app.binary)

    class TrackedProcess(AppProcess):
        """Points the telemetry sampler at each new app pid (fresh sessions start one per prompt)."""

        def __setattr__(self, key, value):
            super().__setattr__(key, value)
            if key == "pid":
                sampler.pid = value

    def remote_kill(pid: int) -> None:
        from adbutils import AdbError

        try:
            dev.shell(f"kill -9 {shlex.quote(str(int(pid)))}", timeout=10)
        except (AdbError, OSError) as e:  # the device is gone: nothing we can kill; the run stops resumably
            print(f"run: could not kill app pid {pid} on {dev.serial}: {e}", file=sys.stderr)

    def start_app() -> AppProcess:
        from adbutils import AdbError

        from pipeline.device.shellv2 import ShellV2Error

        try:
            channel = shell_cls.open(dev, cmd)
        except (AdbError, ShellV2Error) as e:  # offline / gone: the runner stops with a resumable state
            raise ConnectionError(f"{dev.serial}: {e}") from e
        return TrackedProcess(channel=channel, remote_kill=remote_kill)

    return start_app


def _counter(fetch: dict):
    from pipeline.models.count import TokenizerNotFound, token_counter

    try:
        return token_counter(Path(fetch["model"]["local_dir"]))
    except TokenizerNotFound as e:
        raise StageError(str(e)) from None


def _run_key(cfg: Config, fetch: dict, push: dict) -> str:
    """What makes two runs the same run: config sections that change answers + the exact bits on the device."""
    parts = [config_hash(cfg, RUN_SECTIONS), fetch["model"]["manifest_sha256"], fetch["app"]["manifest_sha256"],
             push["device"].get("serial", ""), push["device"].get("kind", "")]
    import hashlib

    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def provenance(cfg: Config, fetch: dict, push: dict, run_key: str, workdir: Path) -> dict:
    from pipeline.tracking import git_commit, git_dirty

    device = push["device"]
    kind = device.get("kind", "unknown")
    root = shared_root()
    return {
        "run_key": run_key,
        "config_hash": config_hash(cfg, RUN_SECTIONS),
        "device": device,
        "throughput_source": "host CPU via the virtual device — not a phone measurement" if kind == "virtual"
        else "phone",
        "host": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "app": {k: fetch["app"].get(k) for k in ("repo_id", "commit", "manifest_sha256", "source")}
        | {"name": cfg.app.name, "template": cfg.app.template, "remote_dir": push["app"]["remote_dir"]},
        "model": {k: fetch["model"].get(k) for k in ("repo_id", "commit", "manifest_sha256", "source")}
        | {"name": cfg.model.name, "quant": cfg.model.quant, "remote_dir": push["model"]["remote_dir"],
           "standin_model": cfg.device.virtual.standin_model if kind == "virtual" else None},
        "session": cfg.session.mode,
        "prompts": cfg.prompts.name,
        "git": {"commit": git_commit(root), "dirty": git_dirty(root)},
        "started": _now(),
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def main() -> None:
    stage_main("run", run)


if __name__ == "__main__":
    main()

