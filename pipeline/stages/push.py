"""DVC stage `push`: deploy the fetched app + model to the device, incrementally and verified.

Reads ``artifacts/fetch.json``, pushes each entry's files to ``<remote_root>/apps|models/<name>@<commit7>/`` with
:func:`pipeline.device.transfer.push_dir`, and writes

- ``artifacts/push.json`` — what is on which device (deterministic, no timings: `run` depends on it, so it must not
  change when nothing changed);
- ``artifacts/push_stats.json`` — files/bytes sent and skipped, ``seconds`` (wall time of the whole push),
  ``send_seconds`` (time inside file sends) and ``mb_per_s`` = bytes_sent / 10^6 / send_seconds (null when nothing
  was sent). Not a dependency of anything.

Verification level (`device.push_verify`): by default files whose on-device size+mtime are unchanged since
they were verified are trusted (one ``stat`` round trip per dir). ``--verify full`` (or `device.push_verify=full`,
re-hashes every file on the device with ``sha256sum`` — use it when you suspect
the device storage; it costs a full read of the model on the phone. ``--mover adb``
moves bytes with the adb binary's ``push`` instead of the built-in 64 KiB sync client (both measured about equal
on the virtual device; the built-in one has byte progress).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.context import RunContext
from pipeline.device.pool import device_scope
from pipeline.stages import StageError, stage_main, write_json


@device_scope()  # the device is held while the stage runs (one device, one run), then released
def run(cfg: Config, workdir: Path, ctx: RunContext | None = None) -> Path:
    """Push app + model named in fetch.json; write push.json (+ push_stats.json); return push.json's path."""
    from pipeline.device.connect import device_record
    from pipeline.device.remote import TransferError
    from pipeline.device.transfer import push_stats
    from pipeline.stages.device import open_stage_device

    ctx = ctx or RunContext.from_env()
    artifacts = workdir / cfg.paths.artifacts
    fetched = _read_fetch(artifacts / "fetch.json")
    verify, mover = ctx.push_verify or cfg.device.push_verify, ctx.push_mover
    dev = open_stage_device(cfg, f"push@{workdir}", prefer=_pushed_serial(artifacts / "push.json"))
    try:
        root = cfg.device.remote_root
        runnable = [cfg.app.binary] + ([cfg.app.bench_binary] if cfg.app.bench_binary else [])
        app = _push_one(dev, root, "apps", cfg.app.name, fetched["app"], runnable, verify, mover, not ctx.quiet)
        model = _push_one(dev, root, "models", cfg.model.name, fetched["model"], [], verify, mover, not ctx.quiet)
        device = device_record(dev)
    except TransferError as e:
        raise StageError(str(e)) from None
    push = {"device": device, "remote_root": cfg.device.remote_root,
            "app": app["record"], "model": model["record"]}
    out = artifacts / "push.json"
    write_json(out, push)
    write_json(artifacts / "push_stats.json", push_stats({"app": app["result"], "model": model["result"]}, verify))
    return out


def _read_fetch(path: Path) -> dict[str, Any]:
    from pipeline.fetch.fetched import local_dir

    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise StageError(f"{path}: missing — run the fetch stage first (`dvc repro fetch`)") from None
    except ValueError as e:
        raise StageError(f"{path}: invalid JSON ({e}) — re-run the fetch stage") from None
    for key in ("app", "model"):
        entry = data.get(key) if isinstance(data, dict) else None
        if not isinstance(entry, dict) or not all(k in entry for k in ("commit", "local_dir", "files")):
            raise StageError(f"{path}: no valid {key!r} entry (commit, local_dir, files) — re-run the fetch stage")
        entry["local_dir"] = str(local_dir(entry, path))  # relative to fetch.json (pipeline/fetch/fetched.py)
    return data


def _push_one(dev: Any, remote_root: str, kind: str, name: str, entry: dict[str, Any], executables: list[str],
              verify: str, mover: str, progress: bool) -> dict[str, Any]:
    """Push one fetched dir; ``executables`` (app.binary, app.bench_binary) get mode 755 on the device."""
    from pipeline.device.transfer import host_entries, push_dir, remote_dir_for

    entries = host_entries(entry["files"], source=f"fetch.json:{kind}")
    for binary in executables:
        if binary not in {e.path for e in entries}:
            raise StageError(f"app binary {binary!r} (app.binary / app.bench_binary) is not among the fetched app "
                             f"files in {entry['local_dir']}: fix the key or app.allow_patterns and re-run fetch")
    remote = remote_dir_for(remote_root, kind, name, entry["commit"])
    result = push_dir(dev, Path(entry["local_dir"]), remote, entries, executables=executables,
                      verify=verify, mover=mover, progress=progress and sys.stderr.isatty(), label=f"push {name}")
    record = {"name": name, "remote_dir": remote, "binary": executables[0] if executables else None,
              "manifest_sha256": result.manifest_sha256, "commit": entry["commit"]}
    return {"record": record, "result": result}


def _pushed_serial(path: Path) -> str | None:
    """The device the last push went to (a pool prefers it: its files are already there)."""
    try:
        return json.loads(path.read_text())["device"]["serial"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(argv: list[str] | None = None) -> None:
    """`python -m pipeline.stages.push [--params FILE] [--quiet] [--verify stat|full] [--mover sync|adb]`."""
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--verify", choices=("stat", "full"), default=None,
                    help="stat: trust files whose device size+mtime are unchanged (default); full: re-hash all")
    ap.add_argument("--mover", choices=("sync", "adb"), default="sync",
                    help="sync: built-in 64 KiB sync client (default); adb: the adb binary's push per file")
    args, rest = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    stage_main("push", run, rest, ctx=RunContext.from_env(push_verify=args.verify, push_mover=args.mover))


if __name__ == "__main__":
    main()
