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

from pipeline.config import Config, ConfigError
from pipeline.context import RunContext
from pipeline.interrupts import Interrupted, command_line, signal_name, signals_as_exceptions, signum_of
from pipeline.jsonio import read_jsonl, write_json, write_jsonl
from pipeline.params import load_params

__all__ = ["StageError", "StageInterrupted", "stage_main", "read_json", "read_jsonl", "write_json", "write_jsonl",
           "RunContext"]


class StageError(RuntimeError):
    """A failure the user can act on: printed as one message, exit status 2, no traceback."""


class StageInterrupted(StageError):
    """The stage stopped before it finished (e.g. the device was lost); its work is kept. The entry point that
    printed the message adds the command that resumes this very run."""


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
        with signals_as_exceptions():  # SIGTERM too: the stage records how it ended, then we say so
            cfg = load_params(args.params)
            out = run(cfg, Path.cwd(), ctx)
    except (ConfigError, StageError) as e:
        given = sys.argv[1:] if argv is None else list(argv)
        resume = f"; resume this run: {resume_command(name, given)}" if isinstance(e, StageInterrupted) else ""
        print(f"{name}: {e}{resume}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as e:
        what = str(e) if isinstance(e, Interrupted) else f"interrupted by {signal_name(signum_of(e))}"
        given = sys.argv[1:] if argv is None else list(argv)
        print(f"{name}: {what} — finished work is kept; resume this run: {resume_command(name, given)}",
              file=sys.stderr)
        raise SystemExit(128 + signum_of(e)) from None
    print(f"{name}: wrote {out}")


def resume_command(stage: str, argv: list[str]) -> str:
    """How to re-run this very stage so that it continues (the run stage keeps its finished rows): through DVC
    when DVC started it, else the same command in the same directory."""
    ctx = RunContext.from_env()
    if ctx.dvc_exp_name:
        return "`dvc exp run` with the same -S overrides"
    if ctx.under_dvc:
        return "`dvc repro`"
    return f"`{command_line(['python', '-m', f'pipeline.stages.{stage}', *argv])}` in {Path.cwd()}"


def read_json(path: Path, what: str) -> dict:
    """An upstream artifact, or a clear error saying which stage makes it."""
    import json

    if not path.exists():
        raise StageError(f"{path}: missing — run the {what} stage first (`dvc repro {what}`)")
    return json.loads(path.read_text())
