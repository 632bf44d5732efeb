"""Thin DVC stage scripts: read params.yaml, call the domain modules, write outputs.

Every stage module exposes ``run(cfg, workdir, ctx) -> Path`` (its output; the Hydra app calls these in order) and
a ``main()`` for ``dvc.yaml`` that loads ``params.yaml``. Shared here: the CLI wrapper, one-line stage errors, atomic
JSON writes and reading upstream artifacts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.config import Config, ConfigError, load_params
from pipeline.context import RunContext
from pipeline.jsonio import read_jsonl, write_json, write_jsonl

__all__ = ["StageError", "stage_main", "read_json", "read_jsonl", "write_json", "write_jsonl", "RunContext"]


class StageError(RuntimeError):
    """A failure the user can act on: printed as one message, exit status 2, no traceback."""


def stage_main(name: str, run: Callable[[Config, Path, RunContext], Path], argv: list[str] | None = None,
               ctx: RunContext | None = None) -> None:
    """The `main()` of every stage: `python -m pipeline.stages.<name> [--params FILE] [--quiet]`."""
    ap = argparse.ArgumentParser(prog=f"python -m pipeline.stages.{name}", description=f"DVC stage `{name}`.")
    ap.add_argument("--params", default="params.yaml", help="composed config (default: params.yaml)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    ctx = ctx or RunContext.from_env()
    if args.quiet:
        ctx = ctx.with_(quiet=True)
    try:
        cfg = load_params(args.params)
        out = run(cfg, Path.cwd(), ctx)
    except (ConfigError, StageError) as e:
        print(f"{name}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{name}: interrupted — finished work is kept; re-run to continue", file=sys.stderr)
        raise SystemExit(130) from None
    print(f"{name}: wrote {out}")


def read_json(path: Path, what: str) -> dict:
    """An upstream artifact, or a clear error saying which stage makes it."""
    import json

    if not path.exists():
        raise StageError(f"{path}: missing — run the {what} stage first (`dvc repro {what}`)")
    return json.loads(path.read_text())
