"""Thin DVC stage scripts: read params.yaml, call the domain modules, write outputs (DESIGN §3)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.config import Config, ConfigError, load_params


class StageError(RuntimeError):
    """A failure the user can act on: printed as one message, exit status 2, no traceback."""


def stage_main(name: str, run: Callable[[Config, Path], Path], argv: list[str] | None = None) -> None:
    """The `main()` of every stage: `python -m pipeline.stages.<name> [--params FILE] [--quiet]`."""
    ap = argparse.ArgumentParser(prog=f"python -m pipeline.stages.{name}", description=f"DVC stage `{name}`.")
    ap.add_argument("--params", default="params.yaml", help="composed config (default: params.yaml)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    if args.quiet:
        import os

        os.environ["ODEVAL_QUIET"] = "1"
    try:
        cfg = load_params(args.params)
        out = run(cfg, Path.cwd())
    except (ConfigError, StageError) as e:
        print(f"{name}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{name}: interrupted — finished work is kept; re-run to continue", file=sys.stderr)
        raise SystemExit(130) from None
    print(f"{name}: wrote {out}")


def quiet() -> bool:
    """Progress bars off under --quiet, CI=true, or when stderr is not a terminal."""
    import os

    return bool(os.environ.get("ODEVAL_QUIET")) or os.environ.get("CI", "").lower() == "true"


def device_for(cfg: Config, workdir: Path, stage: str):
    """The adbutils device the config names (starting the virtual device if needed): push and run share it.

    ``device.kind=pool`` (a DVC stage process; Hydra jobs lease in ``run_job`` and pass a concrete device):
    lease a pool device until this process exits — for ``stage="run"`` exactly the one push.json names."""
    from pipeline.device.connect import DeviceError, get_device
    from pipeline.workspace import resolve, shared_root

    d = cfg.device
    if d.kind == "pool":
        from pipeline.device.pool import PoolError, hold_for_stage

        try:
            d = hold_for_stage(cfg, workdir, stage)
        except PoolError as e:
            raise StageError(str(e)) from None
    v = d.virtual
    options = dict(capacity_bytes=int(v.capacity_gb * 2**30), simulate_thermal=v.simulate_thermal,
                   standin_model=v.standin_model, auth=v.auth,
                   adb_keys=str(resolve(v.adb_keys, shared_root())) if v.adb_keys else None, **dict(v.faults)
                   ) if d.kind == "virtual" else None
    try:
        return get_device(d.kind, serial=d.serial, adb_host=d.adb_host, adb_port=d.adb_port, connect_addr=d.connect,
                          virtual_root=resolve(v.root, shared_root()), virtual_port=v.port, virtual_options=options)
    except DeviceError as e:
        raise StageError(str(e)) from None


def write_json(path: Path, data: dict) -> None:
    """Atomic, canonical (sorted keys) JSON: equal content is equal bytes, and a crash never leaves half a file."""
    import json
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path, what: str) -> dict:
    """An upstream artifact, or a clear error saying which stage makes it."""
    import json

    if not path.exists():
        raise StageError(f"{path}: missing — run the {what} stage first (`dvc repro {what}`)")
    return json.loads(path.read_text())
